"""`fusion describe` without a caption corpus: the captions it shows come from the 23,013 MS-COCO
captions shipped with the model. How close do they come to what people wrote for each photo?

    python benchmarks/describe_memory.py [--data data/demo] [--name describe_memory]

The photos of a captioned collection the model never trained on (the demo by default; none of
its captions is in the memory) are indexed alone, without their captions, and each is described
from the memory. The captions shown are compared with the photo's own (retrieval/evaluation/
describe.py): does the first use a word that at least 2 of the photo's captions use, do any of
the first 3, and the first one's best sentence cosine (MiniLM) to them. Against the same for the
memory in plain ITC order (without the caption prior), for a memory caption drawn at random
(exact expectation over the memory), and for the memory caption closest to the photo's own
captions (a ceiling for closeness that no ranking of the memory passes). Writes
benchmarks/results/describe_memory.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from indexer.run import index_paths
from retrieval.evaluation.describe import agreed_words, closeness, uses_agreed_word
from retrieval.model.runtime import Runtime
from retrieval.query.describe import memory_weights
from retrieval.query.search import open_searcher
from retrieval.data.words import stems
from retrieval.data.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="captioned dataset folder")
    ap.add_argument("--name", default="describe_memory", help="results file name (without .md/.json)")
    ap.add_argument("--weights", default="", help="other reranker weights to rank the memory with, "
                                                           "comma-separated (rows beside the shipped one)")
    args = ap.parse_args()
    own = load_dataset(args.data).texts_by_path()
    runtime = Runtime()
    memory = runtime.memory
    mem_stems = [stems(t) for t in memory.texts]
    enc = lambda texts: runtime.text_encoder.encode(texts).pooled  # noqa: E731 (L2-normalised)
    cfg = runtime.query.config
    rules = {  # how describe ranks the memory's ITC top 32 (the model's config, swapped per row)
        f"describe (shipped: ITC plus {memory_weights(cfg)[0]:g} x the reranker's logit)": cfg,
        f"the library captions' rule (ITC minus {cfg.describe_prior:g} x the caption prior)":
            replace(cfg, memory_describe_weight=cfg.describe_weight, memory_describe_prior=cfg.describe_prior),
        **{f"ITC plus {w:g} x the reranker's logit": replace(cfg, memory_describe_weight=w)
           for w in (float(x) for x in args.weights.split(",") if x)},
        "ITC alone": None}
    rows = {m: {"first_agrees": [], "any3_agrees": [], "closeness": []} for m in
            (*rules, "a random memory caption", "the memory caption closest to the photo's own (ceiling)")}
    names = list(rows)
    examples = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        where = {}
        for n, path in enumerate(sorted(own)):
            copy = photos / f"{n:05d}-{Path(path).name}"
            shutil.copy(path, copy)
            where[str(copy)] = path
        index_paths([photos], Path(tmp) / "lib", runtime=runtime)
        searcher = open_searcher(Path(tmp) / "lib", runtime)
        for copy, path in sorted(where.items()):
            caps = own[path]
            own_vec = enc(caps)
            agreed = agreed_words(caps)
            for name, rule in rules.items():
                runtime.query.config = rule or cfg
                shown = [h.text for h in searcher.describe(copy, k=3, rerank=rule is not None).hits]
                r = rows[name]
                r["first_agrees"].append(uses_agreed_word(shown[0], caps))
                r["any3_agrees"].append(any(uses_agreed_word(t, caps) for t in shown))
                r["closeness"].append(float(closeness(enc(shown[:1]), own_vec)[0]))
                if rule is cfg and len(examples) < 5:
                    examples.append({"photo": Path(path).name, "own": caps[0], "shown": shown[0]})
            near = closeness(memory.vectors, own_vec)  # every memory caption against this photo's
            hit = np.array([bool(s & agreed) for s in mem_stems])
            rows[names[-2]]["first_agrees"].append(float(hit.mean()))
            rows[names[-2]]["any3_agrees"].append(float(1 - (1 - hit.mean()) ** 3))
            rows[names[-2]]["closeness"].append(float(near.mean()))
            best = int(np.argmax(near))
            rows[names[-1]]["first_agrees"].append(bool(hit[best]))
            rows[names[-1]]["any3_agrees"].append(bool(hit[np.argsort(-near)[:3]].any()))
            rows[names[-1]]["closeness"].append(float(near[best]))
    summary = {m: {"first_agrees_pct": round(100 * float(np.mean(r["first_agrees"])), 1),
                   "any3_agrees_pct": round(100 * float(np.mean(r["any3_agrees"])), 1),
                   "closeness_mean": round(float(np.mean(r["closeness"])), 3)} for m, r in rows.items()}
    report = {"data": str(args.data), "photos": len(own), "memory_captions": len(memory.texts),
              "rows": summary, "examples": examples}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# fusion describe from the shipped caption memory", "",
             f"{len(own)} photos of {args.data}, indexed without their captions (none of them is in the "
             f"memory; the shipped model never trained on the demo photos, and did on coco-extra's), each "
             f"described from the "
             f"{len(memory.texts):,} memory captions. \"Agrees\": the caption uses a content word (plural "
             "folded) that at least 2 of the photo's own captions use. Closeness: the caption's best MiniLM "
             "sentence cosine to the photo's own captions. A random caption's figures are exact expectations "
             "over the memory.", "",
             "| captions shown | first agrees | any of the first 3 agrees | first one's closeness |",
             "| --- | ---: | ---: | ---: |"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['first_agrees_pct']}% | {s['any3_agrees_pct']}% | {s['closeness_mean']:.3f} |")
    lines += ["", "Examples (the photo's first own caption; the first caption describe shows):", ""]
    lines += [f"- {e['photo']}: \"{e['own']}\" / \"{e['shown']}\"" for e in examples]
    lines.append("")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
