"""The repainter's losses and its training step.

One step paints every image twice in one G forward: from E's posterior codes of the image itself
(the VAE half: reconstruction, feature matching, KLD) and from new codes per region, drawn from the
prior N(0, I) or (`train_latent` "bank") taken from E's codes of the batch's regions, as the shards'
variants are drawn by `--variant-latent prior` or `bank`. Then, in order:

1. E/G update (D and T frozen): hinge GAN on *both* paintings, so every variant the shards hold is
   of a kind D was trained to judge; L1 reconstruction + feature matching on the posterior painting;
   KLD per region; BicycleGAN's latent regression (E must recover each region's prior code from its
   painting, so G cannot ignore the codes); and, after T's warm-up, the task loss of T on the prior
   painting (the Repaint paper's loss that keeps variants recognisable; weight 0 is its ablation).
2. D update: hinge, real against both paintings (detached).
3. T update: the proxy classifier learns on real images and, after its warm-up, on prior paintings,
   with its own AdamW (the GAN's Adam(0, 0.999) left a randomly initialised classifier near chance).

E, G, D and T stay separate modules with separate optimizers (and, under DDP, separate wrappers:
each wrapped module runs one forward per backward; frozen uses go through `unwrap`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .config import RepainterConfig
from .nets import (
    build_discriminator,
    build_encoder,
    build_generator,
    build_task,
    region_masks,
    reparameterize,
    variant_codes,
)


class RepainterNets:
    """E, G, D and T with their optimizers."""

    def __init__(self, cfg: RepainterConfig):
        self.cfg = cfg
        self.E, self.G, self.D = build_encoder(cfg), build_generator(cfg), build_discriminator(cfg)
        self.T = build_task(cfg)
        betas = (0.0, 0.999)
        self.opt_g = torch.optim.Adam([*self.E.parameters(), *self.G.parameters()], lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.opt_t = torch.optim.AdamW(self.T.parameters(), lr=cfg.lr_t, weight_decay=0.05)

    def modules(self) -> dict[str, nn.Module]:
        return {"E": self.E, "G": self.G, "D": self.D, "T": self.T}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d, "opt_t": self.opt_t}

    def to(self, device: torch.device) -> RepainterNets:
        for m in self.modules().values():
            m.to(device)
        return self

    def distribute(self, device_ids: list[int] | None = None) -> None:
        """One DDP wrapper per network: each update reduces only the gradients it made."""
        self.E, self.G, self.D, self.T = (DistributedDataParallel(m, device_ids=device_ids)
                                          for m in (self.E, self.G, self.D, self.T))


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper. Frozen uses go through it: a DDP forward that makes no
    gradients would leave its reducer waiting for them."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def split(outputs: list[list[torch.Tensor]], parts: int) -> list[list[list[torch.Tensor]]]:
    """D's features of a batch made of `parts` equal pieces, per piece."""
    return [[[f.chunk(parts)[i] for f in scale] for scale in outputs] for i in range(parts)]


def hinge_d(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(real, fake, strict=True))


def hinge_g(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(-f[-1].mean() for f in fake)


def feature_matching(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between D's intermediate features of real and painted images, averaged over scales."""
    total = sum(F.l1_loss(f, r.detach()) for rs, fs in zip(real, fake, strict=True)
                for r, f in zip(rs[:-1], fs[:-1], strict=True))
    return total / len(real)


def present_regions(labels: torch.Tensor) -> torch.Tensor:
    """[B, K] 1.0 where the region has pixels: absent regions' codes mean nothing and carry no loss."""
    return (region_masks(labels).sum((2, 3)) > 0).float()


def masked_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over present regions of a [B, K] tensor."""
    return (values * present).sum() / present.sum().clamp_min(1.0)


def kld(mu: torch.Tensor, logvar: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """KL(q(z_r | image) || N(0, I)) in nats per region (summed over the code, as SPADE sums)."""
    per_region = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
    return masked_mean(per_region, present)


def task_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)


@contextmanager
def frozen(*modules: nn.Module):
    """Neither gradients nor running statistics for these modules while another update runs through
    them (a BatchNorm in train mode would drift towards painted images; spectral norm's power
    iteration stays put)."""
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


def paint_both(nets: RepainterNets, image: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None):
    """Posterior and prior paintings in one G forward (DDP allows one per backward)."""
    mu, logvar = nets.E(image, labels)
    posterior = reparameterize(mu, logvar, generator)
    bank = mu.detach()[present_regions(labels) > 0] if nets.cfg.train_latent == "bank" else None
    codes, new = variant_codes(mu.detach(), logvar.detach(), nets.cfg.keep_prob, generator, bank)
    both = nets.G(torch.cat([posterior, codes]), torch.cat([labels, labels]))
    return both.chunk(2) + ((codes, new), mu, logvar)


def _g_losses(nets: RepainterNets, image, labels, target, painted, painted_prior, prior, mu, logvar,
              task_on: bool) -> dict[str, torch.Tensor]:
    cfg, present = nets.cfg, present_regions(labels)
    prior, new = prior
    real_f, post_f, prior_f = split(unwrap(nets.D)(torch.cat([image, painted, painted_prior]),
                                                   torch.cat([labels, labels, labels])), 3)
    recovered, _ = unwrap(nets.E)(painted_prior, labels)
    losses = {"gan": (hinge_g(post_f) + hinge_g(prior_f)) / 2 * cfg.gan_weight,
              "fm": feature_matching(real_f, post_f) * cfg.fm_weight,
              "rec": F.l1_loss(painted, image) * cfg.rec_weight,
              "kld": kld(mu, logvar, present) * cfg.kld_weight,
              "latent": masked_mean((recovered - prior).abs().mean(-1), present * new) * cfg.latent_weight}
    if task_on:
        losses["task"] = task_loss(unwrap(nets.T)(painted_prior), target, cfg.multilabel) * cfg.task_weight
    return losses


def train_step(nets: RepainterNets, image: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
               step: int, generator: torch.Generator | None = None) -> dict[str, float]:
    """One E/G, one D and one T update on one batch; returns every loss as a float."""
    cfg = nets.cfg
    task_on = cfg.task_weight > 0 and step >= cfg.task_warmup
    painted, painted_prior, prior, mu, logvar = paint_both(nets, image, labels, generator)
    with frozen(nets.D, nets.T):
        # E stays trainable here: the VAE terms train it, and so does the latent regression (BicycleGAN
        # trains only G on that term; here E also learns to read codes back, which the measured runs used)
        losses = _g_losses(nets, image, labels, target, painted, painted_prior, prior, mu, logvar, task_on)
        total = sum(losses.values())
        nets.opt_g.zero_grad(set_to_none=True)
        total.backward()
    nets.opt_g.step()

    fakes = torch.cat([painted, painted_prior]).detach()
    real_f, post_f, prior_f = split(nets.D(torch.cat([image, fakes]), torch.cat([labels, labels, labels])), 3)
    loss_d = (hinge_d(real_f, post_f) + hinge_d(real_f, prior_f)) / 2
    nets.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    nets.opt_d.step()

    t_input, t_target = (torch.cat([image, painted_prior.detach()]), torch.cat([target, target])) \
        if step >= cfg.task_warmup else (image, target)
    loss_t = task_loss(nets.T(t_input), t_target, cfg.multilabel)
    nets.opt_t.zero_grad(set_to_none=True)
    loss_t.backward()
    nets.opt_t.step()
    return {"d": loss_d.item(), "t": loss_t.item(), "g_total": total.item(), **{k: v.item() for k, v in losses.items()}}
