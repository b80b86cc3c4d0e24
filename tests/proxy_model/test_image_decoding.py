"""Bounded image decoding: bombs, truncated data, huge dimensions, odd modes, animations."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from idproxy.settings import load_settings
from proxy_model.errors import InvalidItemError
from proxy_model.vision import ImageLimits, decode_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid grey PNG of zeros: tiny on the wire, width × height pixels once decoded."""
    row = b"\0" * (1 + (width * bit_depth + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 22) // len(row))
    parts = []
    for start in range(0, height, rows_per_chunk):
        parts.append(packer.compress(row * min(rows_per_chunk, height - start)))
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height and whose data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    return image.getpixel(xy)


def test_a_png_decompression_bomb_is_refused_with_a_clear_reason():
    bomb = png_bomb(40_000, 40_000)  # 1.6 G pixels from a small file
    assert len(bomb) < 1 << 20  # small on the wire
    with pytest.raises(InvalidItemError, match="pixel limit|decompression bomb"):
        decode_image(bomb)


def test_the_pixel_limit_is_checked_before_decoding():
    # 5,000 × 5,000 is under PIL's own bomb threshold but over the configured limit; the
    # data is a few bytes, so any attempt to decode would fail as truncated instead
    with pytest.raises(InvalidItemError, match=r"5000x5000 = 25,000,000 pixels is over"):
        decode_image(png_header_only(5000, 5000), limits=ImageLimits(max_pixels=16_000_000))
    with pytest.raises(InvalidItemError, match="over the limit of 100"):
        decode_image(_encode(Image.new("RGB", (20, 20)), "PNG"), limits=ImageLimits(max_pixels=100))


@pytest.mark.parametrize("size", [(1, 20_000_000), (20_000_000, 1), (65535, 65535)])
def test_huge_declared_dimensions_are_refused(size):
    with pytest.raises(InvalidItemError, match="pixel"):
        decode_image(png_header_only(*size))


def test_a_gif_declaring_a_huge_screen_is_refused():
    small = _encode(Image.new("P", (4, 4)), "GIF")
    # patch the logical screen and the first frame's descriptor to 60,000 × 60,000
    data = bytearray(small)
    data[6:10] = struct.pack("<HH", 60_000, 60_000)
    at = data.index(b",")  # image descriptor
    data[at + 5 : at + 9] = struct.pack("<HH", 60_000, 60_000)
    with pytest.raises(InvalidItemError, match="pixel"):
        decode_image(bytes(data))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_files_are_dead_letter_reasons_not_crashes(fmt):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _encode(image, fmt)
    with pytest.raises(InvalidItemError, match="corrupt image"):
        decode_image(data[: len(data) // 2])


def test_formats_outside_the_allowed_list_are_refused_unread():
    bmp = _encode(Image.new("RGB", (8, 8), (10, 20, 30)), "BMP")
    with pytest.raises(InvalidItemError, match="format outside JPEG, PNG, GIF, WEBP"):
        decode_image(bmp)
    assert _pixel(decode_image(bmp, limits=ImageLimits(formats=("BMP",)))) == (10, 20, 30)
    png = _encode(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(InvalidItemError, match="format outside JPEG"):
        decode_image(png, limits=ImageLimits(formats=("JPEG",)))


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_encode(cmyk, "JPEG", quality=95))
    assert out.mode == "RGB" and out.size == (16, 16)
    r, g, b = _pixel(out, (8, 8))
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    ramp = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    data = _encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16-bit on disk
    out = decode_image(data)
    values = [_pixel(out, (x, 0))[0] for x in range(4)]
    assert values[0] == 0 and values[-1] == 255
    assert 60 <= values[1] <= 68 and 124 <= values[2] <= 131  # scaled by 1/257, not saturated


def test_palette_with_transparency_is_composited_on_white():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0] + [200, 10, 10] + [0, 0, 0] * 254)
    pal.putpixel((0, 0), 0)
    for fmt in ("PNG", "GIF"):
        data = _encode(pal, fmt, transparency=0)
        out = decode_image(data)
        assert out.mode == "RGB"
        assert _pixel(out, (0, 0)) == (255, 255, 255), fmt  # transparent -> white, not black
        assert _pixel(out, (2, 2)) == (200, 10, 10), fmt


def test_rgba_and_la_are_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = decode_image(_encode(rgba, "PNG"))
    assert _pixel(out, (0, 0)) == (255, 255, 255) and _pixel(out, (1, 1)) == (0, 0, 255)
    la = Image.new("LA", (4, 4), (0, 128))  # half-transparent black -> mid grey
    assert 120 <= _pixel(decode_image(_encode(la, "PNG")))[0] <= 135


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_give_their_first_frame(fmt):
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3  # really animated
    out = decode_image(data)
    r, g, b = _pixel(out, (8, 8))
    assert r > 200 and g < 40 and b < 40


def test_big_jpegs_decode_at_a_reduced_scale():
    big = Image.new("RGB", (4000, 3000), (30, 120, 200))
    data = _encode(big, "JPEG", quality=80)
    out = decode_image(data, limits=ImageLimits(draft_side=512))
    assert out.size == (1000, 750)  # the 1/4 DCT scale keeps both sides >= 512
    assert min(out.size) >= 512
    full = decode_image(data, limits=ImageLimits(draft_side=0))
    assert full.size == (4000, 3000)


def test_limits_come_from_settings(monkeypatch):
    monkeypatch.setenv("IDPROXY_WORKER_MAX_IMAGE_PIXELS", "1000")
    monkeypatch.setenv("IDPROXY_WORKER_IMAGE_FORMATS", '["png", "webp"]')
    limits = ImageLimits.from_settings(load_settings().worker)
    assert limits.max_pixels == 1000 and limits.formats == ("PNG", "WEBP")
    with pytest.raises(InvalidItemError, match="format outside PNG, WEBP"):
        decode_image(_encode(Image.new("RGB", (8, 8)), "JPEG"), limits=limits)
