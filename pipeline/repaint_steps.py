"""The repainter's losses and its two alternating steps (the Repaint paper's schedule).

D/T step: the discriminator learns real vs painted (hinge); the proxy task T learns on real and
painted images. E/G step: hinge GAN + feature matching (x10) + KLD (x0.05) + the task loss of T on
painted images (x `task_weight`; 0 is the paper's "Repaint w/o task-loss"). E, G, D and T stay
separate modules with separate optimizers (and, under DDP, separate wrappers: one module with a
mode switch breaks DDP's gradient reductions).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .repaint_nets import Encoder, Generator, MultiScaleDiscriminator, reparameterize


@dataclass
class RepainterConfig:
    label_channels: int = 17  # 16 segment channels (by area rank, last = "other") + boundary
    num_classes: int = 10
    multilabel: bool = False  # COCO: which categories are present (BCE), else CE
    z_channels: int = 16
    ngf: int = 32
    spade_hidden: int = 64
    num_up: int = 4
    ndf: int = 32
    d_layers: int = 3
    d_scales: int = 2
    norm: str = "instance"
    task_model: str = "resnet18"
    task_weight: float = 1.0
    fm_weight: float = 10.0
    kld_weight: float = 0.05
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    d_steps: int = 2  # D/T iterations per E/G iteration


class RepainterNets:
    """E, G, D and T with their optimizers (Adam, betas (0, 0.999), as SPADE)."""

    def __init__(self, cfg: RepainterConfig):
        self.cfg = cfg
        self.E = Encoder(cfg.z_channels, cfg.ndf, cfg.num_up)
        self.G = Generator(cfg.label_channels, cfg.z_channels, cfg.ngf, cfg.num_up, cfg.spade_hidden, cfg.norm)
        self.D = MultiScaleDiscriminator(cfg.label_channels, cfg.ndf, cfg.d_layers, cfg.d_scales)
        self.T = timm.create_model(cfg.task_model, pretrained=False, num_classes=cfg.num_classes)
        betas = (0.0, 0.999)
        self.opt_g = torch.optim.Adam([*self.E.parameters(), *self.G.parameters()], lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.opt_t = torch.optim.Adam(self.T.parameters(), lr=cfg.lr_d, betas=betas)

    def modules(self) -> dict[str, nn.Module]:
        return {"E": self.E, "G": self.G, "D": self.D, "T": self.T}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d, "opt_t": self.opt_t}

    def to(self, device: torch.device) -> RepainterNets:
        for m in self.modules().values():
            m.to(device)
        return self

    def distribute(self, device_ids: list[int] | None = None) -> None:
        """One DDP wrapper per network: each step reduces only the gradients it made."""
        self.E, self.G, self.D, self.T = (DistributedDataParallel(m, device_ids=device_ids)
                                          for m in (self.E, self.G, self.D, self.T))

    def paint(self, image: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
              bare: bool = False):
        """G(E(image) sampled, labels); `bare` bypasses DDP for runs that make no gradients."""
        encoder, painter = (unwrap(self.E), unwrap(self.G)) if bare else (self.E, self.G)
        mu, logvar = encoder(image)
        return painter(reparameterize(mu, logvar, generator), labels), mu, logvar

    def paint_pair(self, image: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                   bare: bool = False):
        """Paintings from E's posterior (what D and feature matching judge against the original) and
        from the prior N(0, I) (what the shards get), in one G forward: DDP allows one per backward."""
        encoder, painter = (unwrap(self.E), unwrap(self.G)) if bare else (self.E, self.G)
        mu, logvar = encoder(image)
        z = reparameterize(mu, logvar, generator)
        device = generator.device if generator is not None else z.device
        prior = torch.randn(z.shape, generator=generator, device=device, dtype=z.dtype).to(z.device)
        both = painter(torch.cat([z, prior]), torch.cat([labels, labels]))
        n = image.shape[0]
        return both[:n], both[n:], mu, logvar


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper. Frozen uses go through it: a DDP forward that makes no
    gradients would leave its reducer waiting for them."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def discriminate(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor):
    """One D forward on real and painted together (two DDP forwards before one backward fail)."""
    outputs = D(torch.cat([real, fake]), torch.cat([labels, labels]))
    n = real.shape[0]
    return [[f[:n] for f in scale] for scale in outputs], [[f[n:] for f in scale] for scale in outputs]


def hinge_d(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(real, fake, strict=True))


def hinge_g(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(-f[-1].mean() for f in fake)


def feature_matching(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between D's intermediate features of real and painted images, averaged over scales."""
    total = sum(F.l1_loss(f, r.detach()) for rs, fs in zip(real, fake, strict=True)
                for r, f in zip(rs[:-1], fs[:-1], strict=True))
    return total / len(real)


def kld(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def task_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)


@contextmanager
def frozen(*modules: nn.Module):
    """Neither gradients nor running statistics for these modules while another step runs through them
    (a BatchNorm in train mode would otherwise drift towards painted images)."""
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    modes = [m.training for m in modules]
    for m in modules:
        m.requires_grad_(False)
        m.eval()
    try:
        yield
    finally:
        for m, saved, mode in zip(modules, flags, modes, strict=True):
            m.train(mode)
            for p, flag in zip(m.parameters(), saved, strict=True):
                p.requires_grad_(flag)


def d_t_step(nets: RepainterNets, image: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
             generator: torch.Generator | None = None) -> dict[str, float]:
    """One D and T update; E and G are only run, never changed. D judges posterior paintings (as
    the E/G step's GAN and feature-matching terms do); T learns on prior paintings, the kind the
    shards hold."""
    with torch.no_grad(), frozen(nets.E, nets.G):  # eval: spectral norm's power iteration stays put
        painted, painted_prior, _, _ = nets.paint_pair(image, labels, generator, bare=True)
    loss_d = hinge_d(*discriminate(nets.D, image, painted, labels))
    nets.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    nets.opt_d.step()
    both = torch.cat([image, painted_prior])
    loss_t = task_loss(nets.T(both), torch.cat([target, target]), nets.cfg.multilabel)
    nets.opt_t.zero_grad(set_to_none=True)
    loss_t.backward()
    nets.opt_t.step()
    return {"d": loss_d.item(), "t": loss_t.item()}


def g_step(nets: RepainterNets, image: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
           generator: torch.Generator | None = None) -> dict[str, float]:
    """One E/G update: GAN + feature matching + KLD on the posterior painting, and the task loss of a
    frozen T on a prior painting (the variants are drawn from the prior, so that is where it must
    keep them recognisable)."""
    cfg = nets.cfg
    with frozen(nets.D, nets.T):
        if cfg.task_weight > 0:
            painted, painted_prior, mu, logvar = nets.paint_pair(image, labels, generator)
        else:
            painted, mu, logvar = nets.paint(image, labels, generator)
        real, fake = discriminate(unwrap(nets.D), image, painted, labels)
        losses = {"gan": hinge_g(fake), "fm": feature_matching(real, fake) * cfg.fm_weight,
                  "kld": kld(mu, logvar) * cfg.kld_weight}
        if cfg.task_weight > 0:
            losses["task"] = task_loss(unwrap(nets.T)(painted_prior), target, cfg.multilabel) * cfg.task_weight
        total = sum(losses.values())
        nets.opt_g.zero_grad(set_to_none=True)
        total.backward()
    nets.opt_g.step()
    return {"g_total": total.item(), **{k: v.item() for k, v in losses.items()}}
