"""The one safe image decode that producer and consumer share.

Rules (DESIGN §4): an allowlist of formats, a pixel cap checked from the header before any pixel
is decoded, decompression-bomb warnings turned into errors, truncated data is an error (we never
set LOAD_TRUNCATED_IMAGES), EXIF orientation applied, and every mode handled explicitly. Each
conversion is reported as a note so that nothing is converted silently.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM"]
DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class DecodedImage:
    image: Image.Image  # always mode RGB
    format: str  # the container format, e.g. "JPEG"
    notes: list[str] = field(default_factory=list)  # every conversion that was applied

    @property
    def unchanged(self) -> bool:
        """True when the pixels are exactly what the file holds, so its bytes can be kept."""
        return not self.notes


def _is_16bit_per_channel(img: Image.Image) -> bool:
    # Pillow reads 48/64-bit PNGs and TIFFs as 8-bit RGB(A) without saying so; the raw mode tells.
    raw_modes = [tile[3] for tile in getattr(img, "tile", []) if len(tile) > 3]
    raw_modes = [m[0] if isinstance(m, tuple) else m for m in raw_modes]
    # PNG: "RGB;16B"; TIFF: "RGB;16L", "RGB;16B", "RGBA;16N" ...
    return any(isinstance(m, str) and m.startswith("RGB") and ";16" in m for m in raw_modes)


_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")


def _may_carry_orientation(img: Image.Image) -> bool:
    # Parsing EXIF costs ~10 us per image; JPEG/PNG/WebP can only carry an orientation in these
    # blocks, while TIFF keeps it among its own tags, so TIFF is always parsed.
    return img.format not in ("JPEG", "PNG", "WEBP") or any(k in img.info for k in _ORIENTATION_SOURCES)


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Scale the full 16-bit range to 8 bits; never clip to 0..255.
        arr = np.asarray(img, dtype=np.uint32)
        if mode == "I" and arr.max(initial=0) > 65535:
            raise ValueError("32-bit integer image with values above 65535 is not supported")
        notes.append("16-bit grayscale scaled to 8-bit (>> 8)")
        gray = Image.fromarray((arr >> 8).astype(np.uint8), "L")
        return gray.convert("RGB")
    if mode == "F":
        raise ValueError("32-bit float image is not supported (convert it to 8 or 16 bit first)")
    if mode == "1":
        notes.append("1-bit image expanded to RGB")
    elif mode == "L":
        notes.append("grayscale expanded to RGB")
    elif mode == "LA":
        notes.append("grayscale expanded to RGB, alpha channel dropped")
    elif mode == "P":
        has_alpha = "transparency" in img.info or img.palette.mode == "RGBA"
        notes.append("palette expanded to RGB" + (", alpha channel dropped" if has_alpha else ""))
        img = img.convert("RGBA") if has_alpha else img
    elif mode in ("RGBA", "RGBa", "PA"):
        notes.append("alpha channel dropped")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB (naive, ICC profile ignored)")
    else:
        notes.append(f"mode {mode} converted to RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: Callable[[Image.Image], tuple[int, int] | None] | None = None,
) -> DecodedImage:
    """Decode `data` (the bytes of file `name`) to an RGB image, or raise ImageDecodeError.

    `draft`, for a single-frame JPEG stored upright, is called with the opened image before any pixel
    is decoded (its size is the header's); the size it returns, if any, is the least the caller needs, and the
    JPEG is decoded DCT-scaled by 1/2, 1/4 or 1/8 down to no less than it (PIL's draft mode). It is
    not called for other images (so `DecodedImage.image.size` tells what was decoded)."""
    if len(data) == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            head = data[:16].lstrip().lower()
            hint = " (looks like HTML/XML text)" if head.startswith((b"<", b"<!doctype")) else ""
            raise ImageDecodeError(
                name, f"not a recognised image{hint}; allowed formats: {', '.join(ALLOWED_FORMATS)}"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(name, f"decompression bomb refused: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(name, f"truncated or corrupt image header: {exc}") from None
        fmt = img.format or ""
        width, height = img.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                name, f"declares {width}x{height} = {width * height} pixels, above the cap of "
                f"{max_pixels} (a decompression-bomb guard)"
            )
        if width == 0 or height == 0:
            raise ImageDecodeError(name, f"declares an empty size {width}x{height}")
        notes: list[str] = []
        if _is_16bit_per_channel(img):
            notes.append("16-bit per channel reduced to 8-bit")
        frames = getattr(img, "n_frames", 1)  # animated GIF/PNG/WebP, multi-page TIFF
        if frames > 1:
            notes.append(f"{frames} frames: only the first kept")
        # EXIF is parsed only when a draft is asked for: decoding without one pays nothing for it.
        if draft is not None and fmt == "JPEG" and frames == 1 and (
                not _may_carry_orientation(img) or img.getexif().get(0x0112, 1) in (1, None)):
            if (least := draft(img)) is not None:
                img.draft(None, least)
        try:
            img.load()
            orientation = img.getexif().get(0x0112, 1) if _may_carry_orientation(img) else 1
            if orientation not in (1, None):
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied")
            rgb = _to_rgb(img, notes)
        except (OSError, SyntaxError) as exc:
            raise ImageDecodeError(name, f"truncated or corrupt image data: {exc}") from None
        except ValueError as exc:
            raise ImageDecodeError(name, str(exc)) from None
        return DecodedImage(image=rgb, format=fmt, notes=notes)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Encode deterministically: `jpg` at quality 95 without extra metadata, or `png`."""
    buf = io.BytesIO()
    if fmt == "jpg":
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    elif fmt == "png":
        image.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"cannot encode to {fmt!r}; use 'jpg' or 'png'")
    return buf.getvalue()


def encode_label_map(labels: np.ndarray) -> bytes:
    """A label map (H x W, values < 65536) as a 16-bit grayscale PNG, exactly."""
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError(f"a label map must be 2-D with values in 0..65535, got shape {labels.shape}")
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def decode_label_map(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The exact uint16 values of a label-map PNG (never scaled, unlike decode_image)."""
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        if img.width * img.height > max_pixels:
            raise ImageDecodeError(name, f"label map of {img.width}x{img.height} is above the pixel cap")
        img.load()
    except (OSError, SyntaxError, UnidentifiedImageError) as exc:
        raise ImageDecodeError(name, f"not a readable PNG label map: {exc}") from None
    if img.mode not in ("I;16", "I;16B", "I", "L"):
        raise ImageDecodeError(name, f"label map must be 8- or 16-bit grayscale, got mode {img.mode}")
    return np.asarray(img).astype(np.uint16)
