"""Recall@k of the shipped checkpoint on held-out captioned photos in a closed gallery (every
photo captioned, nothing else in it): table, JSON and a bar plot. The open-world figures, which
predict what users see, come from benchmarks/open_world.py.

    python benchmarks/recall.py [--data DIR ...] [--candidates K]

Default data: the demo collection (48 COCO val photos never used in training). Writes
benchmarks/results/demo_recall.md, demo_recall.json and demo_recall.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrieval.evaluation.bench import recall_report, to_markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def plot(reports: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(7 * len(reports), 4.5), squeeze=False)
    for ax, (name, rep) in zip(axes[0], reports.items()):
        methods = list(rep["t2i"])
        y = range(len(methods))
        ax.barh(list(y), [rep["t2i"][m]["r1"] for m in methods], 0.6, label="text→image R@1")
        ax.set_yticks(list(y), methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("recall@1 (%)")
        ax.set_title(f"{name} (closed gallery): {rep['images']} photos, {rep['captions']} captions")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", help="dataset folder (repeatable)")
    ap.add_argument("--candidates", type=int, default=32)
    args = ap.parse_args()
    reports = {d.name: recall_report(d, candidates=args.candidates) for d in (args.data or [ROOT / "data" / "demo"])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_recall.json").write_text(json.dumps(reports, indent=2) + "\n")
    md = "# Recall@k of the shipped checkpoint\n\n" + "\n".join(
        f"## {name}\n\n{to_markdown(rep)}" for name, rep in reports.items())
    (RESULTS / "demo_recall.md").write_text(md)
    plot(reports, RESULTS / "demo_recall.png")
    print(md)


if __name__ == "__main__":
    main()
