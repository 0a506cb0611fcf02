"""Indexing speed per photo format: the same photos as JPEG, PNG, HEIC, AVIF and DNG (camera
RAW without an embedded preview: a real half-size demosaic), each indexed into a fresh library.

    python benchmarks/format_speed.py [--data ../shared/data/coco/images] [--n 120] [--processes N]
        [--formats jpg,heic+thumb,preview.dng] [--name STEM]

Writes benchmarks/results/format_speed.md and .json (format_speed-processes-N.* with
--processes N: N worker processes, 0 = in-process; --name picks another stem). Needs pidng
(the test extra) for DNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.run import index_paths  # noqa: E402
from retrieval.encoders.encode import find_photos  # noqa: E402
from retrieval.model.runtime import Runtime  # noqa: E402
from tests.photo_formats import save_as  # noqa: E402
from PIL import Image  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FORMATS = (".jpg", ".png", ".heic", ".heic+thumb", ".avif", ".dng", ".preview.dng")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "demo" / "images")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--processes", type=int, help="worker processes (0: in-process) [default: automatic]")
    ap.add_argument("--formats", default=",".join(f[1:] for f in FORMATS),
                    help="comma-separated formats to measure [default: all]")
    ap.add_argument("--name", help="results file stem")
    args = ap.parse_args()
    wanted = ["." + f.strip() for f in args.formats.split(",")]
    if unknown := [f[1:] for f in wanted if f not in FORMATS]:
        ap.error(f"unknown format {unknown[0]!r}; choose from {', '.join(f[1:] for f in FORMATS)}")
    photos = find_photos([args.data])[:args.n]
    runtime = Runtime()
    _ = runtime.image_encoder.network, runtime.memory
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in wanted:
            folder = Path(tmp) / fmt[1:].replace(".", "-")
            folder.mkdir()
            for p in photos:
                if fmt == ".heic+thumb":  # as phones save HEIC: with a 320 px thumbnail inside
                    Image.open(p).convert("RGB").save(folder / (p.stem + ".heic"), quality=90, thumbnails=[320])
                else:
                    save_as(p, folder / (p.stem + fmt), quality=90)  # .preview.dng: a camera-like DNG
            size = sum(f.stat().st_size for f in folder.iterdir()) / len(photos)
            start = time.perf_counter()
            s = index_paths([folder], Path(tmp) / f"lib-{folder.name}", runtime=runtime, processes=args.processes)
            wall = time.perf_counter() - start
            rows.append({"format": fmt[1:], "photos": s["photos"], "skipped": len(s["skipped"]),
                         "processes": s["processes"],
                         "photos_per_s": s["photos_per_s"], "wall_s": round(wall, 2),
                         "decode_s": s["timing"]["decode_s"], "forward_s": s["timing"]["forward_s"],
                         "kb_per_photo": round(size / 1024, 1)})
            print(rows[-1], file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"data": str(args.data), "n": len(photos), "processes": args.processes, "rows": rows}
    stem = args.name or ("format_speed" if args.processes is None else f"format_speed-processes-{args.processes}")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Indexing speed by photo format", "",
             f"The same {len(photos)} photos ({args.data}), re-encoded in each format and indexed into a fresh "
             f"library (`fusion index --processes {args.processes if args.processes is not None else 'auto'}`, "
             "this 2-core machine; photos/s counts from the start of encoding, worker start-up included). DNG is a 12-bit Bayer mosaic "
             "with no embedded preview, so every photo is demosaicked (half size); preview.dng carries a "
             "full-size JPEG preview as camera RAW files do, which is decoded instead of the mosaic. heic+thumb "
             "is HEIC saved as phones save it, with a 320 px thumbnail inside, which indexing decodes "
             "instead of the photo.", "",
             "| format | processes | photos/s | decode s | forward s | KB per photo | skipped |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['format']} | {r['processes']} | {r['photos_per_s']} | {r['decode_s']} | {r['forward_s']} | {r['kb_per_photo']} | "
              f"{r['skipped']} |" for r in rows]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
