"""Repainting at shard time: a checkpoint of E and G becomes `rp0.jpg` ... `rpN-1.jpg` per sample.

Per record: segment -> label channels -> encode the image to (mu, logvar) -> N draws of the spatial
latent, each from a seed derived from (seed, key, variant) -> G paints at `repaint_size` -> resized
back to the stored size, so the original's boxes stay valid for every variant. The label map is
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

from .repaint_nets import Encoder, Generator, reparameterize
from .repaint_steps import RepainterConfig
from .segment import label_channels

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


def variant_seed(seed: int, key: str, variant: int) -> int:
    digest = hashlib.sha256(f"{seed}:{key}:{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Repaint:
    """The records hook: (image, key, meta) -> {"seg.png": ..., "rp0.jpg": ..., ...}."""

    def __init__(self, checkpoint: str | Path, segmenter, variants: int, seed: int, repaint_size: int = 128):
        self.cfg, self.encoder, self.generator, self.info = load_repainter(checkpoint)
        step = 2 ** self.cfg.num_up
        if repaint_size % step:
            raise ValueError(f"--repaint-size {repaint_size} must be a multiple of {step} for this repainter")
        self.segmenter, self.variants, self.seed, self.size = segmenter, variants, seed, repaint_size

    @torch.no_grad()
    def __call__(self, image: Image.Image, key: str, meta: dict) -> dict[str, bytes]:
        labels = self.segmenter(image, meta)
        out = {"seg.png": encode_label_map(labels)}
        small = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        small_labels = np.asarray(Image.fromarray(labels).resize((self.size, self.size), Image.Resampling.NEAREST))
        channels = torch.from_numpy(label_channels(small_labels, self.cfg.label_channels - 1))[None]
        x = torch.from_numpy(np.asarray(small, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        mu, logvar = self.encoder(x)
        for v in range(self.variants):
            z = reparameterize(mu, logvar, torch.Generator().manual_seed(variant_seed(self.seed, key, v)))
            painted = ((self.generator(z, channels)[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255)
            painted = Image.fromarray(painted.round().to(torch.uint8).numpy(), "RGB")
            out[f"rp{v}.jpg"] = encode_image(painted.resize(image.size, Image.Resampling.BICUBIC), "jpg")
        return out
