"""The repainter's networks, written from the papers (SPADE, Park et al. 2019; SEAN, Zhu et al. 2020;
OASIS, Schönfeld et al. 2021; BicycleGAN, Zhu et al. 2017; pix2pixHD, Wang et al. 2018).

- `RegionEncoder` E: image -> one style code per region of the label map (SEAN's region-wise
  average pooling of a convolutional feature map), as (mu, logvar) [B, K, z_dim].
- `Generator` G: SPADE residual blocks whose modulation input is the label map *and* the style map
  (each region's code broadcast over its pixels: OASIS feeds its noise the same way, next to the
  label map, into every SPADE layer). A new seed draws a new code per region, so each region gets a
  new colour and texture while every boundary stays where the label map puts it.
- `MultiScaleDiscriminator` D: pix2pixHD's PatchGAN on (image, label map) at two scales, returning
  every layer's features for feature matching.

`build(cfg)` makes all three from a `RepainterConfig`: a change of architecture is an edit here.
At the defaults (ngf 16, SPADE hidden 32, num_up 2, 17 label channels) G has 0.19 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

from .config import RepainterConfig

NORMS = ("instance", "batch", "syncbatch")


def param_free_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "syncbatch":  # only where it works: DDP on GPUs
        return nn.SyncBatchNorm(channels, affine=False)
    raise ValueError(f"norm {kind!r}: expected one of {NORMS}")


def region_masks(labels: torch.Tensor) -> torch.Tensor:
    """The segment channels of the label input (all but the last, boundary, channel)."""
    return labels[:, :-1]


def region_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean feature per region: [B, C, H, W] x [B, K, H, W] -> [B, K, C] (SEAN's region pooling)."""
    masks = F.interpolate(masks, size=features.shape[-2:], mode="nearest")
    area = masks.sum((2, 3)).clamp_min(1.0)
    return torch.einsum("bchw,bkhw->bkc", features, masks) / area[..., None]


