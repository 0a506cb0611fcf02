"""Every photo format a real library holds, on real files made from the demo photos: HEIC and
AVIF decode close to their source with EXIF orientation and capture time; DNG camera RAW is
demosaicked by rawpy; a folder mixing JPEG, HEIC, AVIF, PNG and DNG indexes every photo and
each is found by its caption; a RAW beside its JPEG shows once; hostile versions are skipped
with a reason."""

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from indexer.run import index_paths
from retrieval.cli import main
from retrieval.encoders.images import is_photo_name, open_image
from retrieval.errors import ImageError, ImageTooLargeError
from retrieval.model.runtime import Runtime
from retrieval.query.search import open_searcher
from retrieval.data.datasets import load_dataset
from tests.photo_formats import claim_size, exif_bytes, save_as
from tests.serving import get, running_server

FORMATS = (".jpg", ".heic", ".avif", ".png", ".dng")


def pixels(img, size):
    return np.asarray(img.convert("RGB").resize(size), np.float64)


@pytest.mark.parametrize("suffix,max_diff", [(".heic", 6), (".avif", 6), (".png", 0.01)])
def test_heic_avif_decode_close_to_the_source(tmp_path, demo_photos, suffix, max_diff):
    src = demo_photos[0]
    want = pixels(Image.open(src), (160, 120))
    got = open_image(save_as(src, tmp_path / f"p{suffix}"))
    assert got.mode == "RGB" and got.size == Image.open(src).size
    assert np.abs(pixels(got, (160, 120)) - want).mean() < max_diff


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_exif_orientation_and_capture_time(tmp_path, demo_photos, suffix):
    src = demo_photos[0]
    w, h = Image.open(src).size
    path = save_as(src, tmp_path / f"r{suffix}", exif=exif_bytes(6, "2023:05:06 07:08:09", "Phone 15"))
    info = {}
    img = open_image(path, info=info)
    assert img.size == (h, w) and (info["width"], info["height"]) == (h, w)  # upright: rotated 90
    assert info["taken_at"] == datetime(2023, 5, 6, 7, 8, 9).timestamp() and info["camera"] == "Phone 15"


def test_dng_preview_is_decoded_instead_of_the_mosaic(tmp_path, demo_photos):
    src = demo_photos[0]
    info = {}
    img = open_image(save_as(src, tmp_path / "p.preview.dng"), min_side=224, info=info)
    assert img.size == Image.open(src).size  # the full-size preview, not a half-size demosaic
    assert np.abs(pixels(img, (160, 120)) - pixels(Image.open(src), (160, 120))).mean() < 6
    assert info["taken_at"] == datetime(2022, 1, 2, 3, 4, 5).timestamp() and info["camera"] == "Fusion Preview"


