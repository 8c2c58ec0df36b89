"""Repainting at shard time: a checkpoint of E and G becomes `rp0.jpg` ... `rpN-1.jpg` per sample.

Per record: segment -> label channels -> E's style code of each region -> per variant, from a seed
derived from (seed, key, variant), each region takes a new code from the prior N(0, I) or, with
probability `keep_prob`, a sample of its own (`nets.variant_codes`, exactly as in training, so these
are paintings D was trained to judge; `--variant-latent bank` takes the new codes from E's codes of
the regions of its training images instead, see `collect_style_bank`) -> G paints at `repaint_size`
-> optionally, the original's fine luminance detail replaces the painting's (`--variant-detail`, see
`transfer_detail`) and each region's hue is rotated by its own seeded angle (`--variant-hue region`,
see `rotate_hues`) -> resized back to the stored size, so the original's boxes stay valid for every
variant. The label map is stored too (`seg.png`, 16-bit), so a shard set can be repainted without
segmenting.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.color import hsv2rgb, rgb2hsv
from skimage.filters import gaussian

from manifests import encode_image
from manifests.contract import derive_seed
from manifests.imageio import encode_label_map
from manifests.manifest import atomic_write_bytes
from manifests.objectstore import is_object_url, read_object

from .config import HUE_MODES, LATENTS, RepainterConfig
from .data import resize_pair, to_model_inputs
from .nets import (
    Generator,
    RegionEncoder,
    build_encoder,
    build_generator,
    build_task,
    region_masks,
    reparameterize,
    variant_codes,
)

CHECKPOINT_FORMAT = "repainter-v2"  # v2: region style codes (v1's spatial latent is not readable)


def save_repainter(path: str | Path, cfg: RepainterConfig, encoder: RegionEncoder, generator: Generator,
                   step: int) -> str:
    """One self-contained file (config, E and G weights, step), written atomically; returns its sha256."""
    buffer = io.BytesIO()
    state = {"format": CHECKPOINT_FORMAT, "config": asdict(cfg), "step": step,
             "E": encoder.state_dict(), "G": generator.state_dict()}
    if len(encoder.style_bank):  # absent otherwise, so checkpoints without a bank keep their bytes
        state["style_bank"] = encoder.style_bank.detach().cpu()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_repainter(path: str | Path) -> tuple[RepainterConfig, RegionEncoder, Generator, dict]:
    """A checkpoint from a file, or from the bucket of an object-store shard set (painting actors
    on any node)."""
    try:
        data = read_object(str(path)) if is_object_url(path) else Path(path).read_bytes()
    except FileNotFoundError:
        data = None
    if data is None:
        raise FileNotFoundError(f"{path}: repainter checkpoint not found")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file: say which and why
        raise ValueError(f"{path}: not a loadable repainter checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    try:
        cfg = RepainterConfig.from_dict(state["config"])
        encoder, generator = build_encoder(cfg), build_generator(cfg)
        encoder.load_state_dict(state["E"])
        generator.load_state_dict(state["G"])
        bank = state.get("style_bank", encoder.style_bank)
        if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or bank.shape[1] != cfg.z_dim:
            raise ValueError(f"style bank of shape {getattr(bank, 'shape', None)}, expected [N, {cfg.z_dim}]")
        encoder.style_bank = bank.float()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # missing/extra keys, wrong shapes
        raise ValueError(f"{path}: damaged {CHECKPOINT_FORMAT} checkpoint ({type(exc).__name__}: {exc})") from None
    info = {"sha256": hashlib.sha256(data).hexdigest(), "step": state["step"], "config": state["config"],
            "style_bank": len(encoder.style_bank)}
    return cfg, encoder.eval(), generator.eval(), info


def load_task(repainter: str | Path, weights: str | Path) -> torch.nn.Module:
    """The proxy task T of a training: its model from the repainter's config, its weights from
    `task.pt` (written beside `repainter.pt` at the end of a training) or a checkpoint's `state.pt`."""
    cfg, _, _, _ = load_repainter(repainter)
    task = build_task(cfg)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    task.load_state_dict(state.get("T", state))
    return task.eval()


