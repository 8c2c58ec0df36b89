"""What FFCV and DALI do that applies on a CPU, for the classification trainer's training samples.

- **The crop before the decode.** The random-resized crop is drawn on the size in the image's header,
  before any pixel is decoded, and a JPEG much larger than the crop's output is decoded DCT-scaled
  (PIL's draft mode: 1/2, 1/4 or 1/8, never below what the crop needs). It pays where the crop is
  small next to the stored image (a 640 px JPEG cropped to 64 px: every crop drafted in the test);
  at 224 px from 640 px few crops are (bench/bench_loader.py: 1.07x). The draws are timm's own, in timm's order, so the
  crop boxes and flips are those of `timm.data.create_transform` for the same seed.
- **uint8 until the batch.** Samples leave the loader's workers as uint8 (a quarter of the bytes
  through shared memory); `BatchNormalize` converts and normalises the whole batch once, on the
  training device, with the arithmetic of torchvision's ToTensor + Normalize per image, so the
  values are bit for bit the same (timm's `PrefetchLoader` also normalises per batch).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.functional as F
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import Compose


class BatchNormalize:
    """uint8 [B, C, H, W] -> float (x / 255 - mean) / std; anything else passes unchanged."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        x = x.float().div_(255)  # torchvision's to_tensor
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))  # its Normalize


class CropFirstDecode:
    """The training transform's output, with its random-resized crop decided on
    the header's size and the JPEG decoded no larger than that crop needs."""

    def __init__(self, transform: Compose, min_reduction: int = 2):
        first = transform.transforms[0]
        if not isinstance(first, RandomResizedCropAndInterpolation):
            raise ValueError(f"the transform must start with timm's random-resized crop, not {first}")
        self.crop, self.rest = first, Compose(transform.transforms[1:])
        self.min_reduction = min_reduction  # below 2x there is no DCT scale to use

    def _least_size(self, size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, int] | None:
        """The smallest whole-image size at which the crop box still holds the output's pixels."""
        (out_h, out_w), (_, _, h, w) = self.crop.size, box
        factor = max(out_w / w, out_h / h)
        if factor * self.min_reduction > 1:
            return None
        return math.ceil(size[0] * factor), math.ceil(size[1] * factor)

    def __call__(self, read: Callable[..., Image.Image]) -> torch.Tensor | Image.Image:
        """`read(draft=...)` decodes the sample's image (train/stream.py's `read_image`)."""
        drawn: dict = {}

        def draft(header: Image.Image) -> tuple[int, int] | None:  # opened, not decoded: only its size is read
            drawn["box"] = self.crop.get_params(header, self.crop.scale, self.crop.ratio)
            drawn["size"] = header.size
            return self._least_size(header.size, drawn["box"])

        image = read(draft=draft)
        if "box" not in drawn:  # not a JPEG we could draft: the same draw on the decoded image
            drawn["box"], drawn["size"] = self.crop.get_params(image, self.crop.scale, self.crop.ratio), image.size
        interpolation = self.crop.interpolation
        if isinstance(interpolation, (tuple, list)):
            interpolation = random.choice(interpolation)
        return self.rest(_resized_crop(image, drawn["box"], drawn["size"], self.crop.size, interpolation))


def _resized_crop(image: Image.Image, box: tuple[int, int, int, int], drawn_on: tuple[int, int],
                  out: tuple[int, int], interpolation) -> Image.Image:
    """The box drawn on `drawn_on` (the header's size), cut from `image` (maybe DCT-scaled)."""
    top, left, h, w = box
    sx, sy = image.size[0] / drawn_on[0], image.size[1] / drawn_on[1]
    if sx == sy == 1:
        return F.resized_crop(image, top, left, h, w, list(out), interpolation)
    # PIL's resize takes a float box: the crop keeps its exact place at the reduced scale.
    region = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return image.resize((out[1], out[0]), F.pil_modes_mapping[interpolation], box=region)
