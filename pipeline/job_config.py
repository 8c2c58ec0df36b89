"""The sharding job's configuration: one dataclass, filled from the command line."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

from manifests.imageio import DEFAULT_MAX_PIXELS

DEMO_STEPS = 300


@dataclass
class GenerateConfig:
    source: str = "demo"
    out: str | None = None
    variants: int = 4
    samples_per_shard: int = 128
    seed: int = 0
    workers: int = 2
    max_side: int | None = None
    limit: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_retries: int = 2
    shuffle: bool = True
    address: str | None = None
    local: bool = False
    progress: bool = True
    # The repainter (used when variants > 0)
    repainter: str | None = None
    repainter_steps: int | None = None  # DEMO_STEPS for the demo source, else 2000
    repaint_size: int | None = None  # 48 for the demo source, else 64
    region_keep_prob: float = 0.5
    segmenter: str | None = None  # demo for the demo source (its own masks), else fh
    repaint_fraction: float = 1.0
    variant_latent: str = "prior"
    task_model: str = "resnet18"
    task_loss: bool = True
    task_weight: float = 1.0
    task_warmup: int = 100
    repainter_images: int = 1024
    repainter_batch: int = 16
    repainter_checkpoint_every: int = 25
    train_workers: int = 1
    repainter_norm: str = "instance"
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.out is None:
            if not self.source.startswith("demo"):
                raise ValueError("--out is required for imagefolder: and coco: sources")
            self.out = "demo_out"
        demo = self.source.startswith("demo")
        if self.segmenter is None:
            self.segmenter = "demo" if demo else "fh"
        if self.repainter_steps is None:  # the demo's recipe fits `make demo` in ~7 minutes on 2 cores
            self.repainter_steps = DEMO_STEPS if demo else 2000
        if self.repaint_size is None:
            self.repaint_size = 48 if demo else 64
        checks = {
            "--variants": self.variants >= 0, "--samples-per-shard": self.samples_per_shard > 0,
            "--workers": self.workers > 0, "--max-side": self.max_side is None or self.max_side >= 8,
            "--limit": self.limit is None or self.limit > 0, "--max-retries": self.max_retries >= 0,
            "--max-pixels": self.max_pixels > 0, "--repainter-steps": self.repainter_steps >= 0,
            "--repaint-size": self.repaint_size >= 16 and self.repaint_size % 4 == 0,
            "--region-keep-prob": 0 <= self.region_keep_prob < 1,
            "--repaint-fraction": 0 < self.repaint_fraction <= 1, "--repainter-images": self.repainter_images >= 2,
            "--repainter-batch": self.repainter_batch > 0,
            "--repainter-checkpoint-every": self.repainter_checkpoint_every > 0,
            "--train-workers": self.train_workers > 0, "--task-warmup": self.task_warmup >= 0,
            "--gpus": self.gpus >= 0, "--task-weight": self.task_weight > 0,
        }
        bad = [flag for flag, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid value for {', '.join(bad)} (see --help)")
        if self.variants > 0:
            self._check_repainter_flags()

    def _check_repainter_flags(self) -> None:
        from .segment import make_segmenter  # skimage: only when repainting

        make_segmenter(self.segmenter)  # raises on a malformed spec
        if self.segmenter.startswith("deeplab:") and not Path(self.segmenter[8:]).is_file():
            raise ValueError(f"--segmenter {self.segmenter}: weights file {self.segmenter[8:]} not found")
        if self.segmenter == "coco" and not self.source.startswith("coco:"):
            raise ValueError("--segmenter coco needs a coco: source (it paints the annotations' polygons)")
        if self.segmenter == "demo" and not self.source.startswith("demo"):
            raise ValueError("--segmenter demo needs the demo source (it draws the demo's own shape masks)")
        if self.repainter is not None and not Path(self.repainter).is_file():
            raise ValueError(f"--repainter {self.repainter}: file not found")
        import timm

        if not timm.is_model(self.task_model):
            raise ValueError(f"--task-model {self.task_model}: not a timm model name (see timm.list_models())")
        if self.variant_latent not in ("prior", "posterior"):
            raise ValueError(f"--variant-latent {self.variant_latent}: expected prior or posterior")
        if self.repainter_norm not in ("instance", "batch", "syncbatch"):
            raise ValueError(f"--repainter-norm {self.repainter_norm}: expected instance, batch or syncbatch")
        if self.repainter_norm == "syncbatch" and self.gpus == 0:
            raise ValueError("--repainter-norm syncbatch needs GPUs (--gpus > 0); use instance or batch on CPU")
        if self.repainter is None and self.repainter_steps == 0:
            raise ValueError("--repainter-steps 0 needs --repainter CKPT (nothing to paint with otherwise)")

    def output_settings(self) -> dict:
        """What decides the shards' bytes: the same values resume, any change refuses to."""
        keep = ["variants", "samples_per_shard", "seed", "max_side", "limit", "max_pixels", "shuffle"]
        if self.variants > 0:  # the repainter's own weights enter through its sha256 (job.py)
            keep += ["repainter_steps", "repaint_size", "segmenter", "repaint_fraction", "variant_latent",
                     "task_model", "task_loss", "task_weight", "task_warmup", "region_keep_prob", "repainter_images",
                     "repainter_batch", "train_workers", "repainter_norm"]
        return {k: v for k, v in asdict(self).items() if k in keep}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Shard an image source into verified WebDataset tars on Ray "
                    "(no arguments: the built-in demo on an embedded local Ray).")
    d = GenerateConfig()
    p.add_argument("--source", default=d.source,
                   help="imagefolder:DIR | coco:ANNOTATIONS_JSON:IMAGES_DIR | demo[:COUNT[:SIZE]]")
    p.add_argument("--out", default=None, help="output folder (default for demo: demo_out)")
    p.add_argument("--variants", type=int, default=d.variants, help="repainted variants per image")
    p.add_argument("--samples-per-shard", type=int, default=d.samples_per_shard)
    p.add_argument("--seed", type=int, default=d.seed, help="global seed of every random draw")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="shards written at once (CPUs of the embedded local Ray)")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale stored images to this longest side; boxes are scaled to match")
    p.add_argument("--limit", type=int, default=None, help="shard only the first K records")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="refuse images declaring more pixels (decompression-bomb guard)")
    p.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="Ray retries of a shard task whose worker died (bounds poison inputs)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                   help="keep the source order in the shards (default: a seeded permutation, so each shard "
                        "mixes classes; readers only shuffle within a buffer)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, "
                   "a running local cluster, else a new embedded one)")
    p.add_argument("--local", action="store_true", help="always start a fresh embedded Ray")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    r = p.add_argument_group("repainter (with --variants > 0)")
    r.add_argument("--repainter", default=None, metavar="CKPT",
                   help="start from this repainter checkpoint (with --repainter-steps 0: use it as is)")
    r.add_argument("--repainter-steps", type=int, default=None, metavar="K",
                   help=f"training steps (each one E/G, one D and one T update) before sharding "
                        f"(default {DEMO_STEPS} for the demo, else 2000)")
    r.add_argument("--repaint-size", type=int, default=None, metavar="PX",
                   help="the generator's resolution, a multiple of 4 (default 48 for the demo, else 64); "
                        "variants are resized back to the stored size")
    r.add_argument("--region-keep-prob", type=float, default=d.region_keep_prob, metavar="P",
                   help="per variant and region: keep (a sample of) the region's own style with probability P, "
                        "else paint it with a new one (0: every region new)")
    r.add_argument("--segmenter", default=None,
                   help="fh[:scale=S,sigma=G,min_size=M] (default for folders and COCO) | deeplab:WEIGHTS.pt | "
                        "coco (ground-truth polygons) | demo (the demo's own masks; its default)")
    r.add_argument("--repaint-fraction", type=float, default=d.repaint_fraction, metavar="P",
                   help="repaint only this seeded fraction of the images")
    r.add_argument("--variant-latent", default=d.variant_latent,
                   help="z of each variant: prior (N(0, I): new textures and colours) | posterior (E of the "
                        "original: variations near its own look)")
    r.add_argument("--task-model", default=d.task_model, help="timm model of the proxy task T")
    r.add_argument("--no-task-loss", dest="task_loss", action="store_false",
                   help="E/G without the task loss (the paper's ablation)")
    r.add_argument("--task-weight", type=float, default=d.task_weight, help="weight of the task loss for E/G")
    r.add_argument("--task-warmup", type=int, default=d.task_warmup, metavar="K",
                   help="steps the proxy task trains on real images only before its loss reaches E/G")
    r.add_argument("--repainter-images", type=int, default=d.repainter_images,
                   help="images the repainter trains on (the first of the seeded order; 10%% held out)")
    r.add_argument("--repainter-batch", type=int, default=d.repainter_batch, help="batch per training worker")
    r.add_argument("--repainter-checkpoint-every", type=int, default=d.repainter_checkpoint_every, metavar="K",
                   help="report a checkpoint to Ray Train every K steps (a rerun resumes from the last)")
    r.add_argument("--train-workers", type=int, default=d.train_workers, help="Ray Train workers (DDP)")
    r.add_argument("--repainter-norm", default=d.repainter_norm,
                   help="G's parameter-free norm: instance | batch | syncbatch (GPU only)")
    r.add_argument("--gpus", type=float, default=d.gpus,
                   help="GPUs per training worker and per inference actor (0: CPU)")
    return p


def config_from_args(argv: list[str] | None = None) -> GenerateConfig:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return GenerateConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