def test_dng_is_demosaicked_with_its_capture_time(tmp_path, demo_photos):
    src = demo_photos[0]
    info = {}
    img = open_image(save_as(src, tmp_path / "p.dng"), info=info)
    w, h = Image.open(src).size
    assert (info["width"], info["height"]) == (w, h) and img.size == (w // 2, h // 2)  # half-size demosaic
    a, b = pixels(Image.open(src), (160, 120)), pixels(img, (160, 120))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert info["taken_at"] == datetime(2021, 7, 4, 12, 30).timestamp() and info["camera"] == "Fusion Test"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, demo_dir):
    """The 48 demo photos, each saved in one of five formats (round robin), with captions.jsonl
    pointing at the new files; plus one shot as both RAW and JPEG."""
    root = tmp_path_factory.mktemp("mixed")
    ds = load_dataset(demo_dir)
    lines, new_name = [], {}
    for n, name in enumerate(ds.images):
        src = demo_dir / name
        dst = root / (Path(name).stem + FORMATS[n % len(FORMATS)])
        save_as(src, dst)
        new_name[n] = dst.name
    for c in ds.captions:
        lines.append(json.dumps({"image": new_name[c.image], "caption": c.text}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    pair = next(n for n in new_name if new_name[n].endswith(".jpg"))
    save_as(demo_dir / ds.images[pair], root / (Path(new_name[pair]).stem + ".dng"))
    s = index_paths([root], root / "lib", runtime=Runtime())
    return root, s, new_name[pair]


def test_every_format_indexes_and_is_found_by_its_caption(mixed):
    root, s, _ = mixed
    assert s["skipped"] == [] and s["photos"] == 49
    searcher = open_searcher(root / "lib")
    ds = load_dataset(root)
    found = {f: [] for f in FORMATS}
    for c in ds.captions:
        want = ds.images[c.image]
        top = [Path(h.path).name for h in searcher.text(c.text, k=10).hits]
        top += [Path(a).name for h in searcher.text(c.text, k=10).hits for a in h.also]
        found[Path(want).suffix].append(want in top)
    for f, hits in found.items():  # every format is found about as well as the JPEG photos
        assert np.mean(hits) >= 0.7, (f, np.mean(hits))


def test_raw_and_jpeg_of_one_shot_show_once(mixed):
    root, _, jpeg = mixed
    ds = load_dataset(root)
    caption = next(c.text for c in ds.captions if ds.images[c.image] == jpeg)
    hits = open_searcher(root / "lib").text(caption, k=10).hits
    names = [Path(h.path).name for h in hits]
    raw = Path(jpeg).stem + ".dng"
    assert (jpeg in names) != (raw in names)  # exactly one of the two is listed...
    h = hits[names.index(jpeg if jpeg in names else raw)]
    assert [Path(a).name for a in h.also] == [raw if jpeg in names else jpeg]  # ...knowing the other
    assert [x.rank for x in hits] == list(range(1, len(hits) + 1))
    # the shot's share is both files' (the chance it is the photo described): with every
    # candidate listed, the shares still add up to 1
    every = open_searcher(root / "lib").text(caption, k=32, candidates=32).hits
    assert len(every) == 31 and abs(sum(x.share for x in every) - 1) < 1e-6


def test_server_sends_a_jpeg_rendition_of_heic_and_raw(mixed):
    root, _, _ = mixed
    searcher = open_searcher(root / "lib")
    with searcher.lib.session() as s:
        from sqlalchemy import select

        from retrieval.store.meta import Photo

        ids = dict(s.execute(select(Photo.path, Photo.id)).all())
    heic = next(i for p, i in ids.items() if p.endswith(".heic"))
    avif = next(i for p, i in ids.items() if p.endswith(".avif"))
    with running_server(root / "lib") as base:
        status, body = get(f"{base}/api/photo/{heic}")
        assert status == 200 and body[:2] == b"\xff\xd8"  # JPEG, not HEIC
        status, body = get(f"{base}/api/photo/{avif}")
        assert status == 200 and body[4:12] == b"ftypavif"  # browsers show AVIF as it is
        status, body = get(f"{base}/api/thumb/{heic}")
        assert status == 200 and body[:2] == b"\xff\xd8"


def test_hostile_versions_are_skipped_with_a_reason(tmp_path, demo_photos):
    src = demo_photos[0]  # 640x480: no clean-aperture box, so `ispe` is the size HEIF reports
    good = {f: save_as(src, tmp_path / f"good{f}") for f in (".heic", ".avif", ".dng")}
    bad = tmp_path / "bad"
    bad.mkdir()
    for f, p in good.items():
        data = p.read_bytes()
        (bad / f"truncated{f}").write_bytes(data[: len(data) // 3])
        (bad / f"empty{f}").write_bytes(b"")
        (bad / f"noise{f}").write_bytes(np.random.default_rng(0).bytes(4096))
    for f in (".heic", ".avif"):
        (bad / f"bomb{f}").write_bytes(claim_size(good[f].read_bytes(), 30000, 30000))
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        open_image(bad / "bomb.heic")
    # wrong extensions: a HEIC named .jpg and a JPEG named .nef are still photos
    ok = tmp_path / "ok"
    ok.mkdir()
    shutil.copy(good[".heic"], ok / "actually-heic.jpg")
    shutil.copy(src, ok / "actually-jpeg.nef")
    for p in sorted(bad.iterdir()):
        with pytest.raises(ImageError):
            open_image(p)
    r = CliRunner().invoke(main, ["index", str(bad), str(ok), "--db", str(tmp_path / "lib"), "--json"])
    assert r.exit_code == 3, r.output
    s = json.loads(r.stdout)
    assert s["added"] == 2 and len(s["skipped"]) == len(list(bad.iterdir()))
    assert all(d["reason"] for d in s["skipped"])


def test_suffixes_include_phone_and_camera_formats():
    for name in ("a.HEIC", "b.heif", "c.avif", "d.DNG", "e.cr2", "f.cr3", "g.nef", "h.arw", "i.raf", "j.orf", "k.rw2"):
        assert is_photo_name(name), name
    assert not is_photo_name("notes.txt") and not is_photo_name("clip.mov")


def test_heic_embedded_thumbnail_is_decoded_when_large_enough(tmp_path, demo_photos):
    src = Image.open(demo_photos[0]).convert("RGB")
    big = src.resize((1280, 960), Image.BICUBIC)
    path = tmp_path / "phone.heic"
    big.save(path, quality=85, thumbnails=[320], exif=exif_bytes(6))  # as an iPhone stores a photo
    info = {}
    small = open_image(path, min_side=224, info=info)
    assert small.size == (240, 320)  # the upright 320x240 thumbnail, not the 1280x960 photo
    assert (info["width"], info["height"]) == (960, 1280)  # the photo's own size is recorded
    want = pixels(src.transpose(Image.Transpose.ROTATE_270), (90, 120))
    assert np.abs(pixels(small, (90, 120)) - want).mean() < 8
    assert open_image(path, min_side=400).size == (960, 1280)  # too small a thumbnail: full decode
    assert open_image(path).size == (960, 1280)
