"""The repainter's networks, written from the SPADE (Park et al., 2019) and pix2pixHD (Wang et al.,
2018) papers: an encoder E (image -> spatial latent), a generator G (latent + label map -> image)
and a multi-scale PatchGAN discriminator D returning its intermediate features.

Light by default: G paints from a small spatial latent (no 256 -> 16*ngf*8*8 linear layer), so its
size does not grow with the image; at ngf 32 and SPADE hidden 64 it is ~10 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

NORMS = ("instance", "batch", "syncbatch")


def param_free_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "syncbatch":  # only where it works: DDP on GPUs
        return nn.SyncBatchNorm(channels, affine=False)
    raise ValueError(f"norm {kind!r}: expected one of {NORMS}")


class SPADE(nn.Module):
    """Normalise without learned affine, then modulate per pixel with gamma/beta from the label map."""

    def __init__(self, channels: int, label_channels: int, hidden: int = 64, norm: str = "instance"):
        super().__init__()
        self.norm = param_free_norm(norm, channels)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = F.interpolate(labels, size=x.shape[-2:], mode="nearest")
        features = self.shared(labels)
        return self.norm(x) * (1 + self.gamma(features)) + self.beta(features)


class SPADEResBlock(nn.Module):
    """SPADE -> LeakyReLU -> conv, twice, with a learned (SPADE + 1x1) shortcut when widths differ."""

    def __init__(self, fin: int, fout: int, label_channels: int, hidden: int = 64, norm: str = "instance"):
        super().__init__()
        middle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, middle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(middle, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, label_channels, hidden, norm)
        self.norm_1 = SPADE(middle, label_channels, hidden, norm)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, label_channels, hidden, norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, labels)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, labels), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, labels), 0.2))
        return shortcut + dx


def _widths(ngf: int, num_up: int) -> list[int]:
    # Widest at the latent resolution, halving towards the output, never below ngf.
    return [ngf * min(2 ** (num_up - i), 8) for i in range(num_up + 1)]


class Generator(nn.Module):
    """G(z, labels): z is a spatial latent [B, z_channels, H / 2^num_up, W / 2^num_up]."""

    def __init__(self, label_channels: int, z_channels: int = 16, ngf: int = 32, num_up: int = 4,
                 hidden: int = 64, norm: str = "instance"):
        super().__init__()
        widths = _widths(ngf, num_up)
        self.num_up, self.z_channels = num_up, z_channels
        self.head = nn.Conv2d(z_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            [SPADEResBlock(widths[0], widths[0], label_channels, hidden, norm)]
            + [SPADEResBlock(widths[i], widths[i + 1], label_channels, hidden, norm) for i in range(num_up)])
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](self.head(z), labels)
        for block in self.blocks[1:]:
            x = block(F.interpolate(x, scale_factor=2, mode="nearest"), labels)
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


class Encoder(nn.Module):
    """E(image) -> (mu, logvar) of the spatial latent; any input size divisible by 2^num_down."""

    def __init__(self, z_channels: int = 16, ndf: int = 32, num_down: int = 4):
        super().__init__()
        layers, channels = [], 3
        for i in range(num_down):
            width = ndf * min(2 ** i, 8)
            layers += [spectral_norm(nn.Conv2d(channels, width, 3, stride=2, padding=1)),
                       nn.InstanceNorm2d(width, affine=True), nn.LeakyReLU(0.2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.mu = nn.Conv2d(channels, z_channels, 1)
        self.logvar = nn.Conv2d(channels, z_channels, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(image)
        return self.mu(h), self.logvar(h).clamp(-30, 20)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    # Drawn on the generator's device (CPU by default), so a seed gives the same noise on any device.
    device = generator.device if generator is not None else mu.device
    noise = torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype).to(mu.device)
    return mu + noise * torch.exp(0.5 * logvar)


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


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
