"""Real files in every format a library holds, made from demo photos: HEIC and AVIF (encoded by
pillow-heif / Pillow), and DNG camera RAW (the photo mosaicked to an RGGB Bayer pattern, written
by pidng, no embedded preview, so reading it means a real demosaic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# XYZ (D65) -> linear sRGB: with it as the DNG colour matrix, "camera space" is linear sRGB
XYZ_TO_SRGB = [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]


def exif_bytes(orientation: int = 1, taken: str | None = None, camera: str | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    if camera:
        exif[0x0110] = camera
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    return exif.tobytes()


def save_as(src: Path, dst: Path, quality: int = 85, exif: bytes | None = None) -> Path:
    """`src` re-encoded in the format named by `dst`'s suffix (jpg, png, heic, avif, dng; a name
    ending in .preview.dng gets a JPEG preview inside, as cameras write)."""
    img = Image.open(src).convert("RGB")
    fmt = dst.suffix.lower()
    if dst.name.endswith(".preview.dng"):
        return write_dng_with_preview(np.asarray(img), dst)
    if fmt == ".dng":
        return write_dng(np.asarray(img), dst)
    if fmt == ".heic":
        from pillow_heif import register_heif_opener

        register_heif_opener()  # also lets PIL save HEIC
    kwargs = {"exif": exif} if exif else {}
    if fmt in (".jpg", ".jpeg", ".heic", ".avif"):
        kwargs["quality"] = quality
    img.save(dst, **kwargs)
    return dst


def write_dng(rgb: np.ndarray, dst: Path, taken: str = "2021:07:04 12:30:00", model: str = "Fusion Test") -> Path:
    """A 12-bit uncompressed DNG of an 8-bit sRGB photo: linearised, one colour per pixel."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (CalibrationIlluminant, CFAPattern, DNGVersion, Orientation,
                            PhotometricInterpretation, PreviewColorSpace)

    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    lin = (rgb[:h, :w].astype(np.float64) / 255.0) ** 2.2
    bayer = np.empty((h, w), np.float64)
    bayer[0::2, 0::2], bayer[0::2, 1::2] = lin[0::2, 0::2, 0], lin[0::2, 1::2, 1]
    bayer[1::2, 0::2], bayer[1::2, 1::2] = lin[1::2, 0::2, 1], lin[1::2, 1::2, 2]
    t = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
        (Tag.Orientation, Orientation.Horizontal),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 12), (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 0), (Tag.WhiteLevel, 4095),
        (Tag.ColorMatrix1, [[round(v * 10000), 10000] for row in XYZ_TO_SRGB for v in row]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.Make, "Fusion"), (Tag.Model, model), (Tag.DateTime, taken),
        (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2),
        (Tag.PreviewColorSpace, PreviewColorSpace.sRGB)]:
        t.set(tag, value)
    r = RAW2DNG()
    r.options(t, path="", compress=False)
    r.convert(np.round(bayer * 4095).astype(np.uint16), filename=str(dst.with_suffix("")))
    return dst


def claim_size(data: bytes, width: int, height: int) -> bytes:
    """HEIF/AVIF bytes whose every `ispe` box (the image size the header announces) says
    width x height: a decompression bomb's header on a small file."""
    out = bytearray(data)
    at = out.find(b"ispe")
    while at >= 0:
        out[at + 8:at + 12] = width.to_bytes(4, "big")
        out[at + 12:at + 16] = height.to_bytes(4, "big")
        at = out.find(b"ispe", at + 4)
    return bytes(out)


def write_dng_with_preview(rgb: np.ndarray, dst: Path, taken: str = "2022:01:02 03:04:05",
                           model: str = "Fusion Preview") -> Path:
    """A DNG as cameras and converters write them: IFD 0 a full-size JPEG preview, its SubIFD
    the 12-bit RGGB mosaic (written by tifffile; its JPEG codec comes from imagecodecs)."""
    import tifffile

    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    rgb = np.ascontiguousarray(rgb[:h, :w])
    lin = (rgb.astype(np.float64) / 255.0) ** 2.2
    bayer = np.empty((h, w), np.uint16)
    bayer[0::2, 0::2], bayer[0::2, 1::2] = lin[0::2, 0::2, 0] * 4095, lin[0::2, 1::2, 1] * 4095
    bayer[1::2, 0::2], bayer[1::2, 1::2] = lin[1::2, 0::2, 1] * 4095, lin[1::2, 1::2, 2] * 4095
    matrix = [v for row in XYZ_TO_SRGB for x in row for v in (round(x * 10000), 10000)]
    with tifffile.TiffWriter(dst) as tif:
        tif.write(rgb, photometric="rgb", compression="jpeg", rowsperstrip=h, subfiletype=1, subifds=1,
                  extratags=[(50706, "B", 4, (1, 4, 0, 0), True), (271, "s", 0, "Fusion", True),
                             (272, "s", 0, model, True), (306, "s", 0, taken, True),
                             (50721, "2i", 9, matrix, True), (50778, "H", 1, 21, True)])
        tif.write(bayer, photometric=32803, subfiletype=0,
                  extratags=[(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True),
                             (50717, "I", 1, 4095, True)])
    return dst
