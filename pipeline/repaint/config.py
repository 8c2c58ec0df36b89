"""The repainter's settings: what the networks are (`nets.build_*`) and how their losses are weighted
(`steps`). One dataclass, saved in every checkpoint, so a checkpoint rebuilds its own networks."""

from __future__ import annotations

from dataclasses import dataclass, fields

HUE_MODES = ("none", "image", "region")  # --variant-hue: what `paint.rotate_hues` rotates
LATENTS = ("prior", "bank", "posterior")  # --variant-latent: where a variant's new region codes come from
STRUCTURES = ("segments", "edges")  # what the label input's boundary channel draws (data.to_model_inputs)


@dataclass
class RepainterConfig:
    label_channels: int = 17  # 16 segment channels (by area rank, last = "other") + boundary
    num_classes: int = 10
    multilabel: bool = False  # COCO: which categories are present (BCE), else CE
    # Networks (nets.py)
    z_dim: int = 8  # one style code of this size per region
    encoder_width: int = 64
    ngf: int = 16  # CPU-sized: 32 / 64 paint no better in a CPU budget and cost 2.7x the time
    spade_hidden: int = 32
    num_up: int = 2  # G starts at 1 / 2^num_up of the painting's side
    ndf: int = 32
    d_layers: int = 3
    d_scales: int = 2
    norm: str = "instance"
    structure: str = "segments"  # "edges": the boundary channel also draws the original's own edges
    task_model: str = "resnet18"
    keep_prob: float = 0.5  # a variant's region keeps (a sample of) its own style with this probability
    # Where a training variant's new region codes come from: "prior" N(0, I), or "bank": E's code of a
    # random region of the batch (so D and T judge the kind of painting `--variant-latent bank` makes)
    train_latent: str = "prior"
    # Losses for E/G (steps.py); the paper's "w/o task-loss" ablation is task_weight 0
    task_weight: float = 1.0
    rec_weight: float = 10.0  # L1 of posterior painting to original (SPADE's VGG loss needs weights we never load)
    fm_weight: float = 10.0
    kld_weight: float = 0.05
    latent_weight: float = 1.0  # BicycleGAN: E recovers each region's prior code from its painting
    gan_weight: float = 1.0
    # Optimisers: the GAN's Adam(0, 0.999) as SPADE; the proxy classifier gets its own AdamW
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    lr_t: float = 1e-3
    task_warmup: int = 100  # steps T trains on real images before its loss reaches G

    @classmethod
    def from_dict(cls, values: dict) -> RepainterConfig:
        """A checkpoint's config; keys this version does not know are refused, not dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"repainter config has unknown keys {unknown} (a checkpoint of another version?)")
        return cls(**values)
