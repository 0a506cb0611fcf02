"""Safe photo opening: the one function the indexer and queries use to turn a file into RGB pixels."""

from __future__ import annotations

import io
import os
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.encoders.raw import RAW_SUFFIXES, NotRaw, open_raw
from retrieval.errors import ImageError, ImageTooLargeError

# 64 megapixels covers every camera and phone sold today; a bomb announces far more.
MAX_PIXELS = 64_000_000

# We check the pixel count ourselves before decoding; PIL's own guard would warn or raise
# with a message that does not name the file.
Image.MAX_IMAGE_PIXELS = None

try:  # HEIC/HEIF (iPhone photos) through libheif, bundled in the pillow-heif wheel
    from pillow_heif import register_heif_opener

    register_heif_opener(thumbnails=True)  # phones embed a ~320 px thumbnail: see _draft
    HEIF = True
except ImportError:
    HEIF = False

# AVIF is read by Pillow itself (11.3+ wheels bundle libavif); RAW by rawpy (raw.py)
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                            ".heic", ".heif", ".avif"}) | RAW_SUFFIXES
# formats a browser may not display: the server sends a JPEG rendition of these
NOT_FOR_BROWSERS = frozenset({".heic", ".heif", ".tif", ".tiff"}) | RAW_SUFFIXES


def open_image(path: str | os.PathLike, min_side: int = 0, max_pixels: int = MAX_PIXELS,
               data: bytes | None = None, info: dict | None = None) -> Image.Image:
    """Open a photo as an 8-bit RGB image, upright per its EXIF orientation.

    `min_side` lets JPEG decoding use draft mode (DCT scaling) so the shorter side is still
    at least `min_side` after decoding; 0 decodes at full size. Raises ImageError (naming the
    file) for anything that is not a readable photo, ImageTooLargeError for decompression bombs.
    `data` decodes bytes already read from `path`; `info`, if given, receives the original
    width, height and EXIF capture time and camera.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in RAW_SUFFIXES:
        try:
            return open_raw(path, data, min_side, max_pixels, info, open_image)
        except NotRaw:
            pass  # not a RAW LibRaw knows: PIL may still read it (a JPEG named .nef)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF/ICC; the photo is still fine
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                _check_pixels(path, im, max_pixels)
                if info is not None:
                    info.update(_exif_info(im))
                if min_side and im.format in ("JPEG", "HEIF"):
                    _draft(im, min_side)
                im.seek(0)  # first frame of an animation
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except UnidentifiedImageError:
        if suffix in (".heic", ".heif") and not HEIF:
            raise ImageError(path, "HEIC needs pillow-heif: pip install pillow-heif") from None
        raise ImageError(path, "not an image file PIL can read") from None
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not a photo") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError, Image.DecompressionBombError) as e:
        # PIL reports truncation and corrupt streams as OSError/SyntaxError/ValueError; its
        # AVIF decoder and pillow-heif as RuntimeError (found by tests/test_fuzz.py)
        raise ImageError(path, f"damaged or truncated image ({e})") from None


def _exif_info(im: Image.Image) -> dict:
    out = {"width": im.size[0], "height": im.size[1], "taken_at": None, "camera": None}
    try:
        exif = im.getexif()
        if exif.get(0x0112) in (5, 6, 7, 8):  # rotated 90 degrees: report the upright size
            out["width"], out["height"] = im.size[1], im.size[0]
        stamp = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)  # DateTimeOriginal, DateTime
        if isinstance(stamp, str):
            out["taken_at"] = datetime.strptime(stamp.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").timestamp()
        model = exif.get(0x0110)
        if isinstance(model, str) and model.strip("\x00 "):
            out["camera"] = model.strip("\x00 ")
    except Exception:  # broken EXIF never costs us the photo
        pass
    return out


def _check_pixels(path: Path, im: Image.Image, max_pixels: int) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(path, f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            path, f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}"
        )


def _draft(im: Image.Image, min_side: int) -> None:
    # JPEG: draft() picks the smallest DCT scale (1/2, 1/4, 1/8) whose result is still >= the
    # requested size; asking for twice the network input keeps resampling quality.
    # HEIF: draft() decodes the smallest embedded thumbnail at least that large (an iPhone
    # photo carries a 320x240 one: 10 ms instead of ~170 ms for the 12 MP image), if any.
    w, h = im.size
    factor = 2 if im.format == "JPEG" else 1
    scale = max(1.0, min(w, h) / (factor * min_side))
    im.draft("RGB", (int(w / scale), int(h / scale)))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited over white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    # PIL's convert("RGB") clips 16-bit values at 255 (a white image); scale instead.
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = max(float(a.max()), 1.0)
    elif im.mode.startswith("I;16") or a.max() > 255:
        top = 65535.0
    else:
        top = 255.0
    grey = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def is_photo_name(path: str | os.PathLike) -> bool:
    """True when the file name has one of the photo suffixes we index."""
    return Path(path).suffix.lower() in PHOTO_SUFFIXES


def load_many(paths, load, workers: int = 1, prefetch: int = 32):
    """Yield (path, result) in input order, where result is `load(path)` or the ImageError it
    raised. Decoding runs in `workers` threads ahead of the consumer (PIL releases the GIL
    while decoding), so it overlaps with encoding in the caller's thread."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def safe(path):
        try:
            return load(path)
        except ImageError as e:
            return e

    paths = iter(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for path in paths:
            pending.append((path, pool.submit(safe, path)))
            if len(pending) >= prefetch:
                break
        while pending:
            path, future = pending.popleft()
            nxt = next(paths, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(safe, nxt)))
            yield path, future.result()
