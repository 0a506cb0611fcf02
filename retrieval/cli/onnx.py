"""The export-onnx command: the encoders' ONNX Runtime graphs, their check against torch, and the
int8 network's calibration."""

from __future__ import annotations

import json
from pathlib import Path

import click

from retrieval.cli.base import fusion_errors, main


@main.command("export-onnx")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint whose encoders to export (its image network and input size) "
                   "[default: the one shipped with fusion].")
@click.option("--image-weights", type=click.Path(dir_okay=False, path_type=Path),
              help="State-dict file of the image network (required for resnet50).")
@click.option("--force", is_flag=True, help="Export again even if this machine has the graphs.")
@click.option("--check", "photos", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A photo to compare ONNX Runtime and torch on (repeatable) [default: four synthetic ones].")
@click.option("--calibrate", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Make the int8 network's activation ranges again from the first photos of this folder "
                   "(by name), into the package's calibration file (a maintainer's step: every library "
                   "indexed in int8 before must then be re-indexed).")
@click.option("--calibration-photos", default=300, show_default=True, type=click.IntRange(16, 5000),
              help="Photos --calibrate reads.")
@click.option("--json", "as_json", is_flag=True, help="Print the graphs and the check as one JSON object.")
@fusion_errors
def export_onnx(model, image_weights, force, photos, calibrate, calibration_photos, as_json):
    """Export the encoders to ONNX graphs for ONNX Runtime, and check them against torch.

    fusion index, search, similar, describe and serve run the image network and MiniLM on
    ONNX Runtime (about twice as fast here as torch, same vectors). The graphs are exported
    from the same weights once per machine and model, into the cache folder
    ($FUSION_CACHE/../onnx, else ~/.cache/fusion/onnx); fusion index does it by itself before
    its first photo. This command does it ahead (a machine image, an offline install) and
    prints the smallest cosine between the two engines' outputs: 0.9999 or more passes,
    anything less exits 1. FUSION_ENGINE=torch runs the torch modules instead.

    New libraries index with the image network in int8 where its calibration ships (Lite0 at
    256 px, the shipped model): about 1.7x the float32 network's speed, vectors at cosine ~0.997
    to float32's on average. This command builds that graph too and prints its cosine to the
    float32 graph (reported, not checked against 0.9999). FUSION_IMAGE_PRECISION=float32 makes
    new libraries float32; a library keeps the precision it was made with.
    """
    from retrieval.encoders.onnx_export import check_graphs, check_int8
    from retrieval.model.runtime import Runtime

    runtime = Runtime(model, image_weights, engine="onnx")
    ie, te = runtime.image_encoder, runtime.text_encoder
    notice = None if as_json else (lambda m: click.echo(m, err=True))
    if calibrate is not None:
        _calibrate(ie, calibrate, calibration_photos, notice)
        runtime = Runtime(model, image_weights, engine="onnx")
        ie, te = runtime.image_encoder, runtime.text_encoder
    graphs = [ie.float_graph, te.graph] + ([ie.graph] if ie.precision == "int8" else [])
    for graph in graphs:
        if force or (calibrate is not None and graph is ie.graph):
            graph.path.unlink(missing_ok=True)
        graph.ensure(notice)
    pixels = [ie.load(p) for p in photos] or None
    check = check_graphs(ie, te, pixels)
    report = {"image_graph": str(ie.float_graph.path), "text_graph": str(te.graph.path),
              "min_cosine": {k: round(v, 7) for k, v in check.items()}, "passed": min(check.values()) >= 0.9999}
    if ie.precision == "int8":
        report["int8_graph"] = str(ie.graph.path)
        report["int8_cosine_to_float32"] = {k: round(v, 5) for k, v in check_int8(ie, pixels).items()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for key in ("image_graph", "text_graph", "int8_graph"):
            if key in report:
                size = Path(report[key]).stat().st_size / 1e6
                click.echo(f"{key.replace('_', ' ')}: {report[key]} ({size:.0f} MB)")
        click.echo("smallest cosine to torch: " + ", ".join(f"{k} {v:.6f}" for k, v in report["min_cosine"].items()))
        if "int8_cosine_to_float32" in report:
            click.echo("int8 network, smallest cosine to float32: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in report["int8_cosine_to_float32"].items()))
    if not report["passed"]:
        raise click.ClickException("ONNX Runtime's outputs differ from torch's (cosine below 0.9999); "
                                   "run with FUSION_ENGINE=torch and report it")


def _calibrate(ie, folder: Path, count: int, notice) -> None:
    from importlib import resources

    from retrieval.encoders.encode import find_photos
    from retrieval.encoders.int8 import calibrate

    files = find_photos([folder])[:count]
    if len(files) < 16:
        raise click.ClickException(f"{folder}: {len(files)} photos; --calibrate needs at least 16")
    pixels = [ie.load(p) for p in files]
    name = f"{ie.config.name}-{ie.config.image_size}.json"
    out = Path(str(resources.files("retrieval.encoders").joinpath("calibration", name)))
    calibrate(ie.float_graph.ensure(notice), pixels, out, f"the first {len(files)} photos of {folder.name}/ by name")
    if notice:
        notice(f"wrote {out}: int8 ranges from {len(files)} photos of {folder}")
