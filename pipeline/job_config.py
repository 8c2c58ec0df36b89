"""The sharding job's configuration: one dataclass, from which its command line comes (`manifests.flags`)."""

from __future__ import annotations

import argparse
import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from manifests.flags import build_parser, flag, invalid_flags
from manifests.imageio import DEFAULT_MAX_PIXELS
from manifests.objectstore import is_object_url

from .repaint.config import HUE_MODES, LATENTS, STRUCTURES

DEMO_STEPS = 300
REPAINTER = "repainter (with --variants > 0)"


@dataclass
class GenerateConfig:
    """Every flag of `pipeline/generate.py`: this class is the parser, the defaults and the checks."""

    source: str = flag("demo", "imagefolder:DIR | coco:ANNOTATIONS_JSON:IMAGES_DIR | demo[:COUNT[:SIZE]]")
    out: str | None = flag(None, "output folder, or an object-store prefix s3://BUCKET/PREFIX (credentials from "
                                 "the AWS_* environment or profile; default for demo: demo_out)")
    work: str | None = flag(None, "local working folder for the repainter's training when --out is s3:// "
                                  "(default: --out itself for a folder)", metavar="DIR")
    variants: int = flag(4, "repainted variants per image", check=lambda v: v >= 0, must=">= 0")
    samples_per_shard: int = flag(128, "samples per tar", check=lambda v: v > 0, must="> 0")
    seed: int = flag(0, "global seed of every random draw")
    workers: int = flag(2, "shards written at once (CPUs of the embedded local Ray)", check=lambda v: v > 0,
                        must="> 0")
    max_side: int | None = flag(None, "downscale stored images to this longest side; boxes are scaled to match",
                                check=lambda v: v >= 8, must=">= 8")
    limit: int | None = flag(None, "shard only the first K records", check=lambda v: v > 0, must="> 0")
    max_pixels: int = flag(DEFAULT_MAX_PIXELS, "refuse images declaring more pixels (decompression-bomb guard)",
                           check=lambda v: v > 0, must="> 0")
    max_retries: int = flag(2, "Ray retries of a shard task whose worker died (bounds poison inputs)",
                            check=lambda v: v >= 0, must=">= 0")
    shuffle: bool = flag(True, "keep the source order in the shards (default: a seeded permutation, so each "
                               "shard mixes classes; readers only shuffle within a buffer)")
    address: str | None = flag(None, "Ray cluster address (default: RAY_ADDRESS, a running local cluster, "
                                     "else a new embedded one)")
    local: bool = flag(False, "always start a fresh embedded Ray")
    progress: bool = flag(True, "no progress bars")
    # The repainter (used when variants > 0)
    repainter: str | None = flag(None, "start from this repainter checkpoint (with --repainter-steps 0: use it "
                                       "as is)", group=REPAINTER, metavar="CKPT")
    repainter_steps: int | None = flag(
        None, f"training steps (each one E/G, one D and one T update) before sharding (default {DEMO_STEPS} for "
              "the demo, else 2000)", check=lambda v: v >= 0, must=">= 0", group=REPAINTER, metavar="K")
    repaint_size: int | None = flag(
        None, "the generator's resolution, a multiple of 4 (default 48 for the demo, else 64); variants are "
              "resized back to the stored size", check=lambda v: v >= 16 and v % 4 == 0,
        must="a multiple of 4, >= 16", group=REPAINTER, metavar="PX")
    region_keep_prob: float = flag(
        0.0, "painting the shards: per variant and region, keep (a sample of) the region's own style with "
             "probability P, else paint it with a new one (default 0: every region new, so a variant's colours "
             "carry no trace of the original's class colours)", check=lambda v: 0 <= v < 1, must="in [0, 1)",
        group=REPAINTER, metavar="P")
    train_region_keep_prob: float = flag(
        0.5, "the same share in the variant paintings the repainter trains on (D, T and the task loss judge "
             "them)", check=lambda v: 0 <= v < 1, must="in [0, 1)", group=REPAINTER, metavar="P")
    train_variant_latent: str = flag(
        "prior", "new region codes of the variant paintings the repainter trains on: prior | bank (E's codes of "
                 "the batch's regions: what --variant-latent bank paints)", group=REPAINTER, choices=("prior", "bank"))
    repainter_structure: str = flag(
        "segments", "what G gets besides the segments: segments (their boundaries) | edges (also the original's "
                    "own edges inside each segment, without its colours)", group=REPAINTER, choices=STRUCTURES)
    segmenter: str | None = flag(
        None, "fh[:scale=S,sigma=G,min_size=M] (default for folders and COCO) | deeplab:WEIGHTS.pt | coco "
              "(ground-truth polygons) | demo (the demo's own masks; its default)", group=REPAINTER)
    repaint_fraction: float = flag(1.0, "repaint only this seeded fraction of the images",
                                   check=lambda v: 0 < v <= 1, must="in (0, 1]", group=REPAINTER, metavar="P")
    variant_latent: str = flag("bank", "new region codes of each variant: bank (E's code of a random region of a "
                                       "random training image, kept in the checkpoint) | prior (N(0, I): styles "
                                       "no image had, noisier) | posterior (E of the original: variations near "
                                       "its own look)", group=REPAINTER, choices=LATENTS)
    variant_hue: str = flag("none", "after painting, rotate each variant's hues by seeded angles: none | image "
                                    "(one angle) | region (one per region: colours beyond the learned palette)",
                            group=REPAINTER, choices=HUE_MODES)
    variant_detail: float = flag(0.0, "after painting, replace this fraction of each variant's fine luminance "
                                      "detail with the original's (1: the original's texture, new colours)",
                                 check=lambda v: 0 <= v <= 1, must="in [0, 1]", group=REPAINTER, metavar="A")
    paint_batch: int = flag(1, "images per painting forward (B x N variants at once: keeps a GPU busy); "
                               "paintings equal one-at-a-time ones up to float rounding",
                            check=lambda v: v > 0, must="> 0", group=REPAINTER, metavar="B")
    task_model: str = flag("resnet18", "timm model of the proxy task T", group=REPAINTER)
    task_loss: bool = flag(True, "E/G without the task loss (the paper's ablation)", group=REPAINTER)
    task_weight: float = flag(1.0, "weight of the task loss for E/G", check=lambda v: v > 0, must="> 0",
                              group=REPAINTER)
    task_warmup: int = flag(100, "steps the proxy task trains on real images only before its loss reaches E/G",
                            check=lambda v: v >= 0, must=">= 0", group=REPAINTER, metavar="K")
    repainter_images: int = flag(1024, "images the repainter trains on (the first of the seeded order; 10%% "
                                       "held out)", check=lambda v: v >= 2, must=">= 2", group=REPAINTER)
    repainter_batch: int = flag(16, "batch per training worker", check=lambda v: v > 0, must="> 0",
                                group=REPAINTER)
    repainter_checkpoint_every: int = flag(25, "report a checkpoint to Ray Train every K steps (a rerun resumes "
                                               "from the last)", check=lambda v: v > 0, must="> 0",
                                           group=REPAINTER, metavar="K")
    train_workers: int = flag(1, "Ray Train workers (DDP)", check=lambda v: v > 0, must="> 0", group=REPAINTER)
    repainter_norm: str = flag("instance", "G's parameter-free norm: instance | batch | syncbatch (GPU only)",
                               group=REPAINTER, choices=("instance", "batch", "syncbatch"))
    gpus: float = flag(0.0, "GPUs per training worker and per inference actor (0: CPU)", check=lambda v: v >= 0,
                       must=">= 0", group=REPAINTER)

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
        bad = invalid_flags(self)
        if bad:
            raise ValueError("; ".join(bad))
        self._check_out()
        if self.variants > 0:
            self._check_repainter_flags()

    def _check_out(self) -> None:
        """--out must be a folder (or not exist yet) that is neither the source's own folder nor inside it,
        or an s3:// prefix in a named bucket (with --work when a repainter is trained)."""
        if is_object_url(self.out):
            if not urlparse(self.out).netloc:
                raise ValueError(f"--out {self.out}: an object-store --out needs a bucket: s3://BUCKET/PREFIX")
            if self.variants > 0 and self.repainter_steps > 0 and self.work is None:
                raise ValueError(f"--out {self.out}: the repainter trains in a local folder; name one with --work DIR")
            return
        out = Path(self.out).resolve()
        for parent in (out, *out.parents):
            if parent.exists() and not parent.is_dir():
                where = "is" if parent == out else f"is below {parent}, which is"
                raise ValueError(f"--out {self.out} {where} a file, not a folder")
        kind, _, rest = self.source.partition(":")
        roots = {"imagefolder": [rest], "coco": [rest.rpartition(":")[2]]}.get(kind, [])
        for root in filter(None, roots):
            root_path = Path(root).resolve()
            if out == root_path or out.is_relative_to(root_path):
                raise ValueError(f"--out {self.out} is inside the source folder {root}: the shards would be "
                                 "listed as images by a rerun; write them elsewhere")

    @functools.cached_property
    def segmentation(self):
        """The `--segmenter` spec parsed once into the segmenter every repainting step uses."""
        from .segment import make_segmenter  # skimage: only when repainting

        return make_segmenter(self.segmenter)

    def _check_repainter_flags(self) -> None:
        self.segmentation  # noqa: B018 (parses the spec: raises on a malformed one)
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
        if self.repainter_norm == "syncbatch" and self.gpus == 0:
            raise ValueError("--repainter-norm syncbatch needs GPUs (--gpus > 0); use instance or batch on CPU")
        if self.repainter is None and self.repainter_steps == 0:
            raise ValueError("--repainter-steps 0 needs --repainter CKPT (nothing to paint with otherwise)")

    def output_settings(self) -> dict:
        """What decides the shards' bytes: the same values resume, any change refuses to."""
        keep = ["variants", "samples_per_shard", "seed", "max_side", "limit", "max_pixels", "shuffle"]
        if self.variants > 0:  # the repainter's own weights enter through its sha256 (job.py)
            # paint_batch too: float rounding may differ with the batch, so a resume must not mix them.
            keep += ["repainter_steps", "repaint_size", "segmenter", "repaint_fraction", "variant_latent",
                     "paint_batch", "variant_hue", "variant_detail", "task_model", "task_loss", "task_weight",
                     "task_warmup", "region_keep_prob", "train_region_keep_prob", "train_variant_latent",
                     "repainter_images", "repainter_batch", "train_workers", "repainter_norm", "repainter_structure"]
        return {k: v for k, v in asdict(self).items() if k in keep}


def get_args_parser() -> argparse.ArgumentParser:
    return build_parser(GenerateConfig, "Shard an image source into verified WebDataset tars on Ray "
                                        "(no arguments: the built-in demo on an embedded local Ray).")


def config_from_args(argv: list[str] | None = None) -> GenerateConfig:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return GenerateConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
