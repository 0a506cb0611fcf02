"""Open-world recall: k-fold cross-validation over captioned COCO photos, each fold hidden
among uncaptioned distractor photos; every fold trains the whole model as `fusion train`
does, on the other folds plus training-only datasets. The number the README reports.

    python benchmarks/open_world.py --data ../shared/data/coco --data ../shared/data/coco-extra \
        --train-only ../shared/data/flickr8k --distractors ../shared/data/distractors [--folds 5]

Writes benchmarks/results/recall.md, recall.json and recall.png (--name changes the stem:
each road measured has its own files).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from retrieval.encoders.image_encoder import CONFIGS
from retrieval.evaluation.openworld import open_world_report
from retrieval.model.query_side import LIKELY
from retrieval.training.trainer import image_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import add_recipe_options, changed, depth_arg, recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SMALL_I2T = "itc, fold's own captions only"
ANCHORS = "published COCO 5K t2i R@1: VSE++ 30.3, CLIP ViT-B/32 zero-shot 30.4, ALBEF 60.7"


def fmt(cell: dict) -> str:
    return " / ".join(f"{cell[k]['mean']:.1f} ± {cell[k]['std']:.1f}" for k in ("r1", "r5", "r10"))


def to_markdown(r: dict, name: str = "Open-world recall") -> str:
    lines = [f"# {name}", "",
             f"{r['folds']}-fold cross-validation over {r['photos']} captioned photos ({r['captions']} captions; "
             f"{', '.join(Path(d).name for d in r['data'])}), training on the other folds plus "
             f"{', '.join(Path(d).name for d in r['train_only']) or 'nothing else'}. Each fold's photos are hidden "
             f"among {r['distractors']} distractor photos (a gallery of {r['open_gallery']}; the other half of the "
             f"distractors is training material, for the reranker's candidates and as pseudo-captioned photos); "
             f"t2i is also projected to a {r['projected_to']}-photo library, and measured in the fold alone "
             f"(about {r['photos'] // r['folds']} photos). i2t ranks each photo's captions among the "
             f"{r['memory_captions']} captions of the memory corpus (none of them belongs to an evaluated photo). "
             f"Recall@1 / 5 / 10 in %, mean ± std over folds"
             + (f" (folds {r['only_folds']} alone)" if r.get("only_folds") else "")
             + f"; rerank of the top {r['candidates']}.", "",
             "| method | t2i, open gallery | t2i, projected to 5,046 | t2i, fold alone |",
             "| --- | --- | --- | --- |"]
    for m, t in r["t2i"].items():
        lines.append(f"| {m} | {fmt(t['open'])} | {fmt(t['projected'])} | {fmt(t['small'])} |")
    lines += ["", f"i2t (ITC, photo → {r['memory_captions']} + own captions): {fmt(r['i2t']['itc'])}"]
    small = r["i2t"].get(SMALL_I2T)
    if small:
        lines.append(f"i2t in the fold alone (its ~430 captions): {fmt(small)}")
    for m, v in r["i2t"].items():
        if m.startswith("itc reranked"):
            lines.append(f"i2t, {m[4:]}: {fmt(v)}")
        elif m.startswith("fold alone, reranked"):
            lines.append(f"i2t in the fold alone, {m[12:]}: {fmt(v)}")
    if r.get("describe_memory"):
        lines += ["", "Describe from the memory alone (a library without captions): the first caption shown, "
                  "% of photos where it uses a word at least 2 of the photo's own captions use, and its best "
                  "sentence cosine to them (mean ± std over folds):", "",
                  "| rule | first agrees | closeness |", "| --- | ---: | ---: |"]
        for rule, v in r["describe_memory"].items():
            a, c = v["first_agrees"], v["closeness"]
            lines.append(f"| {rule} | {a['mean']:.1f} ± {a['std']:.1f} | {c['mean']:.3f} ± {c['std']:.3f} |")
    lines.append("")
    for kind, what in (("probability", "the reranker's match probability over every candidate it scored"),
                       ("share", "the share shown in results (softmax of the ranking score at weight "
                                 f"{r.get('rerank_weight', 'tuned')} over a query's candidates, at the "
                                 "temperature fitted in training), over queries whose photo is among them")):
        cal = r["calibration"][kind]
        lines += [f"Calibration of {what}: expected calibration error {cal['ece']:.4f}.", "",
                  "| predicted | candidates | mean predicted | match rate |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {b['bin']} | {b['n']} | {b['mean_probability']:.3f} | {b['match_rate']:.3f} |" for b in cal["bins"]]
        lines.append("")
    if "likely" in r:
        lines += [f"The likely set: a query's top results whose shares add up to a level (search draws its "
                  f"\"likely ends here\" line at {LIKELY:g}). How often it holds the photo described (over all "
                  f"queries, and over those whose photo is among the {r['candidates']} candidates), and how many "
                  f"photos it has in the gallery of {r['open_gallery']}:", "",
                  "| level | holds the photo | holds it, if among the candidates | photos, mean | median | 90th percentile |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {lv} | {100 * v['held']:.1f}% | {100 * v['held_if_candidate']:.1f}% | {v['mean_size']:.1f} | "
                  f"{v['median_size']:g} | {v['p90_size']:g} |" for lv, v in r["likely"].items()]
        lines.append("")
    if "no_match" in r:
        n = r["no_match"]
        lines += ["", f"\"No photo matches well\" (best probability below the threshold measured on made-up "
                  f"queries, {n['threshold']:.3f} on average): said for {100 * n['flagged_made_up']:.0f}% of other "
                  f"made-up queries, {100 * n['flagged_not_in_library']:.0f}% of captions whose photo is not in the "
                  f"library, {100 * n['flagged_in_library']:.0f}% of captions whose photo is."]
    lines += ["", f"For scale, {ANCHORS}.", ""]
    return "\n".join(lines)


def roads_markdown(results: Path) -> str:
    """One table over every open-world run kept in results/ (each road measured)."""
    rows = []
    for f in sorted(results.glob("recall*.json")):
        r = json.loads(f.read_text())
        if "t2i" not in r or "open_gallery" not in r:
            continue
        enc = r.get("image_encoder", "?")
        size = r.get("image_size") or (CONFIGS[enc].image_size if enc in CONFIGS else "?")  # before: native
        road = (f"{enc} at {size} px, cell labels {'on' if r.get('bridge_cells', True) else 'off'}, "
                f"mid-level features {'on' if r.get('mid_features', False) else 'off'}, "
                f"memory weight {r.get('memory_beta', '?')}, soup {r.get('soup', 1)}, "
                f"pseudo-captions {r.get('pseudo_captions', 0)}, their caption prior {r.get('pseudo_prior', 0)}, "
                f"look-alike captions {r.get('neighbour_weight', 0)}, gallery {r['open_gallery']:,}")
        for m, t in r["t2i"].items():
            if m.startswith("reranked at"):
                continue
            rows.append(f"| `{f.stem}` | {road} | {m} | {fmt(t['open'])} | {fmt(t['projected'])} | {fmt(t['small'])} |")
        rows.append(f"| `{f.stem}` | {road} | i2t, ITC | {fmt(r['i2t']['itc'])} | | |")
    head = ["## Every road measured with this script", "",
            "| run | road | method | t2i open gallery | projected to 5,046 | fold alone |",
            "| --- | --- | --- | --- | --- | --- |"]
    return "\n".join(head + rows) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    methods = list(r["t2i"])
    for i, scope in enumerate(("open", "projected", "small")):
        vals = [r["t2i"][m][scope]["r1"]["mean"] for m in methods]
        errs = [r["t2i"][m][scope]["r1"]["std"] for m in methods]
        a.barh([j + (i - 1) * 0.27 for j in range(len(methods))], vals, 0.27, xerr=errs,
               label={"open": f"gallery {r['open_gallery']}", "projected": "projected to 5,046",
                      "small": "fold alone"}[scope])
    a.set_yticks(range(len(methods)), methods, fontsize=8)
    a.invert_yaxis()
    a.set_xlabel("text→image recall@1 (%), mean ± std over folds")
    a.legend(fontsize=8)
    b.plot([0, 1], [0, 1], "k--", lw=1)
    for kind in ("probability", "share"):
        cal = r["calibration"][kind]
        b.plot([x["mean_probability"] for x in cal["bins"]], [x["match_rate"] for x in cal["bins"]], "o-",
               label=f"{kind} (ECE {cal['ece']:.3f})")
    b.set_xlabel("predicted")
    b.set_ylabel("observed match rate")
    b.set_title("reliability")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def tuned_encoders(args, tc):
    """Lite0 and MiniLM with their tops trained on all of --tune-on's photos (none of them a
    COCO fold's), as benchmarks/finetune.py's 'both' arm trains them."""
    from finetune import tune_tops

    from retrieval.data.datasets import load_dataset
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder

    ie = load_image_encoder(args.image_encoder, image_size=image_size(args.image_encoder, tc))
    te = load_text_encoder()
    tune_tops(ie, te, load_dataset(args.tune_on or args.train_only[0]), args.tune_tops, tc.seed, all_photos=True,
              mix=args.tune_mix, depth=args.tune_depth, fragment_share=tc.tops_fragment_share)
    return ie, te


def int8_encoder(image_encoder: str, tc, tops=None):
    """The image network as `fusion index` runs it for a new library: int8 on ONNX Runtime,
    with the calibration that ships (retrieval/encoders/int8.py), and the tuned tops if any."""
    from retrieval.encoders.image_encoder import load_image_encoder

    return load_image_encoder(image_encoder, image_size=image_size(image_encoder, tc), engine="onnx", precision="int8",
                              tops=tops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", required=True, help="evaluated dataset (repeatable)")
    ap.add_argument("--train-only", type=Path, action="append", default=[], help="dataset only trained on")
    ap.add_argument("--distractors", type=Path, required=True, help="folder of uncaptioned photos")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only-folds", help="comma-separated folds to evaluate (the same draws as a whole run)")
    add_recipe_options(ap)
    ap.add_argument("--tune-tops", type=int, default=0, metavar="EPOCHS",
                    help="experiment: first train Lite0's last block and MiniLM's top layer on every photo of "
                         "--tune-on (benchmarks/finetune.py's 'both' arm), then the folds on their features")
    ap.add_argument("--tune-on", type=Path, help="the Flickr8k folder --tune-tops trains on [default: the "
                                                 "first --train-only folder]")
    ap.add_argument("--tune-mix", type=float, default=1.0, metavar="ALPHA",
                    help="with --tune-tops: install (1 - ALPHA) x pretrained + ALPHA x tuned weights (WiSE-FT)")
    ap.add_argument("--tune-depth", type=depth_arg, default=1, metavar="N|IMAGE,TEXT",
                    help="with --tune-tops: tune each encoder's N last blocks / layers (default 1, as fusion train), "
                         "or IMAGE of Lite0's and TEXT of MiniLM's")
    ap.add_argument("--int8-index", action="store_true",
                    help="index the folds and gallery with the int8 image network, as fusion index does for a "
                         "new library (retrieval/encoders/int8.py); training keeps float32 features, as "
                         "fusion train does")
    ap.add_argument("--name", default="recall", help="results file stem")
    args = ap.parse_args()
    start = time.perf_counter()
    tc = recipe(args)
    encoders = tuned_encoders(args, tc) if args.tune_tops else None
    report = open_world_report(args.data, args.distractors, args.train_only, args.folds, args.seed,
                               args.image_encoder, tc=tc, log=lambda e: print(e, file=sys.stderr, flush=True),
                               encoders=encoders,
                               index_encoder=int8_encoder(args.image_encoder, tc, encoders and encoders[0].tops)
                               if args.int8_index else None,
                               only_folds=[int(f) for f in args.only_folds.split(",")] if args.only_folds else None)
    report.update(image_encoder=args.image_encoder, image_size=image_size(args.image_encoder, tc),
                  memory_beta=tc.memory_beta, bridge_cells=tc.bridge_cells, mid_features=tc.mid_features,
                  reranker_hidden=tc.reranker_hidden, soup=tc.soup, pseudo_captions=tc.pseudo_captions,
                  pseudo_prior=tc.pseudo_prior, rerank_weight=tc.rerank_weight,
                  neighbour_weight=tc.neighbour_weight, neighbour_dims=tc.neighbour_dims, recipe=changed(tc),
                  tune_tops=args.tune_tops, tune_mix=args.tune_mix, tune_depth=args.tune_depth,
                  only_folds=args.only_folds,
                  int8_index=args.int8_index)
    report["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report, f"Open-world recall ({args.image_encoder} at {report['image_size']} px, "
                             f"recipe changes: {report['recipe'] or 'none'})")
    (RESULTS / f"{args.name}.md").write_text(md)
    main_md = RESULTS / "recall.md"  # the headline file carries the table of every road run so far
    if main_md.is_file():
        head = main_md.read_text().split("## Every road measured")[0].rstrip()
        main_md.write_text(head + "\n\n" + roads_markdown(RESULTS))
    plot(report, RESULTS / f"{args.name}.png")
    print(md)


if __name__ == "__main__":
    main()
