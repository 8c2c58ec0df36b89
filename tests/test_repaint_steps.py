"""The repainter's steps: each changes only its own networks; every network learns; seeds repeat."""

from __future__ import annotations

import torch

from pipeline.repaint_steps import RepainterConfig, RepainterNets, d_t_step, g_step

torch.set_num_threads(2)


def _nets(**kw) -> RepainterNets:
    torch.manual_seed(0)
    cfg = RepainterConfig(label_channels=5, num_classes=3, z_channels=4, ngf=8, spade_hidden=8, num_up=3, ndf=8,
                          task_model="test_resnet", **kw)
    return RepainterNets(cfg)


def _batch():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.rand(2, 5, 32, 32, generator=g).round()
    return image, labels, torch.tensor([0, 2])


def _state(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]  # buffers: BN statistics


def _snapshot(nets: RepainterNets) -> dict[str, list[torch.Tensor]]:
    return {name: _state(getattr(nets, name)) for name in "EGDT"}


def _changed(before, nets) -> set[str]:
    return {name for name in "EGDT"
            if any(not torch.equal(a, b) for a, b in zip(before[name], _state(getattr(nets, name)), strict=True))}


def test_each_step_changes_only_its_own_networks():
    nets = _nets()
    before = _snapshot(nets)
    d_t_step(nets, *_batch())
    assert _changed(before, nets) == {"D", "T"}
    before = _snapshot(nets)
    losses = g_step(nets, *_batch())
    assert _changed(before, nets) == {"E", "G"}
    assert set(losses) == {"g_total", "gan", "fm", "kld", "task"}
    assert all(p.requires_grad for name in "DT" for p in getattr(nets, name).parameters())  # unfrozen after
    assert nets.T.training and nets.D.training


def test_every_parameter_gets_a_finite_gradient():
    nets = _nets()
    d_t_step(nets, *_batch())
    for name in "DT":
        for pname, p in getattr(nets, name).named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}"
    g_step(nets, *_batch())
    for name in "EG":
        for pname, p in getattr(nets, name).named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_a_fixed_seed_gives_the_same_losses():
    runs = []
    for _ in range(2):
        nets = _nets()
        gen = torch.Generator().manual_seed(7)
        runs.append([d_t_step(nets, *_batch(), generator=gen), g_step(nets, *_batch(), generator=gen)])
    assert runs[0] == runs[1]


def test_task_loss_switch_removes_the_task_term():
    losses = g_step(_nets(task_weight=0.0), *_batch())
    assert "task" not in losses


def test_multilabel_task_for_coco():
    nets = _nets(multilabel=True)
    image, labels, _ = _batch()
    present = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert {"d", "t"} == set(d_t_step(nets, image, labels, present))
    assert "task" in g_step(nets, image, labels, present)
