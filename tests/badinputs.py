"""Generators of bad (and awkward-but-valid) image files, written by the tests themselves."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(size=(24, 16), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def jpeg_bytes(image: Image.Image | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    (image or _rgb()).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(image: Image.Image | None = None) -> bytes:
    buf = io.BytesIO()
    (image or _rgb()).save(buf, format="PNG")
    return buf.getvalue()


def png_16bit_rgb(width=8, height=4) -> bytes:
    """A 48-bit RGB PNG (Pillow would silently read it as 8-bit)."""
    raw = b"".join(b"\x00" + struct.pack(">" + "H" * 3 * width, *([40000, 20000, 65535] * width))
                   for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny file whose header declares a huge image."""
    valid = png_bytes(_rgb((4, 4)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return valid[:16] + ihdr + crc + valid[33:]


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return jpeg_bytes(_rgb((24, 16)), exif=exif.tobytes())


def bad_files() -> dict[str, bytes]:
    """name -> bytes, for files that must be skipped with a reason."""
    good_jpeg, good_png = jpeg_bytes(), png_bytes()
    return {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "truncated.png": good_png[: len(good_png) // 2],
        "empty.jpg": b"",
        "page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "bomb.png": png_declaring(20000, 20000),
        "float.tiff": _float_tiff(),
    }


def _float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ones((4, 4), np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def awkward_files() -> dict[str, bytes]:
    """name -> bytes, for valid files that need an announced conversion."""
    gray16 = Image.fromarray(np.full((4, 6), 51400, np.uint16))
    palette = Image.new("P", (6, 4))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    return {
        "cmyk.jpg": jpeg_bytes(Image.new("CMYK", (6, 4), (0, 255, 255, 0))),
        "gray16.png": png_bytes(gray16),
        "rgb16.png": png_16bit_rgb(),
        "gray.png": png_bytes(Image.new("L", (6, 4), 128)),
        "palette_alpha.png": png_bytes(palette),
        "rotated.jpg": exif_rotated_jpeg(),
    }


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
