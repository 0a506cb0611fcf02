"""Camera RAW files through rawpy (LibRaw): the embedded JPEG preview when it is large enough
(fast: no demosaic), else a half-size demosaic; capture time and camera from the preview's
EXIF or the file's own TIFF directory. open_image in images.py is the only caller."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin

from retrieval.errors import ImageError, ImageTooLargeError

RAW_SUFFIXES = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"})
MIN_PREVIEW_SIDE = 320  # smaller embedded previews (old cameras' thumbnails) are not used
# LibRaw's flip codes -> the PIL transpose that makes the photo upright
FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


class NotRaw(Exception):
    """LibRaw does not recognise the file: let PIL try it (a JPEG named .nef, say)."""


def open_raw(path: Path, data: bytes | None, min_side: int, max_pixels: int, info: dict | None,
             open_image) -> Image.Image:
    try:
        import rawpy
    except ImportError:
        raise ImageError(path, "camera RAW needs rawpy: pip install rawpy") from None
    source = io.BytesIO(data) if data is not None else str(path)
    try:
        with rawpy.imread(source) as raw:
            s = raw.sizes
            upright = (s.height, s.width) if s.flip in (5, 6) else (s.width, s.height)
            if s.raw_width * s.raw_height > 4 * max_pixels:  # a half-size demosaic is a quarter of it
                raise ImageTooLargeError(path, f"{s.raw_width}x{s.raw_height} sensor is over the limit of "
                                               f"{4 * max_pixels:,} pixels")
            meta = {"width": upright[0], "height": upright[1], "taken_at": None, "camera": None}
            img = _preview(raw, path, min_side, max_pixels, meta, open_image, s.flip)
            if img is None:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)  # applies the flip
                img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    except (ImageError, NotRaw):
        raise
    except rawpy.LibRawFileUnsupportedError:
        raise NotRaw() from None
    except (rawpy.LibRawError, OSError, ValueError, MemoryError) as e:
        raise ImageError(path, f"damaged or truncated RAW file ({type(e).__name__}: {e})") from None
    if info is not None:
        own = {"taken_at": None, "camera": None}  # the file's own tags first: LibRaw's preview
        _tiff_meta(data if data is not None else _head(path), own)  # EXIF shortens the model
        info.update(meta, **{k: v for k, v in own.items() if v is not None})
    return img


def _head(path: Path, size: int = 1 << 20) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _preview(raw, path, min_side, max_pixels, meta, open_image, flip):
    """The embedded JPEG preview, upright, if there is one at least MIN_PREVIEW_SIDE (and
    min_side) on its shorter side; None otherwise."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    pinfo: dict = {}
    try:
        with Image.open(io.BytesIO(bytes(thumb.data))) as probe:
            oriented = probe.getexif().get(0x0112, 1) != 1
            if min(probe.size) < max(MIN_PREVIEW_SIDE, min_side):
                return None
        img = open_image(path, min_side, max_pixels, data=bytes(thumb.data), info=pinfo)
    except (ImageError, OSError, SyntaxError, ValueError):
        return None  # a broken preview: demosaic instead
    if not oriented and flip in FLIPS:  # the preview follows the sensor, not the camera's pose
        img = img.transpose(FLIPS[flip])
    meta["taken_at"], meta["camera"] = pinfo.get("taken_at"), pinfo.get("camera")
    return img


def _tiff_meta(head: bytes, meta: dict) -> None:
    """Capture time and camera from a TIFF-based RAW's first directory and its EXIF directory
    (DNG, CR2, NEF, ARW, ORF, RW2); other files are left as they are."""
    if head[:4] not in (b"II*\x00", b"MM\x00*", b"IIRO", b"IIU\x00"):
        return
    try:
        f = io.BytesIO(head)
        ifd = TiffImagePlugin.ImageFileDirectory_v2(f.read(8))
        f.seek(ifd.next)
        ifd.load(f)
        stamp = None
        if 34665 in ifd:  # EXIF sub-directory
            exif = TiffImagePlugin.ImageFileDirectory_v2(head[:8])
            f.seek(ifd[34665])
            exif.load(f)
            stamp = exif.get(36867)
        stamp = stamp or ifd.get(36867) or ifd.get(306)
        if meta["taken_at"] is None and isinstance(stamp, str):
            meta["taken_at"] = datetime.strptime(stamp.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").timestamp()
        model = ifd.get(272)
        if meta["camera"] is None and isinstance(model, str) and model.strip("\x00 "):
            meta["camera"] = model.strip("\x00 ")
    except Exception:  # broken metadata never costs us the photo
        pass
