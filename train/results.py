"""An experiment's tables: results.csv (one row per run and evaluation set), results.md and results.png.

`results.md` is computed from `results.csv` alone (`python -m train.results OUT` rebuilds it), so
the table always says what the CSV holds: per fraction and evaluation set, each arm's mean +- sample
standard deviation over seeds, and its difference to `vanilla` with a paired 95 % interval
(Student's t over the seeds both arms ran; with one seed there is no interval).
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

FIELDS = ("arm", "seed", "fraction", "eval_set", "top1")
# Student's t, two-sided 95 %, by degrees of freedom (1-30); beyond, the normal 1.96.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
       2.045, 2.042)


def write_results(rows: list[dict], out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_tables(out)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{"arm": r["arm"], "seed": int(r["seed"]), "fraction": float(r["fraction"]),
                 "eval_set": r["eval_set"], "top1": float(r["top1"])} for r in csv.DictReader(f)]


def paired_interval(diffs: list[float]) -> tuple[float, float | None]:
    """(mean difference, half-width of its 95 % interval, None with fewer than 2 pairs)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, None
    t = T95[len(diffs) - 2] if len(diffs) - 1 <= len(T95) else 1.96
    return mean, t * statistics.stdev(diffs) / len(diffs) ** 0.5


def summarise(rows: list[dict]) -> dict:
    """{(fraction, eval_set): {arm: {seed: top1}}}."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        table[(r["fraction"], r["eval_set"])][r["arm"]][r["seed"]] = r["top1"]
    return table


def markdown(rows: list[dict]) -> str:
    lines = ["# Results", "", "top-1 (%) on the validation set and its shifted copies; mean +- std over seeds; "
             "difference to vanilla with a paired 95 % interval.", ""]
    for (fraction, eval_set), arms in sorted(summarise(rows).items(), key=lambda kv: (kv[0][0], kv[0][1] != "clean",
                                                                                      kv[0][1])):
        lines += [f"## fraction {fraction:g}, {eval_set}", "", "| arm | seeds | top-1 | vs vanilla |",
                  "| --- | ---: | ---: | ---: |"]
        base = arms.get("vanilla", {})
        for arm, by_seed in arms.items():
            values = list(by_seed.values())
            spread = f" +- {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            paired = [by_seed[s] - base[s] for s in sorted(by_seed) if s in base]
            diff = "" if arm == "vanilla" or not paired else _difference(paired)
            lines.append(f"| {arm} | {len(values)} | {statistics.mean(values):.1f}{spread} | {diff} |")
        lines.append("")
    return "\n".join(lines)


def _difference(diffs: list[float]) -> str:
    mean, half = paired_interval(diffs)
    return f"{mean:+.1f}" if half is None else f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"


def plot(rows: list[dict], path: Path) -> bool:
    """A bar chart of top-1 per arm and evaluation set, one panel per fraction; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    table = summarise(rows)
    fractions = sorted({f for f, _ in table})
    eval_sets = sorted({e for _, e in table}, key=lambda e: (e != "clean", e))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, len(fractions), figsize=(4 + 2 * len(eval_sets) * len(fractions), 4), squeeze=False)
    width = 0.8 / len(arms)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        for i, arm in enumerate(arms):
            values = [list(table[(fraction, e)].get(arm, {}).values()) for e in eval_sets]
            means = [statistics.mean(v) if v else 0 for v in values]
            errors = [statistics.stdev(v) if len(v) > 1 else 0 for v in values]
            ax.bar([j + i * width for j in range(len(eval_sets))], means, width, yerr=errors, label=arm, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(eval_sets))], eval_sets, rotation=30)
        ax.set_title(f"fraction {fraction:g}")
        ax.set_ylabel("top-1 (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_tables(out: Path) -> None:
    rows = read_rows(out / "results.csv")
    (out / "results.md").write_text(markdown(rows) + "\n")
    if not plot(rows, out / "results.png"):
        print("results.png not drawn: matplotlib is not installed", file=sys.stderr)


if __name__ == "__main__":
    write_tables(Path(sys.argv[1]))
