"""`python -m manifests verify|show PATH`: check or summarise a shard set."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from .manifest import ManifestError, manifest_path, read_manifest, verify_shard_set


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m manifests", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check every shard's size, sha256 and sample count")
    verify.add_argument("path", help="a shard-set folder or its manifest.json")
    verify.add_argument("--no-sha256", action="store_true", help="skip hashing (size+count only)")
    show = sub.add_parser("show", help="print a readable summary of a shard set")
    show.add_argument("path", help="a shard-set folder or its manifest.json")
    return parser


def verify(path: str, check_sha256: bool = True) -> int:
    problems = verify_shard_set(path, check_sha256=check_sha256)
    manifest = read_manifest(path)
    if problems:
        bad = sorted({p.shard for p in problems})
        for problem in problems:
            print(f"BAD {problem}")
        print(f"{len(bad)} of {len(manifest['shards'])} shards failed verification")
        return 1
    totals = manifest["totals"]
    print(f"OK {len(manifest['shards'])} shards, {totals['samples']} samples, "
          f"{totals['bytes']} bytes verified ({manifest_path(path)})")
    return 0


def show(path: str) -> int:
    m = read_manifest(path)
    t, src = m["totals"], m["source"]
    lines = [
        f"shard set   {manifest_path(path)}",
        f"format      {m['format']} v{m['format_version']}",
        f"source      {src['kind']}  {src.get('root', '')}",
        f"inputs      {t['inputs']} = {t['samples']} written + {t['skipped']} skipped",
        f"shards      {t['shards']} ({t['bytes'] / 1e6:.1f} MB)",
        f"boxes       {t.get('boxes', 0)}",
        f"variants    {m['variants']} per sample",
        f"seed        {m['seed']}  ({m['seed_rule']})",
    ]
    classes = m.get("classes") or []
    if classes:
        shown = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
        lines.append(f"classes     {shown}")
    reasons = Counter(s["reason"].split(":")[0] for s in m["skipped"])
    for reason, n in reasons.most_common():
        lines.append(f"skipped     {n:6d}  {reason}")
    for note, n in sorted(m.get("conversions", {}).items()):
        lines.append(f"converted   {n:6d}  {note}")
    prov = m["provenance"]
    lines.append(f"code        git {prov.get('git_revision', 'unknown')}")
    lines.append("packages    " + ", ".join(f"{k} {v}" for k, v in sorted(prov["packages"].items())))
    if m.get("segmenter"):
        lines.append(f"segmenter   {m['segmenter']['name']} {m['segmenter']['params']}")
    if m.get("repainter"):
        r = m["repainter"]
        lines.append(f"repainter   sha256 {r['sha256'][:16]}..  step {r['step']}  painted at {r['repaint_size']}px"
                     f"  fraction {r['repaint_fraction']}  new region codes: {r.get('variant_latent', 'prior')}"
                     f" (style bank of {r.get('style_bank', 0)})"
                     f"  G sees: {(r.get('config') or {}).get('structure', 'segments')}")
        if trained_on := ((r.get("training") or {}).get("metrics") or {}).get("trained_on"):
            lines.append(f"trained on  {trained_on} (another CPU ISA or a GPU trains other weights)")
        config = r.get("config") or {}
        lines += _quality_lines(r.get("quality") or {}, (config.get("keep_prob"), config.get("train_latent", "prior")),
                                (r.get("region_keep_prob"), r.get("variant_latent", "prior")))
    if m.get("preview"):
        lines.append(f"preview     {str(manifest_path(path)).rsplit('/', 1)[0]}/{m['preview']}")
    print("\n".join(lines))
    return 0


def _quality_lines(q: dict, trained: tuple | None = None, painting: tuple | None = None) -> list[str]:
    """The repainter's own measurements of its variants (pipeline/repaint/quality.py). The proxy's
    figures come from its training, on paintings made as in training: `trained` and `painting` are
    (region keep-prob, source of new codes) of those and of the shards' variants."""
    lines = []
    if q.get("images"):
        f, c = q["boundary_f"], q["colour_distance"]
        closed = q.get("boundary_f_gap_closed")
        lines.append(f"variants    boundary F {f['variant']:.3f} (original {f['original']:.3f}, unrelated image "
                     f"{f['unrelated_original']:.3f}; {'n/a' if closed is None else f'{closed:.0%}'} of the gap "
                     f"closed) on {q['images']} images at {q['size']}px")
        lines.append(f"variants    colour distance to the original {c['variant_vs_original']:.1f}, "
                     f"between two variants {c['variant_vs_variant']:.1f} (mean per pixel, 0-255)")
    if "proxy_top1" in q:  # measured on the shards' own originals and variants
        p = q["proxy_top1"]
        mean = sum(p["variants"]) / len(p["variants"])
        lines.append(f"proxy task  top-1 on the measured originals {p['originals']:.1%}, on their variants {mean:.1%} "
                     f"({mean / p['originals']:.2f}x; mean of {len(p['variants'])})" if p["originals"] else
                     f"proxy task  top-1 on the measured originals 0.0%, on their variants {mean:.1%}")
        if p.get("may_include_training_images"):
            lines.append("            (a set this small: T may have trained on some of these originals)")
    if "proxy_acc_real" in q:
        lines.append(f"proxy task  in training, top-1 on held-out originals {q['proxy_acc_real']:.1%}, "
                     f"on their variants {q.get('proxy_acc_painted', float('nan')):.1%}")
        if trained and painting and trained != painting:
            lines.append(f"            (variants painted as in training, region keep-prob {trained[0]}, new codes "
                         f"{trained[1]}; the shards' variants: {painting[0]}, {painting[1]})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.command == "verify":
            return verify(args.path, check_sha256=not args.no_sha256)
        return show(args.path)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
