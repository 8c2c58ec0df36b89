"""The sharding job's configuration: one dataclass, filled from the command line."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from manifests.imageio import DEFAULT_MAX_PIXELS


@dataclass
class GenerateConfig:
    source: str = "demo"
    out: str | None = None
    variants: int = 0
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

    def __post_init__(self) -> None:
        if self.out is None:
            if not self.source.startswith("demo"):
                raise ValueError("--out is required for imagefolder: and coco: sources")
            self.out = "demo_out"
        checks = {
            "--variants": self.variants >= 0, "--samples-per-shard": self.samples_per_shard > 0,
            "--workers": self.workers > 0, "--max-side": self.max_side is None or self.max_side >= 8,
            "--limit": self.limit is None or self.limit > 0, "--max-retries": self.max_retries >= 0,
            "--max-pixels": self.max_pixels > 0,
        }
        bad = [flag for flag, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid value for {', '.join(bad)} (see --help)")
        if self.variants > 0:
            raise ValueError("--variants > 0 needs the repainter, which is not wired into the job yet")

    def output_settings(self) -> dict:
        """What decides the shards' bytes: the same values resume, any change refuses to."""
        keep = ("variants", "samples_per_shard", "seed", "max_side", "limit", "max_pixels", "shuffle")
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
    return p


def config_from_args(argv: list[str] | None = None) -> GenerateConfig:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return GenerateConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
