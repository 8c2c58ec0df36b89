"""Repainting at shard time: a checkpoint of E and G becomes `rp0.jpg` ... `rpN-1.jpg` per sample.

Per record: segment -> label channels -> N draws of the spatial latent from the prior N(0, I), each
from a seed derived from (seed, key, variant) -> G paints at `repaint_size` -> resized back to the
stored size, so the original's boxes stay valid for every variant. Drawing z from the prior, not
from E's posterior of the original, is what gives new textures and colours (SPADE's multimodal
synthesis); E is only needed to train G, and stays in the checkpoint for fine-tuning. The label map is
stored too (`seg.png`, 16-bit), so a shard set can be repainted again without segmenting.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from manifests import encode_image
from manifests.imageio import encode_label_map
from manifests.manifest import atomic_write_bytes

from .repaint_data import resize_pair, to_model_inputs
from .repaint_nets import Encoder, Generator, reparameterize
from .repaint_steps import RepainterConfig

CHECKPOINT_FORMAT = "repainter-v1"


def save_repainter(path: str | Path, cfg: RepainterConfig, encoder: Encoder, generator: Generator, step: int) -> str:
    """One self-contained file (config, E and G weights, step), written atomically; returns its sha256."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": asdict(cfg), "step": step,
                "E": encoder.state_dict(), "G": generator.state_dict()}, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_repainter(path: str | Path) -> tuple[RepainterConfig, Encoder, Generator, dict]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: repainter checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file: say which and why
        raise ValueError(f"{path}: not a loadable repainter checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    cfg = RepainterConfig(**state["config"])
    encoder = Encoder(cfg.z_channels, cfg.ndf, cfg.num_up)
    generator = Generator(cfg.label_channels, cfg.z_channels, cfg.ngf, cfg.num_up, cfg.spade_hidden, cfg.norm)
    encoder.load_state_dict(state["E"])
    generator.load_state_dict(state["G"])
    info = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "step": state["step"], "config": state["config"]}
    return cfg, encoder.eval(), generator.eval(), info


def derive_seed(*parts: object) -> int:
    """sha256 of the parts joined by ':' (the manifest's SEED_RULE), as a non-negative int64."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def variant_seed(seed: int, key: str, variant: int) -> int:
    return derive_seed(seed, key, variant)


def prior_latent(cfg: RepainterConfig, size: int, seed: int, count: int = 1) -> torch.Tensor:
    """z ~ N(0, I) of G's spatial latent for a `size` x `size` painting, drawn on the CPU from `seed`."""
    side = size // 2**cfg.num_up
    return torch.randn((count, cfg.z_channels, side, side), generator=torch.Generator().manual_seed(seed))


def is_repainted(seed: int, key: str, fraction: float) -> bool:
    """`--repaint-fraction`: a fixed, seeded subset of the keys gets variants."""
    return fraction >= 1.0 or variant_seed(seed, key, -1) / 2**63 < fraction


class Repaint:
    """The records hook: (image, key, meta) -> {"seg.png": ..., "rp0.jpg": ..., ...}."""

    def __init__(self, checkpoint: str | Path, segmenter, variants: int, seed: int, repaint_size: int = 64,
                 fraction: float = 1.0, latent: str = "prior", device: str = "cpu"):
        self.cfg, self.encoder, self.generator, self.info = load_repainter(checkpoint)
        step = 2 ** self.cfg.num_up
        if repaint_size % step:
            raise ValueError(f"--repaint-size {repaint_size} must be a multiple of {step} for this repainter")
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.generator.to(self.device)
        self.segmenter, self.variants, self.seed, self.size = segmenter, variants, seed, repaint_size
        if latent not in ("prior", "posterior"):
            raise ValueError(f"variant latent {latent!r}: expected prior or posterior")
        self.fraction, self.latent = fraction, latent

    @torch.no_grad()
    def paint(self, image: Image.Image, labels: np.ndarray, key: str) -> list[Image.Image]:
        """The variants of one image at its own size; all N are drawn in one batch."""
        small, small_labels = resize_pair(image, labels, self.size)
        x, channels = to_model_inputs(small[None], small_labels[None], self.cfg.label_channels)
        seeds = [variant_seed(self.seed, key, v) for v in range(self.variants)]
        if self.latent == "prior":
            z = torch.cat([prior_latent(self.cfg, self.size, s) for s in seeds])
        else:  # near the original's own style: fewer new colours, closer to the source look
            mu, logvar = self.encoder(x.to(self.device))
            z = torch.cat([reparameterize(mu, logvar, torch.Generator().manual_seed(s)) for s in seeds])
        painted = self.generator(z.to(self.device), channels.to(self.device).expand(self.variants, -1, -1, -1))
        pixels = ((painted.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(p, "RGB").resize(image.size, Image.Resampling.BICUBIC) for p in pixels]

    def __call__(self, image: Image.Image, key: str, meta: dict) -> dict[str, bytes]:
        if not is_repainted(self.seed, key, self.fraction):
            return {}
        labels = self.segmenter(image, meta)
        out = {"seg.png": encode_label_map(labels)}
        for v, painted in enumerate(self.paint(image, labels, key)):
            out[f"rp{v}.jpg"] = encode_image(painted, "jpg")
        return out
