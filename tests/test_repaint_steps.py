"""The repainter's training step: what each loss sees, every network learns, seeds repeat, and a
generator that ignores its codes is caught."""

from __future__ import annotations

import math

import torch

from pipeline.repaint import steps
from pipeline.repaint.config import RepainterConfig
from pipeline.repaint.quality import code_spread
from pipeline.repaint.steps import RepainterNets, train_step

torch.set_num_threads(2)


def _nets(**kw) -> RepainterNets:
    torch.manual_seed(0)
    cfg = RepainterConfig(label_channels=5, num_classes=3, z_dim=4, encoder_width=8, ngf=8, spade_hidden=8,
                          num_up=2, ndf=8, task_model="test_resnet", task_warmup=0, **kw)
    return RepainterNets(cfg)


def _batch():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    ids = torch.randint(0, 4, (2, 8, 8), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    labels = torch.cat([torch.nn.functional.one_hot(ids, 4).permute(0, 3, 1, 2).float(),
                        torch.zeros(2, 1, 32, 32)], 1)
    return image, labels, torch.tensor([0, 2])


def _state(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]  # buffers: BN statistics


def test_one_step_updates_every_network_and_leaves_them_trainable():
    nets = _nets()
    before = {name: _state(getattr(nets, name)) for name in "EGDT"}
    losses = train_step(nets, *_batch(), step=0)
    for name in "EGDT":
        assert any(not torch.equal(a, b) for a, b in zip(before[name], _state(getattr(nets, name)), strict=True))
    assert set(losses) == {"d", "t", "g_total", "gan", "fm", "rec", "kld", "latent", "task"}
    assert all(p.requires_grad for name in "EGDT" for p in getattr(nets, name).parameters())
    assert all(getattr(nets, name).training for name in "EGDT")


def test_every_generator_and_encoder_parameter_gets_a_gradient():
    nets = _nets()
    train_step(nets, *_batch(), step=0)  # opt_g.zero_grad(set_to_none) runs before the E/G backward
    for name in "EG":
        for pname, p in getattr(nets, name).named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_d_is_trained_on_the_prior_paintings_the_shards_hold(monkeypatch):
    """D's update judges real images against posterior *and* prior paintings, and G's GAN term
    reaches it through the prior painting too."""
    seen = []
    real_hinge = steps.hinge_d
    monkeypatch.setattr(steps, "hinge_d", lambda r, f: seen.append(f[0][-1]) or real_hinge(r, f))
    nets = _nets()
    image, labels, target = _batch()
    gen = torch.Generator().manual_seed(5)
    train_step(nets, image, labels, target, step=0, generator=gen)
    assert len(seen) == 2  # real vs posterior, real vs prior
    # the second fake batch is G's painting of the prior codes drawn from the same generator stream
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    fresh = _nets()
    _, painted_prior, prior, _, _ = steps.paint_both(fresh, image, labels, gen)
    d_scores = steps.split(fresh.D(torch.cat([image, painted_prior.detach(), painted_prior.detach()]),
                                   torch.cat([labels, labels, labels])), 3)[1][0][-1]
    assert torch.allclose(seen[1], d_scores, atol=1e-5)


def test_bank_training_paints_new_regions_with_codes_of_the_batchs_own_regions():
    """`train_latent` "bank": D and T judge paintings whose new codes are E's codes (mu) of regions of
    the batch, the kind `--variant-latent bank` writes into the shards, not prior draws."""
    nets = _nets(train_latent="bank", keep_prob=0.0)
    image, labels, _ = _batch()
    _, _, (codes, new), mu, _ = steps.paint_both(nets, image, labels, torch.Generator().manual_seed(3))
    present = steps.present_regions(labels) > 0
    rows = {tuple(r.tolist()) for r in mu.detach()[present]}
    assert new.all() and all(tuple(c.tolist()) in rows for c in codes.reshape(-1, codes.shape[-1]))
    prior = steps.paint_both(_nets(keep_prob=0.0), image, labels, torch.Generator().manual_seed(3))[2][0]
    assert not any(tuple(c.tolist()) in rows for c in prior.reshape(-1, prior.shape[-1]))
    assert all(math.isfinite(v) for v in train_step(nets, image, labels, _batch()[2], step=0).values())


class IgnoresCodes(torch.nn.Module):
    """A generator that paints every draw the same: what the old spatial-latent G drifted towards."""

    def __init__(self, generator):
        super().__init__()
        self.generator, self.z_dim = generator, generator.z_dim

    def forward(self, codes, labels):
        return self.generator(torch.zeros_like(codes), labels)


def test_a_generator_that_ignores_its_codes_is_caught():
    nets = _nets()
    labels = _batch()[1]
    assert code_spread(nets.G, labels) > 1.0
    assert code_spread(IgnoresCodes(nets.G), labels) == 0.0


def test_a_fixed_seed_gives_the_same_losses():
    runs = []
    for _ in range(2):
        nets = _nets()
        gen = torch.Generator().manual_seed(7)
        runs.append([train_step(nets, *_batch(), step=s, generator=gen) for s in range(2)])
    assert runs[0] == runs[1]


def test_task_loss_waits_for_the_warm_up_and_its_switch_removes_it():
    assert "task" not in train_step(_nets(task_weight=0.0), *_batch(), step=0)
    nets = _nets()
    nets.cfg.task_warmup = 5
    assert "task" not in train_step(nets, *_batch(), step=4) and "task" in train_step(nets, *_batch(), step=5)


def test_multilabel_task_for_coco():
    nets = _nets(multilabel=True)
    image, labels, _ = _batch()
    present = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert "task" in train_step(nets, image, labels, present, step=0)
