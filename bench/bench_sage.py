"""Speed of train.sage's SAGE mixing vs the official canvas strategy and the naive reference.

    python bench/bench_sage.py

One process, one thread. Each mixing call times the whole mix (normalisation, shift search,
shifting, masks), given the saliency, permutation, lambda and candidate set (shared by all three
implementations, which also report whether they chose the same shifts). Then one training step of
timm's resnet18 on CIFAR-sized batches, SAGE vs plain.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

from sage_canvas import canvas_sage_mix  # noqa: E402
from sage_reference import reference_sage  # noqa: E402

from train.sage import SageMix, candidate_shifts, sage_forward_backward, sage_mix, saliency_from_grad  # noqa: E402


def seconds(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mixing_case(label: str, n: int, size: int, rand_pos: float, canvas_images: int, naive_images: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=gen)
    saliency = saliency_from_grad(torch.randn(n, 3, size, size, generator=gen))
    perm = torch.randperm(n, generator=gen)
    shifts = candidate_shifts(size, size, rand_pos, gen)
    print(f"({label}) {n}x3x{size}x{size}, rand_pos {rand_pos}: K = {len(shifts)} candidate shifts")

    fast = seconds(lambda: sage_mix(x, saliency, perm, 0.5, shifts), reps=5)
    _, _, chosen = sage_mix(x, saliency, perm, 0.5, shifts)
    print(f"    fast    {fast * 1e3:10.1f} ms per call")

    # The slow ones may run on the first m images only (paired among themselves), scaled by n / m.
    def subset(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x[:m], saliency[:m], perm if m == n else torch.randperm(m, generator=gen)

    xs, ss, ps = subset(canvas_images)
    start = time.perf_counter()
    _, _, canvas_chosen = canvas_sage_mix(xs, ss, ps, 0.5, shifts)
    canvas = (time.perf_counter() - start) * n / canvas_images
    note = "" if canvas_images == n else f" (timed on {canvas_images} images, scaled x{n // canvas_images})"
    _, _, fast_chosen = sage_mix(xs, ss, ps, 0.5, shifts)
    same = (canvas_chosen == fast_chosen).all(dim=1).sum().item()
    print(f"    canvas  {canvas * 1e3:10.1f} ms per call{note}; fast is {canvas / fast:.0f}x faster; "
          f"same shifts for {same}/{canvas_images} images (canvas sums in float32, like the official code)")

    if naive_images:
        xs, ss, ps = subset(naive_images)
        target = torch.zeros(naive_images, dtype=torch.long)
        start = time.perf_counter()
        *_, naive_chosen = reference_sage(xs, ss, ps, 0.5, shifts, target, 10)
        naive = (time.perf_counter() - start) * n / naive_images
        note = "" if naive_images == n else f" (timed on {naive_images} images, scaled x{n // naive_images})"
        _, _, fast_chosen = sage_mix(xs, ss, ps, 0.5, shifts)
        same = torch.equal(naive_chosen, fast_chosen)
        print(f"    naive   {naive * 1e3:10.1f} ms per call{note}; fast is {naive / fast:.0f}x faster; "
              f"identical shifts: {same}")
    if label == "1":
        assert torch.equal(chosen, sage_mix(x, saliency, perm, 0.5, shifts)[2])  # deterministic


def training_step_case(reps: int = 5) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    criterion = SoftTargetCrossEntropy()
    mixer = SageMix(num_classes=10, generator=torch.Generator().manual_seed(0))

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def sage(update_ratio: float) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            sage_forward_backward(model, criterion, x, y, mixer, update_ratio, 10)
            optimizer.step()
        return step

    print(f"(4) one training step, timm resnet18, batch 64x3x32x32, SGD, SageMix(rand_pos={mixer.rand_pos}); "
          f"median of {reps} after 2 warm-up steps")
    base = seconds(plain, reps, warmup=2)
    print(f"    plain step                 {base * 1e3:8.1f} ms")
    for update_ratio in (1.0, 0.5):
        t = seconds(sage(update_ratio), reps, warmup=2)
        print(f"    SAGE step, update_ratio {update_ratio}  {t * 1e3:8.1f} ms  = {t / base:.2f}x the plain step")
    mix_only = seconds(lambda: mixer(x, y, torch.randn_like(x)), reps)
    print(f"    of which the mixing itself  {mix_only * 1e3:8.1f} ms")


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}")
    started = time.perf_counter()
    mixing_case("1", 64, 32, 0.1, canvas_images=64, naive_images=64)
    mixing_case("2", 64, 32, 0.01, canvas_images=64, naive_images=64)
    mixing_case("3", 16, 224, 0.001, canvas_images=4, naive_images=2)
    training_step_case()
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
