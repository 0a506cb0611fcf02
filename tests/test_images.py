"""Safe image opening: every decoding case, on files the tests generate."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import ImageError, ImageTooLargeError
from retrieval.encoders.images import load_many, open_image


def save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_exif_orientation_applied(tmp_path):
    # 60 wide, 20 tall, left third red; orientation 6 means "rotate 90 CW to display"
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    p = save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    out = open_image(p)
    assert out.size == (20, 60)
    top = np.asarray(out)[:15].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60  # red band is now at the top


def test_palette_with_transparency_goes_over_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    img.paste(1, (0, 0, 4, 8))
    img.info["transparency"] = 0
    p = save(img, tmp_path / "pal.png", transparency=0)
    a = np.asarray(open_image(p))
    assert open_image(p).mode == "RGB"
    assert tuple(a[0, 7]) == (255, 255, 255)  # transparent -> white, not black
    assert tuple(a[0, 0]) == (200, 10, 10)


def test_rgba_composited(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 3] = 0
    p = save(Image.fromarray(a, "RGBA"), tmp_path / "alpha.png")
    assert (np.asarray(open_image(p)) == 255).all()


def test_cmyk_jpeg(tmp_path):
    p = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    out = open_image(p)
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_png_scaled_not_clipped(tmp_path):
    a = np.full((8, 8), 32768, np.uint16)
    p = save(Image.fromarray(a), tmp_path / "deep.png")
    assert Image.open(p).mode.startswith("I")
    v = np.asarray(open_image(p))
    assert v.shape == (8, 8, 3)
    assert 120 <= v.mean() <= 136  # half of full scale, not clipped to white


@pytest.mark.parametrize("mode,value", [("L", 77), ("1", 255), ("LA", (77, 255))])
def test_grey_modes(tmp_path, mode, value):
    p = save(Image.new(mode, (5, 5), value), tmp_path / f"g{mode}.png")
    out = np.asarray(open_image(p))
    assert out.shape == (5, 5, 3) and (out[..., 0] == out[..., 1]).all()


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    r, g, b = np.asarray(open_image(p)).reshape(-1, 3).mean(0)
    assert r > 200 and b < 50


def _png_with_header_size(path, width, height):
    """A 1x1 PNG whose IHDR claims another size: the header alone makes it a bomb."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_refused_from_header(tmp_path):
    p = _png_with_header_size(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageTooLargeError, match="bomb.png.*10,000,000,000 pixels"):
        open_image(p)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    p = tmp_path / f"cut.{fmt.lower()}"
    img.save(p, format=fmt)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ImageError, match=f"cut.{fmt.lower()}"):
        open_image(p)


@pytest.mark.parametrize("name,content,reason", [
    ("notes.jpg", b"this is text, not a photo\n", "not an image"),
    ("empty.jpg", b"", "not an image"),
])
def test_non_images(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageError, match=f"{name}: {reason}"):
        open_image(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageError, match="gone.jpg: no such file"):
        open_image(tmp_path / "gone.jpg")
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageError, match="x.jpg: is a directory"):
        open_image(tmp_path / "x.jpg")


def test_jpeg_draft_mode_decodes_smaller(tmp_path):
    p = save(Image.new("RGB", (2400, 1600), (10, 200, 30)), tmp_path / "big.jpg")
    small = open_image(p, min_side=224)
    assert 448 <= min(small.size) < 1600  # DCT-scaled, still >= 2x the network input
    assert open_image(p).size == (2400, 1600)


def test_load_many_keeps_order_and_reports_errors(tmp_path, demo_photos):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    paths = demo_photos[:5] + [bad] + demo_photos[5:8]
    out = list(load_many(paths, lambda p: open_image(p).size, workers=2, prefetch=3))
    assert [p for p, _ in out] == paths
    assert isinstance(out[5][1], ImageError) and "bad.jpg" in str(out[5][1])
    assert all(isinstance(r, tuple) for i, (_, r) in enumerate(out) if i != 5)


def test_exif_capture_time_and_camera_reported(tmp_path):
    from datetime import datetime

    img = Image.new("RGB", (30, 20), (5, 5, 5))
    exif = img.getexif()
    exif[0x0110] = "PhoneCam 12"
    exif[0x0112] = 6  # rotated: the upright size is reported
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 15:30:00"
    p = save(img, tmp_path / "exif.jpg", exif=exif)
    info = {}
    open_image(p, info=info)
    assert info["camera"] == "PhoneCam 12" and (info["width"], info["height"]) == (20, 30)
    assert info["taken_at"] == datetime(2021, 7, 4, 15, 30).timestamp()
    plain = {}
    open_image(save(Image.new("RGB", (4, 4)), tmp_path / "plain.png"), info=plain)
    assert plain["taken_at"] is None and plain["camera"] is None