@torch.no_grad()
def collect_style_bank(encoder: RegionEncoder, images: np.ndarray, labels: np.ndarray, num_channels: int,
                       limit: int = 4096, seed: int = 0, batch_size: int = 64,
                       structure: str = "segments") -> torch.Tensor:
    """E's code (mu) of every region present in `images` (uint8 [B, S, S, 3], label maps [B, S, S]),
    at most `limit` of them (a seeded choice): [N, z_dim] on the CPU.

    Why: a prior draw N(0, I) is a style no image had, and G, trained for CPU lengths, paints those
    less cleanly than the codes E gives real regions. A code taken from a region of another image is
    "a new instance learned from the same distribution", as the Repaint paper asks, and, drawn at
    random, carries no trace of this image's class colours."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    found = []
    for i in range(0, len(images), batch_size):
        x, channels = to_model_inputs(images[i:i + batch_size], labels[i:i + batch_size], num_channels, structure)
        mu, _ = encoder(x.to(device), channels.to(device))
        present = region_masks(channels).sum((2, 3)) > 0
        found.append(mu.cpu()[present])
    encoder.train(was_training)
    bank = torch.cat(found) if found else torch.zeros(0, encoder.mu.out_features)
    if len(bank) > limit:
        keep = np.sort(np.random.default_rng(derive_seed(seed, "style-bank")).choice(len(bank), limit, replace=False))
        bank = bank[torch.from_numpy(keep)]
    return bank.contiguous()


def variant_seed(seed: int, key: str, variant: int) -> int:
    return derive_seed(seed, key, variant)


def paint_variants(encoder: RegionEncoder, generator: Generator, cfg: RepainterConfig, image: torch.Tensor,
                   labels: torch.Tensor, seeds: list[int], latent: str = "prior") -> torch.Tensor:
    """One painting per seed of every image in the batch: [len(seeds) * B, 3, S, S], seed-major.
    `prior` / `bank`: `nets.variant_codes` (new codes per region, as in training; bank: rows of
    E's style bank); `posterior`: E's own."""
    mu, logvar = encoder(image, labels)
    bank = encoder.style_bank if latent == "bank" else None
    codes = []
    for seed in seeds:
        draw = torch.Generator().manual_seed(seed)
        codes.append(reparameterize(mu, logvar, draw) if latent == "posterior"
                     else variant_codes(mu, logvar, cfg.keep_prob, draw, bank)[0])
    return generator(torch.cat(codes), labels.repeat(len(seeds), 1, 1, 1))


def transfer_detail(painted: np.ndarray, original: np.ndarray, amount: float) -> np.ndarray:
    """Swap `amount` of the painting's fine luminance detail (what a Gaussian blur removes) for the
    original's; colours and coarse shading stay G's. Both uint8 HxWx3 of one size.

    Why: at CPU training lengths G paints regions with a blotchy texture of its own and loses the
    small edges inside them (a wheel, an eye) that a classifier at 32 px relies on. With `amount` 1
    a variant keeps the original's texture: only colours and shading are new, the paper's "new
    texture" is given up for detail.
    """
    if amount == 0:
        return painted
    sigma = max(1.0, painted.shape[0] / 32)  # about 1 px of a 32 px image

    def detail(rgb: np.ndarray) -> np.ndarray:
        luminance = rgb.astype(np.float64).mean(-1)
        return luminance - gaussian(luminance, sigma=sigma, preserve_range=True)

    out = painted.astype(np.float64) + amount * (detail(original) - detail(painted))[..., None]
    return out.round().clip(0, 255).astype(np.uint8)


def rotate_hues(pixels: np.ndarray, labels: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Rotate the hue of a painting (uint8 HxWx3) by seeded angles: one per label id (`region`) or
    one for the whole image (`image`); saturation and value stay, so do the painted shapes and textures.

    Why: G paints from the palette it learned of its training images (CIFAR-10's browns, greys and
    sky blues), so its variants change colours within that palette and a classifier still meets no
    rotated hue. The rotation is not learned: it spreads the regions' colours over the colour wheel.
    """
    if mode == "none":
        return pixels
    angles = np.random.default_rng(seed).random(int(labels.max()) + 1)
    shift = angles[labels] if mode == "region" else angles[0]
    hsv = rgb2hsv(pixels)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return (hsv2rgb(hsv) * 255).round().clip(0, 255).astype(np.uint8)


def is_repainted(seed: int, key: str, fraction: float) -> bool:
    """`--repaint-fraction`: a fixed, seeded subset of the keys gets variants."""
    return fraction >= 1.0 or variant_seed(seed, key, -1) / 2**63 < fraction


class Repaint:
    """The records hook: (image, key, meta) -> {"seg.png": ..., "rp0.jpg": ..., ...}."""

    def __init__(self, checkpoint: str | Path, segmenter, variants: int, seed: int, repaint_size: int = 64,
                 fraction: float = 1.0, latent: str = "prior", keep_prob: float | None = None, hue: str = "none",
                 detail: float = 0.0, device: str = "cpu"):
        self.cfg, self.encoder, self.generator, self.info = load_repainter(checkpoint)
        if keep_prob is not None:  # --region-keep-prob for painting; training used the checkpoint's own
            self.cfg.keep_prob = keep_prob
        step = 2 ** self.cfg.num_up
        if repaint_size % step:
            raise ValueError(f"--repaint-size {repaint_size} must be a multiple of {step} for this repainter")
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.generator.to(self.device)
        self.segmenter, self.variants, self.seed, self.size = segmenter, variants, seed, repaint_size
        if latent not in LATENTS:
            raise ValueError(f"variant latent {latent!r}: expected one of {', '.join(LATENTS)}")
        if latent == "bank" and not len(self.encoder.style_bank):
            raise ValueError(f"{checkpoint}: this repainter has no style bank (trained before it was kept); "
                             f"paint with --variant-latent prior, or train it again")
        if hue not in HUE_MODES:
            raise ValueError(f"variant hue {hue!r}: expected one of {', '.join(HUE_MODES)}")
        if not 0 <= detail <= 1:
            raise ValueError(f"variant detail {detail}: expected a fraction in [0, 1]")
        self.fraction, self.latent, self.hue, self.detail = fraction, latent, hue, detail

    @torch.no_grad()
    def paint(self, image: Image.Image, labels: np.ndarray, key: str) -> list[Image.Image]:
        """The variants of one image at its own size; all N are drawn in one batch."""
        return self.paint_batch([(image, labels, key)])[0]

    @torch.no_grad()
    def paint_batch(self, items: list[tuple[Image.Image, np.ndarray, str]]) -> list[list[Image.Image]]:
        """The variants of B images in one E forward and one G forward of B x N paintings. Each
        image's codes are drawn from its own seeds, and E and G normalise per sample, so a painting
        does not depend on the batch it was painted in (up to float rounding: tests/test_repaint.py)."""
        smalls = [resize_pair(image, labels, self.size) for image, labels, _ in items]
        x, channels = to_model_inputs(np.stack([im for im, _ in smalls]), np.stack([lab for _, lab in smalls]),
                                      self.cfg.label_channels, self.cfg.structure)
        x, channels = x.to(self.device), channels.to(self.device)
        mu, logvar = self.encoder(x, channels)
        seeds = [[variant_seed(self.seed, key, v) for v in range(self.variants)] for _, _, key in items]
        codes = [self._code(mu[b:b + 1], logvar[b:b + 1], seed) for b in range(len(items)) for seed in seeds[b]]
        painted = self.generator(torch.cat(codes), channels.repeat_interleave(self.variants, dim=0))
        pixels = ((painted.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        out = []
        for b, ((image, _, _), (small, small_labels)) in enumerate(zip(items, smalls, strict=True)):
            mine = pixels[b * self.variants:(b + 1) * self.variants]
            mine = [rotate_hues(transfer_detail(p, small, self.detail), small_labels, self.hue, seed)
                    for p, seed in zip(mine, seeds[b], strict=True)]
            out.append([Image.fromarray(p, "RGB").resize(image.size, Image.Resampling.BICUBIC) for p in mine])
        return out

    def _code(self, mu: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
        draw = torch.Generator().manual_seed(seed)
        if self.latent == "posterior":
            return reparameterize(mu, logvar, draw)
        bank = self.encoder.style_bank if self.latent == "bank" else None
        return variant_codes(mu, logvar, self.cfg.keep_prob, draw, bank)[0]

    def __call__(self, image: Image.Image, key: str, meta: dict) -> dict[str, bytes]:
        return self.many([(image, key, meta)])[0]

    def many(self, records: list[tuple[Image.Image, str, dict]]) -> list[dict[str, bytes]]:
        """The records hook for a batch (`records.process_records`): the fields of each record, the
        label map and N variants, or none where `--repaint-fraction` leaves the record out."""
        out: list[dict[str, bytes]] = [{} for _ in records]
        chosen = [(i, image, self.segmenter(image, meta), key) for i, (image, key, meta) in enumerate(records)
                  if is_repainted(self.seed, key, self.fraction)]
        if not chosen:
            return out
        paintings = self.paint_batch([(image, labels, key) for _, image, labels, key in chosen])
        for (i, _, labels, _), variants in zip(chosen, paintings, strict=True):
            out[i] = {"seg.png": encode_label_map(labels)}
            out[i].update({f"rp{v}.jpg": encode_image(p, "jpg") for v, p in enumerate(variants)})
        return out
