"""The safe decode: every bad file gets an error naming it; every conversion is announced."""

from __future__ import annotations

import numpy as np
import pytest

from manifests import ImageDecodeError, decode_image
from tests.badinputs import awkward_files, bad_files, jpeg_bytes, png_bytes

EXPECTED_ERRORS = {
    "truncated.jpg": "truncated or corrupt",
    "truncated.png": "truncated or corrupt",
    "empty.jpg": "empty file (0 bytes)",
    "page.jpg": "not a recognised image (looks like HTML/XML text)",
    "bomb.png": "400000000 pixels",
    "float.tiff": "32-bit float image is not supported",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_bad_files_raise_an_error_naming_the_file(name):
    data = bad_files()[name]
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, f"some/dir/{name}")
    assert str(info.value).startswith(f"some/dir/{name}: ")
    assert EXPECTED_ERRORS[name] in info.value.reason
    if name == "bomb.png":
        assert "bomb" in info.value.reason


EXPECTED_NOTES = {
    "cmyk.jpg": "CMYK converted to RGB",
    "gray16.png": "16-bit grayscale scaled to 8-bit",
    "rgb16.png": "16-bit per channel reduced to 8-bit",
    "gray.png": "grayscale expanded to RGB",
    "palette_alpha.png": "palette expanded to RGB, alpha channel dropped",
    "rotated.jpg": "EXIF orientation 6 applied",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_NOTES))
def test_awkward_files_decode_to_rgb_with_an_announced_conversion(name):
    decoded = decode_image(awkward_files()[name], name)
    assert decoded.image.mode == "RGB"
    assert any(EXPECTED_NOTES[name] in note for note in decoded.notes), decoded.notes
    assert not decoded.unchanged


def test_16bit_is_scaled_not_clipped():
    decoded = decode_image(awkward_files()["gray16.png"], "gray16.png")
    # 51400 >> 8 == 200; clipping to 255 would give 255
    assert np.asarray(decoded.image)[0, 0, 0] == 200


def test_exif_orientation_is_applied():
    decoded = decode_image(awkward_files()["rotated.jpg"], "rotated.jpg")
    assert decoded.image.size == (16, 24)  # stored 24x16, displayed rotated


def test_plain_rgb_files_are_unchanged():
    for data, fmt in ((jpeg_bytes(), "JPEG"), (png_bytes(), "PNG")):
        decoded = decode_image(data, "x")
        assert decoded.unchanged and decoded.format == fmt and decoded.image.size == (24, 16)


def test_pixel_cap_is_configurable():
    with pytest.raises(ImageDecodeError, match="above the cap of 100"):
        decode_image(png_bytes(), "small.png", max_pixels=100)


def test_an_animated_image_keeps_its_first_frame_and_says_so():
    import io

    from PIL import Image

    frames = [Image.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])  # an APNG
    decoded = decode_image(buffer.getvalue(), "animated.png")
    assert decoded.notes == ["3 frames: only the first kept"] and not decoded.unchanged
    assert decoded.image.getpixel((0, 0)) == (255, 0, 0)


def _tiff_48bit(width: int = 4, height: int = 2) -> bytes:
    """A minimal uncompressed little-endian TIFF with 16 bits per RGB channel (Pillow cannot write one)."""
    import struct

    pixels = (np.arange(width * height * 3, dtype="<u2") * 5000).tobytes()
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    bits_at = 8 + 2 + 12 * len(tags) + 4
    offsets = {258: bits_at, 273: bits_at + 6}
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        value = offsets.get(tag, value)
        ifd += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1 else \
            struct.pack("<HHII", tag, kind, count, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels


def test_a_48bit_tiff_is_reduced_with_a_note():
    decoded = decode_image(_tiff_48bit(), "deep.tif")
    assert decoded.image.mode == "RGB" and "16-bit per channel reduced to 8-bit" in decoded.notes