def style_map(codes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Broadcast each region's code over its pixels: [B, K, Z] x [B, K, H, W] -> [B, Z, H, W]."""
    return torch.einsum("bkz,bkhw->bzhw", codes, masks)


class SPADE(nn.Module):
    """Normalise without learned affine, then modulate per pixel with gamma/beta computed from the
    conditioning map (label channels + style map)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64, norm: str = "instance"):
        super().__init__()
        self.norm = param_free_norm(norm, channels)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        # 1x1 here (the paper's are 3x3): the shared 3x3 conv already sees each pixel's neighbourhood,
        # and these two convs were two thirds of G's time on CPU.
        self.gamma = nn.Conv2d(hidden, channels, 1)
        self.beta = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        features = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(features)) + self.beta(features)


class SPADEResBlock(nn.Module):
    """SPADE -> LeakyReLU -> conv, twice, with a learned 1x1 shortcut when widths differ (SPADE's
    shortcut also has a SPADE; dropped to save a third of the modulation cost)."""

    def __init__(self, fin: int, fout: int, cond_channels: int, hidden: int = 64, norm: str = "instance"):
        super().__init__()
        middle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, middle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(middle, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, cond_channels, hidden, norm)
        self.norm_1 = SPADE(middle, cond_channels, hidden, norm)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(x) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, cond), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, cond), 0.2))
        return shortcut + dx


def _widths(ngf: int, num_up: int) -> list[int]:
    # Widest at the coarsest resolution, halving towards the output, never below ngf.
    return [ngf * min(2 ** (num_up - i), 8) for i in range(num_up + 1)]


class Generator(nn.Module):
    """G(codes, labels) -> image in [-1, 1]; codes [B, K, z_dim] (one per segment channel)."""

    def __init__(self, label_channels: int, z_dim: int = 8, ngf: int = 32, num_up: int = 2,
                 hidden: int = 64, norm: str = "instance"):
        super().__init__()
        widths = _widths(ngf, num_up)
        cond = label_channels + z_dim
        self.num_up, self.z_dim = num_up, z_dim
        self.head = nn.Conv2d(cond, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            [SPADEResBlock(widths[0], widths[0], cond, hidden, norm)]
            + [SPADEResBlock(widths[i], widths[i + 1], cond, hidden, norm) for i in range(num_up)])
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([labels, style_map(codes, region_masks(labels))], dim=1)
        x = self.head(F.adaptive_avg_pool2d(cond, [s // 2**self.num_up for s in cond.shape[-2:]]))
        x = self.blocks[0](x, cond)
        for block in self.blocks[1:]:
            x = block(F.interpolate(x, scale_factor=2, mode="nearest"), cond)
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


class RegionEncoder(nn.Module):
    """E(image, labels) -> (mu, logvar) per region [B, K, z_dim]: convolutional features at half
    resolution, averaged over each region's pixels, then a linear map per code."""

    def __init__(self, z_dim: int = 8, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(width, z_dim)
        self.logvar = nn.Linear(width, z_dim)
        # Codes E gave the regions of its training images (`paint.collect_style_bank`): what
        # `--variant-latent bank` draws new styles from. Saved beside the weights, not in them, so a
        # checkpoint without one still loads.
        self.register_buffer("style_bank", torch.zeros(0, z_dim), persistent=False)

    def forward(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = region_pool(self.features(image), region_masks(labels))
        return self.mu(pooled), self.logvar(pooled).clamp(-30, 20)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    # Drawn on the generator's device (CPU by default), so a seed gives the same noise on any device.
    return mu + draw_prior(mu.shape, generator).to(mu.device, mu.dtype) * torch.exp(0.5 * logvar)


def draw_prior(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None) -> torch.Tensor:
    """Region codes from the prior N(0, I), drawn on the CPU generator (same numbers on any device)."""
    return torch.randn(tuple(shape), generator=generator)


def variant_codes(mu: torch.Tensor, logvar: torch.Tensor, keep_prob: float,
                  generator: torch.Generator | None = None,
                  bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes of a variant, as the shards draw them and D is trained on: each region takes a new
    code from the prior, or with probability `keep_prob` a posterior sample of its own style, so a
    variant can keep some of the image's context colours. With a `bank` [N, z_dim], a new code is a
    random row of it instead of a prior draw: the style of a region of another image.
    Returns (codes, new) with `new` [B, K] 1.0 where the region's code is new. All draws on the CPU
    generator (same numbers on any device)."""
    if bank is None:
        prior = draw_prior(mu.shape, generator).to(mu.device, mu.dtype)
    else:
        prior = bank[torch.randint(len(bank), tuple(mu.shape[:2]), generator=generator).to(bank.device)].to(mu.dtype)
    new = (torch.rand(mu.shape[:2], generator=generator) >= keep_prob).to(mu.device, mu.dtype)
    if keep_prob <= 0:
        return prior, new
    own = reparameterize(mu, logvar, generator)
    return torch.where(new[..., None] > 0, prior, own), new


class PatchDiscriminator(nn.Module):
    """pix2pixHD's PatchGAN on (image, labels); returns every layer's output (the last is the score)."""

    def __init__(self, in_channels: int, ndf: int = 32, n_layers: int = 3):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2))]
        width = ndf
        for i in range(1, n_layers):
            stride = 1 if i == n_layers - 1 else 2
            nxt = min(width * 2, 512)
            layers.append(nn.Sequential(spectral_norm(nn.Conv2d(width, nxt, 4, stride=stride, padding=2)),
                                        nn.InstanceNorm2d(nxt), nn.LeakyReLU(0.2)))
            width = nxt
        layers.append(nn.Sequential(nn.Conv2d(width, 1, 4, padding=2)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class MultiScaleDiscriminator(nn.Module):
    """D at full and downsampled resolutions: a list (per scale) of lists of features."""

    def __init__(self, label_channels: int, ndf: int = 32, n_layers: int = 3, num_scales: int = 2):
        super().__init__()
        self.scales = nn.ModuleList([PatchDiscriminator(3 + label_channels, ndf, n_layers)
                                     for _ in range(num_scales)])

    def forward(self, image: torch.Tensor, labels: torch.Tensor) -> list[list[torch.Tensor]]:
        x = torch.cat([image, labels], dim=1)
        outputs = []
        for i, scale in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return outputs


def build_encoder(cfg: RepainterConfig) -> RegionEncoder:
    return RegionEncoder(cfg.z_dim, cfg.encoder_width)


def build_generator(cfg: RepainterConfig) -> Generator:
    return Generator(cfg.label_channels, cfg.z_dim, cfg.ngf, cfg.num_up, cfg.spade_hidden, cfg.norm)


def build_discriminator(cfg: RepainterConfig) -> MultiScaleDiscriminator:
    return MultiScaleDiscriminator(cfg.label_channels, cfg.ndf, cfg.d_layers, cfg.d_scales)


def build_task(cfg: RepainterConfig) -> nn.Module:
    """The proxy task T: a timm classifier (random init, never downloaded) with the set's classes."""
    import timm  # only where T is built: painting actors that never measure T skip its import

    return timm.create_model(cfg.task_model, pretrained=False, num_classes=cfg.num_classes)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
