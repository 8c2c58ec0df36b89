"""The repainter's networks: shapes, region codes, gradients to every parameter, sizes, norm choices."""

from __future__ import annotations

import pytest
import torch

from pipeline.repaint.config import RepainterConfig
from pipeline.repaint.nets import (
    build_discriminator,
    build_encoder,
    build_generator,
    count_parameters,
    param_free_norm,
    region_pool,
    reparameterize,
    style_map,
)

torch.set_num_threads(2)
CFG = RepainterConfig(label_channels=5, z_dim=4, encoder_width=8, ngf=8, spade_hidden=8, num_up=2, ndf=8)


def _labels(b: int, h: int, w: int) -> torch.Tensor:
    """Four vertical stripes as regions, plus a boundary channel."""
    ids = (torch.arange(w) * 4 // w).expand(b, h, w)
    one_hot = torch.nn.functional.one_hot(ids, 4).permute(0, 3, 1, 2).float()
    return torch.cat([one_hot, torch.zeros(b, 1, h, w)], 1)


def _tiny():
    torch.manual_seed(0)
    return build_encoder(CFG), build_generator(CFG), build_discriminator(CFG)


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_shapes_at_any_size_divisible_by_the_upsampling(size):
    enc, gen, dis = _tiny()
    image, labels = torch.rand(2, 3, *size) * 2 - 1, _labels(2, *size)
    mu, logvar = enc(image, labels)
    assert mu.shape == logvar.shape == (2, 4, CFG.z_dim)  # one code per region
    fake = gen(reparameterize(mu, logvar), labels)
    assert fake.shape == image.shape and fake.abs().max() <= 1
    features = dis(fake, labels)
    assert len(features) == 2 and all(len(f) == 4 for f in features)
    assert features[1][-1].shape[-1] < features[0][-1].shape[-1]  # the second scale sees a smaller image


def test_region_codes_are_pooled_and_broadcast_per_region():
    labels = _labels(1, 4, 8)[:, :4]
    features = torch.arange(8.0).expand(1, 1, 4, 8)  # a feature that is the column index
    pooled = region_pool(features, labels)
    assert torch.allclose(pooled[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    painted = style_map(torch.tensor([[[1.0], [2.0], [3.0], [4.0]]]), labels)
    assert torch.equal(painted[0, 0, 0], torch.tensor([1.0, 1, 2, 2, 3, 3, 4, 4]))


def test_changing_one_regions_code_changes_mostly_that_region():
    _, gen, _ = _tiny()
    labels = _labels(1, 32, 32)
    codes = torch.randn(1, 4, CFG.z_dim, generator=torch.Generator().manual_seed(0))
    other = codes.clone()
    other[0, 0] += 3.0
    diff = (gen(codes, labels) - gen(other, labels)).abs().mean((0, 1))
    # region 0 is columns 0-7; instance norm couples the regions a little (its statistics are global)
    assert diff[:, :8].mean() > 1.5 * diff[:, 16:].mean()


def test_every_parameter_gets_a_finite_gradient():
    enc, gen, dis = _tiny()
    image, labels = torch.rand(2, 3, 32, 32) * 2 - 1, _labels(2, 32, 32)
    mu, logvar = enc(image, labels)
    fake = gen(reparameterize(mu, logvar), labels)
    loss = sum(f[-1].mean() for f in dis(fake, labels)) + logvar.mean()
    loss.backward()
    for module in (enc, gen, dis):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_default_networks_are_light():
    cfg = RepainterConfig()
    assert 0.1e6 <= count_parameters(build_generator(cfg)) <= 3e6
    assert count_parameters(build_encoder(cfg)) < 0.2e6 and count_parameters(build_discriminator(cfg)) < 1e6


def test_a_fixed_seed_gives_the_same_code_draw():
    mu, logvar = torch.zeros(1, 4, 3), torch.zeros(1, 4, 3)
    a = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    b = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_norm_choices():
    assert isinstance(param_free_norm("batch", 4), torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="norm 'group': expected one of"):
        param_free_norm("group", 4)


def test_variant_codes_keep_regions_at_keep_prob_and_repeat_per_seed():
    from pipeline.repaint.nets import variant_codes

    mu, logvar = torch.full((64, 4, 3), 5.0), torch.full((64, 4, 3), -30.0)  # posterior ~ exactly 5
    every_new, new = variant_codes(mu, logvar, 0.0, torch.Generator().manual_seed(0))
    assert new.all() and every_new.abs().max() < 5  # all from N(0, I): none near the posterior's 5
    codes, new = variant_codes(mu, logvar, 0.5, torch.Generator().manual_seed(0))
    kept = new == 0
    assert 0.4 < kept.float().mean() < 0.6
    assert torch.allclose(codes[kept], torch.tensor(5.0)) and (codes[~kept] - 5).abs().min() > 0.5
    again, _ = variant_codes(mu, logvar, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(codes, again)


def test_variant_codes_from_a_bank_are_its_rows():
    from pipeline.repaint.nets import variant_codes

    mu, logvar = torch.full((16, 4, 3), 5.0), torch.full((16, 4, 3), -30.0)
    bank = torch.arange(30.0).reshape(10, 3) * 10  # rows far from the posterior and from N(0, I)
    codes, new = variant_codes(mu, logvar, 0.5, torch.Generator().manual_seed(0), bank)
    rows = {tuple(r.tolist()) for r in bank}
    assert all(tuple(c.tolist()) in rows for c in codes[new > 0])
    assert torch.allclose(codes[new == 0], torch.tensor(5.0))
    assert len({tuple(c.tolist()) for c in codes[new > 0]}) > 5  # many rows drawn, not one
