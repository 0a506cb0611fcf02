"""Constructed near-duplicates of real photos: the edits a library's copies of one shot
typically went through. Used by benchmarks/duplicates.py and the tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

KINDS = ("half", "q50", "crop5", "jitter")


def variants(img: Image.Image) -> dict[str, Image.Image]:
    """Half size, JPEG quality 50 (applied when saved), a 5% crop, a colour jitter."""
    w, h = img.size
    dx, dy = round(0.05 * w / 2), round(0.05 * h / 2)
    jitter = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1.15)).enhance(0.9))
    return {"half": img.resize((w // 2, h // 2), Image.BICUBIC),
            "q50": img,
            "crop5": img.crop((dx, dy, w - dx, h - dy)),
            "jitter": jitter.enhance(1.2)}


def make_set(photos: list[Path], out: Path) -> dict[str, str]:
    """Each photo (re-saved) and its variants under `out`; returns path -> group (its stem)."""
    group = {}
    for p in photos:
        img = ImageOps.exif_transpose(Image.open(p)).convert("RGB")
        orig = out / f"{p.stem}.jpg"
        img.save(orig, quality=95)
        group[str(orig)] = p.stem
        for name, v in variants(img).items():
            dst = out / f"{p.stem}-{name}.jpg"
            v.save(dst, quality=50 if name == "q50" else 90)
            group[str(dst)] = p.stem
    return group
