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
