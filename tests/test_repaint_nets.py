"""The repainter's networks: shapes, sizes, gradients to every parameter, norm choices."""

from __future__ import annotations

import pytest
import torch

from pipeline.repaint_nets import (
    Encoder,
    Generator,
    MultiScaleDiscriminator,
    count_parameters,
    param_free_norm,
    reparameterize,
)

torch.set_num_threads(2)
LABELS = 9  # e.g. 8 segment channels + boundary


def _tiny():
    torch.manual_seed(0)
    enc = Encoder(z_channels=4, ndf=8, num_down=3)
    gen = Generator(LABELS, z_channels=4, ngf=8, num_up=3, hidden=8)
    dis = MultiScaleDiscriminator(LABELS, ndf=8, n_layers=3, num_scales=2)
    return enc, gen, dis


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_shapes_at_any_size_divisible_by_the_downsampling(size):
    enc, gen, dis = _tiny()
    image = torch.rand(2, 3, *size) * 2 - 1
    labels = torch.rand(2, LABELS, *size)
    mu, logvar = enc(image)
    assert mu.shape == logvar.shape == (2, 4, size[0] // 8, size[1] // 8)
    fake = gen(reparameterize(mu, logvar), labels)
    assert fake.shape == image.shape and fake.abs().max() <= 1
    features = dis(fake, labels)
    assert len(features) == 2 and all(len(f) == 4 for f in features)
    assert features[1][-1].shape[-1] < features[0][-1].shape[-1]  # the second scale sees a smaller image


def test_every_parameter_gets_a_finite_gradient():
    enc, gen, dis = _tiny()
    image, labels = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, LABELS, 32, 32)
    mu, logvar = enc(image)
    fake = gen(reparameterize(mu, logvar), labels)
    loss = sum(f[-1].mean() for f in dis(fake, labels)) + logvar.mean()
    loss.backward()
    for module in (enc, gen, dis):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_default_generator_is_light():
    params = count_parameters(Generator(label_channels=17))  # ngf 32, hidden 64, 4 up-samplings
    assert 5e6 <= params <= 15e6, params
    assert count_parameters(MultiScaleDiscriminator(17)) < 5e6


def test_a_fixed_seed_gives_the_same_latent_draw():
    mu, logvar = torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    a = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    b = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_norm_choices():
    assert isinstance(param_free_norm("batch", 4), torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="norm 'group': expected one of"):
        param_free_norm("group", 4)
