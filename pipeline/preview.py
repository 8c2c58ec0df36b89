"""`preview.png` beside the shards: per row, an original, its label map and its variants.

So a person can see what a shard set holds before training on it; `python -m manifests show` points
at it. Read back from the written shards (not from memory), so it shows what is really stored.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import torch
import torchvision.utils
import webdataset as wds
from PIL import Image

from manifests import decode_image
from manifests.imageio import decode_label_map

PREVIEW_NAME = "preview.png"


def colourise(labels: np.ndarray) -> Image.Image:
    """A fixed colour per segment id (a hash of the id, so maps of one set are comparable)."""
    ids = labels.astype(np.uint32)
    rgb = np.stack([(ids * 97 + 40) % 256, (ids * 57 + 90) % 256, (ids * 151 + 10) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


PREVIEW_ROWS = 6
PREVIEW_SAMPLES = 4 * PREVIEW_ROWS  # read per shard: repainted samples may be sparse (--repaint-fraction)


def _samples(shard: str, count: int) -> list[dict[str, bytes]]:
    """The first `count` samples of a shard that carry variants."""
    samples = wds.WebDataset(shard, shardshuffle=False)
    return [s for s in itertools.islice(samples, count) if "seg.png" in s]


def preview_png(shard_paths: list[str], variants: int, rows: int = PREVIEW_ROWS, cell: int = 96) -> bytes | None:
    """The grid from the first shards' repainted samples, as PNG bytes (None if none has variants)."""
    samples: list[dict[str, bytes]] = []
    for path in shard_paths:
        samples += _samples(path, PREVIEW_SAMPLES)
        if len(samples) >= rows:
            break
    if not samples:
        return None
    tiles = []
    for sample in samples[:rows]:
        original = next(sample[f] for f in ("jpg", "png") if f in sample)
        row = [decode_image(original, "preview").image, colourise(decode_label_map(sample["seg.png"], "preview"))]
        row += [decode_image(sample[f"rp{v}.jpg"], "preview").image for v in range(variants)]
        tiles += [torch.from_numpy(np.array(im.convert("RGB").resize((cell, cell)))).permute(2, 0, 1)
                  for im in row]
    grid = torchvision.utils.make_grid(torch.stack(tiles), nrow=variants + 2, padding=2, pad_value=255)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, "PNG")
    return buffer.getvalue()
