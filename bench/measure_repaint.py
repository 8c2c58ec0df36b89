"""Does a shard set's repainting keep shapes and change textures? Measured on what the shards hold.

    python bench/measure_repaint.py SHARD_DIR [--size 64] [--limit 500] [--colour-cue]

The measures are `pipeline/repaint/quality.py`'s (the job records the same figures, on 64 repainted
samples read from the last shard backwards, in the manifest): boundary F-score and edge contrast of
the variants against the stored label map, with the original (ceiling) and an unrelated original
(floor), and colour distances
(variant vs original, variant vs variant). Also prints the repainter's training metrics from the
manifest (the proxy task's top-1 on held-out originals and their paintings). `--colour-cue` adds
`quality.colour_cue` on the same samples (a classification set): the top-1 a colour-histogram
classifier reaches on originals, and when trained on the variants, on variants and on originals.
`--proxy CHECKPOINT_DIR` adds the repainter's own proxy task T (from a Ray Train checkpoint folder
of its training: `repainter.pt` for the config, `state.pt` for T) on the same samples: its top-1 on
the originals and on every variant, so it can be measured on any shard set, a validation folder's
included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests import read_manifest  # noqa: E402
from pipeline.repaint.paint import load_task  # noqa: E402
from pipeline.repaint.quality import colour_cue, measure_variants, proxy_top1, read_repainted  # noqa: E402


def load_proxy(folder: Path):
    """T from a Ray Train checkpoint folder of the repainter's training (config from repainter.pt)."""
    if not (folder / "state.pt").is_file():
        raise SystemExit(f"--proxy {folder}: needs a checkpoint folder with repainter.pt and state.pt")
    return load_task(folder / "repainter.pt", folder / "state.pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shards", type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--colour-cue", action="store_true", help="also how much class colour alone carries")
    p.add_argument("--proxy", type=Path, metavar="CHECKPOINT_DIR",
                   help="also the proxy T's top-1 on originals and variants (a repainter/run/checkpoint_* folder)")
    args = p.parse_args()
    # last shard first, as the job measures: the repainter trained on the first images of the order
    urls = sorted((str(path) for path in args.shards.glob("shard-*.tar")), reverse=True)
    read = read_repainted(urls, args.size, args.limit)
    if read is None:
        raise SystemExit(f"{args.shards}: needs at least 2 repainted samples with 2 variants each")
    result = measure_variants(read["originals"], read["variants"], read["label_maps"])
    if args.colour_cue:
        if (read["labels"] < 0).any():
            raise SystemExit(f"{args.shards}: --colour-cue needs a classification set (a cls field per sample)")
        result["colour_cue_top1"] = colour_cue(read["originals"], read["variants"], read["labels"])
    if args.proxy:
        if (read["labels"] < 0).any():
            raise SystemExit(f"{args.shards}: --proxy needs a classification set (a cls field per sample)")
        result["proxy_top1"] = proxy_top1(load_proxy(args.proxy), read["originals"], read["variants"], read["labels"])
    manifest = read_manifest(args.shards)
    result["repainter_metrics"] = ((manifest.get("repainter") or {}).get("training") or {}).get("metrics")
    print(json.dumps(result, indent=1))
    if result.get("images"):
        f = result["boundary_f"]
        print(f"boundary F: variants {f['variant']:.3f}, original {f['original']:.3f}, unrelated original "
              f"{f['unrelated_original']:.3f}: {result['boundary_f_gap_closed']:.0%} of the gap closed; "
              f"colour distance variant-variant {result['colour_distance']['variant_vs_variant']:.1f}")


if __name__ == "__main__":
    main()
