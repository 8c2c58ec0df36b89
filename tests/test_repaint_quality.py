"""A short real training of the repainter on the demo keeps the shapes and changes the colours.

No Ray here: the same `train_step` the Ray Train loop runs, on 128 demo images at 32 px. The
thresholds are the issue's goals for the demo (boundary F closes >= 70 % of the gap between an
unrelated image and the original; two variants of one image >= 40 apart in colour); a generator
that ignored its codes or painted over the layout would fail them. Deterministic on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.demo_data import MAX_OBJECTS, render_demo_layers
from pipeline.repaint.config import RepainterConfig
from pipeline.repaint.data import resize_pair, to_model_inputs
from pipeline.repaint.paint import paint_variants
from pipeline.repaint.quality import measure_variants
from pipeline.repaint.steps import RepainterNets, train_step


@pytest.mark.slow
def test_a_short_demo_training_keeps_shapes_and_changes_colours():
    torch.set_num_threads(2)
    pairs = [resize_pair(*render_demo_layers(0, i, 64)[::4], 32) for i in range(144)]
    images, maps = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    targets = np.array([render_demo_layers(0, i, 64)[1] for i in range(144)])
    torch.manual_seed(0)
    cfg = RepainterConfig(label_channels=MAX_OBJECTS + 2, num_classes=6, task_model="resnet10t", task_warmup=20)
    nets = RepainterNets(cfg)
    rng = np.random.default_rng(0)
    for step in range(100):
        idx = rng.choice(128, 8, replace=False)
        x, labels = to_model_inputs(images[idx], maps[idx], cfg.label_channels)
        train_step(nets, x, labels, torch.from_numpy(targets[idx]), step, torch.Generator().manual_seed(step))
    x, labels = to_model_inputs(images[128:], maps[128:], cfg.label_channels)
    with torch.no_grad():
        painted = paint_variants(nets.E.eval(), nets.G.eval(), cfg, x, labels, [1, 2])
    pixels = ((painted.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
    variants = np.stack(np.split(pixels, 2), 1)  # [N, 2, S, S, 3]
    quality = measure_variants(images[128:], variants, maps[128:])
    assert quality["boundary_f_gap_closed"] >= 0.7, quality
    assert quality["colour_distance"]["variant_vs_variant"] >= 40, quality


def _coloured_set(rng, n: int, colour_of_class: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Originals filled with their class's colour (+ noise); 3 variants each, painted in the class
    colour too (`colour_of_class`) or in colours drawn at random."""
    palette = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])
    labels = np.arange(n) % 3
    noise = lambda *shape: rng.integers(-25, 26, (*shape, 8, 8, 3))  # noqa: E731
    originals = (palette[labels][:, None, None] + noise(n)).clip(0, 255).astype(np.uint8)
    fills = (palette[labels][:, None] if colour_of_class else rng.integers(0, 256, (n, 3, 3)))
    variants = (fills[:, :, None, None] + noise(n, 3)).clip(0, 255).astype(np.uint8)
    return originals, variants, labels


def test_colour_cue_tells_class_colours_from_colour_free_variants():
    from pipeline.repaint.quality import colour_cue, colour_histograms

    rng = np.random.default_rng(0)
    originals, keeping, labels = _coloured_set(rng, 150, colour_of_class=True)
    assert np.allclose(colour_histograms(keeping).sum(-1), 1.0)
    kept = colour_cue(originals, keeping, labels)
    assert kept["images"] == 30 and kept["chance"] == pytest.approx(100 / 3)
    assert kept["originals_on_originals"] == 100.0
    assert kept["variants_on_originals"] == 100.0  # the variants teach the originals' class colours
    _, free, _ = _coloured_set(rng, 150, colour_of_class=False)
    freed = colour_cue(originals, free, labels)
    assert freed["originals_on_originals"] == 100.0
    assert freed["variants_on_variants"] < 55 and freed["variants_on_originals"] < 60
    assert colour_cue(originals, free, labels) == freed  # deterministic
