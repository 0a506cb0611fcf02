"""One picture of the engine change: ONNX Runtime against torch on this machine, from the
results that encode_speed.py, index_speed.py, search_speed.py and cold_start.py wrote.

    python benchmarks/engines_plot.py

Writes benchmarks/results/engines.png.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def panels() -> list[tuple[str, str, dict]]:
    """(title, unit, {label: value}) per panel; labels name the engine (and setting)."""
    enc = load("encode_speed")["photos_per_s"]
    idx = load("index_speed")
    best: dict[str, float] = {}
    for r in idx["runs"]:
        key = f"{r['engine']}, {r['processes']} proc"
        best[key] = max(best.get(key, 0.0), r["photos_per_s"])
    search = load("search_speed")
    size = max(search, key=int)
    cold = load("cold_start")["engines"]
    return [
        ("image network, forward only", "photos/s", {e: enc[f"forward[{e},batch=4]"] for e in ("torch", "onnx", "onnx-int8")
          if f"forward[{e},batch=4]" in enc}),
        (f"indexing {idx['photos']} photos, end to end", "photos/s", best),
        (f"warm text search, {int(size):,} photos", "p50 ms",
         {e: search[size]["warm_in_process"][e]["p50_ms"] for e in ("torch", "before", "onnx")
          if e in search[size]["warm_in_process"]}),
        ("cold fusion search", "s", {e: cold[e]["wall_s_median"] for e in ("torch", "before", "onnx") if e in cold}),
    ]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = panels()
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 3.6))
    for ax, (title, unit, values) in zip(axes, data):
        labels = list(values)
        colours = ["#d62728" if label.startswith("torch") else "#7f7f7f" if label.startswith("before") else "#1f77b4"
                   for label in labels]
        bars = ax.bar(range(len(labels)), [values[k] for k in labels], color=colours)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit)
        for b, k in zip(bars, labels):
            ax.annotate(f"{values[k]:g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=8)
    fig.suptitle("ONNX Runtime (blue) against torch (red) and an earlier commit (grey: `before` in "
                 "search_speed.md and cold_start.md), 2 CPU cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "engines.png", dpi=110)


if __name__ == "__main__":
    main()
