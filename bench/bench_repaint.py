"""The repainter's costs: the job's repainted samples/s vs a bare generator loop, and training steps/s.

    python bench/bench_repaint.py [--images 256] [--variants 4] [--size 64] [--rounds 3] [--paint-batch 16]

(1) Pipeline overhead. The job (`--repainter CKPT --repainter-steps 0`, 1 and 2 actors of 1 thread,
    one image per forward and `--paint-batch B` images per forward) reads, decodes, segments,
    paints N variants, encodes and writes shards. The bare loop calls only G
    on the same images, prepared beforehand (decoded, segmented, resized): the generator's own cost.
    Ray's cluster start is excluded; the actors' start and model load are included.
(2) Training steps/s of the repainter (one E/G, one D and one T update per step, resnet18 proxy
    task) at 32x32 and 64x64, batch 16, on this machine's threads.
Weights are random: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.demo_data import render_demo  # noqa: E402
from pipeline.repaint.config import RepainterConfig  # noqa: E402
from pipeline.repaint.data import resize_pair, to_model_inputs  # noqa: E402
from pipeline.repaint.paint import paint_variants, save_repainter, variant_seed  # noqa: E402
from pipeline.repaint.steps import RepainterNets, train_step  # noqa: E402
from pipeline.segment import make_segmenter  # noqa: E402


def bare_generator_rate(nets: RepainterNets, images: int, variants: int, size: int) -> float:
    """E, N code draws and G per image: nothing else."""
    segmenter = make_segmenter("demo")
    inputs = []
    for i in range(images):
        image = render_demo(0, i, 96)[0]
        small, labels = resize_pair(image, segmenter(image, {"source_id": f"demo/{i}"}), size)
        inputs.append(to_model_inputs(small[None], labels[None], nets.cfg.label_channels, nets.cfg.structure))
    E, G = nets.E.eval(), nets.G.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i, (x, channels) in enumerate(inputs):
            paint_variants(E, G, nets.cfg, x, channels, [variant_seed(0, str(i), v) for v in range(variants)])
    return images / (time.perf_counter() - start)


def job_rate(checkpoint: Path, out: Path, images: int, variants: int, size: int, workers: int,
             paint_batch: int) -> float:
    from pipeline.job import run_job
    from pipeline.job_config import GenerateConfig

    start = time.perf_counter()
    run_job(GenerateConfig(source=f"demo:{images}:96", out=str(out), workers=workers, variants=variants,
                           repainter=str(checkpoint), repainter_steps=0, repaint_size=size,
                           samples_per_shard=max(1, images // (2 * workers)), paint_batch=paint_batch,
                           progress=False))
    return images / (time.perf_counter() - start)


def job_rows(batch: int) -> list[tuple[int, int]]:  # (actors, images per forward)
    return [(1, 1), (1, batch), (2, batch)]


def training_rate(size: int, steps: int = 4, batch: int = 16) -> float:
    nets = RepainterNets(RepainterConfig(num_classes=10, task_warmup=0))
    x, labels = torch.randn(batch, 3, size, size), torch.zeros(batch, 17, size, size)
    labels[:, 0, :, : size // 2] = 1
    labels[:, 1, :, size // 2:] = 1
    target = torch.randint(0, 10, (batch,))
    train_step(nets, x, labels, target, step=0)  # warm-up
    start = time.perf_counter()
    for step in range(steps):
        train_step(nets, x, labels, target, step=step)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--variants", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paint-batch", type=int, default=16, help="images per forward in the batched job rows")
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # none written under ~/.ray
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench_repaint_"))
    ray_temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    torch.manual_seed(0)
    nets = RepainterNets(RepainterConfig(num_classes=6, label_channels=5))
    checkpoint = work / "repainter.pt"
    save_repainter(checkpoint, nets.cfg, nets.E, nets.G, step=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
             _temp_dir=ray_temp, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        rounds = []
        for r in range(args.rounds):  # interleaved, so machine noise hits all alike
            torch.set_num_threads(1)  # as one actor
            row = {"bare": bare_generator_rate(nets, args.images, args.variants, args.size)}
            for workers, batch in job_rows(args.paint_batch):
                row[workers, batch] = job_rate(checkpoint, work / f"out{r}-{workers}-{batch}", args.images,
                                               args.variants, args.size, workers, batch)
            rounds.append(row)
        torch.set_num_threads(os.cpu_count() or 1)
        train = {s: training_rate(s) for s in (32, 64)}
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)
    med = {k: statistics.median(row[k] for row in rounds) for k in rounds[0]}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}; median of {args.rounds} interleaved rounds [min-max]")
    print(f"{args.images} demo images of 96x96, {args.variants} variants each, painted at {args.size}x{args.size}")
    print(f"bare G loop, 1 thread       : {med['bare']:7.2f} img/s")
    for workers, batch in job_rows(args.paint_batch):
        ratios = [row[workers, batch] / row["bare"] for row in rounds]
        print(f"job, {workers} actor(s) x 1 thread, paint batch {batch:2d}: {med[workers, batch]:7.2f} img/s   "
              f"x{statistics.median(ratios):.2f} vs bare [{min(ratios):.2f}-{max(ratios):.2f}]")
    print(f"training, batch 16, {torch.get_num_threads()} threads: {train[32]:.3f} steps/s at 32x32, "
          f"{train[64]:.3f} steps/s at 64x64 (x{train[32] / train[64]:.1f} slower at 64)")


if __name__ == "__main__":
    main()
