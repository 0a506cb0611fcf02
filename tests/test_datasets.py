"""Dataset folder loading: the demo collection and every malformed case."""

import json

import pytest

from retrieval.data.datasets import is_dataset, load_dataset
from retrieval.errors import DatasetError


def test_demo_collection(demo_dir):
    ds = load_dataset(demo_dir)
    assert len(ds.images) == 48 and len(ds.captions) == 240
    assert all(len(c) == 5 for c in ds.captions_of())
    assert ds.image_path(0).is_file()
    assert "coco_id" in ds.captions[0].extra


def write(folder, lines, images=("a.jpg",)):
    folder.mkdir(exist_ok=True)
    for name in images:
        (folder / name).write_bytes(b"x")
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_malformed_json_names_file_and_line(tmp_path):
    d = write(tmp_path / "ds", [json.dumps({"image": "a.jpg", "caption": "ok"}), "{broken"])
    with pytest.raises(DatasetError, match=r"captions.jsonl:2: malformed JSON"):
        load_dataset(d)


def test_missing_image_names_line(tmp_path):
    d = write(tmp_path / "ds", [json.dumps({"image": "a.jpg", "caption": "ok"}),
                                json.dumps({"image": "gone.jpg", "caption": "ok"})])
    with pytest.raises(DatasetError, match=r"captions.jsonl:2: image gone.jpg not found"):
        load_dataset(d)


@pytest.mark.parametrize("obj,msg", [
    ({"image": "a.jpg", "caption": "   "}, "empty caption"),
    ({"image": "a.jpg"}, 'no "caption" string'),
    ({"image": "../a.jpg", "caption": "x"}, "image path '../a.jpg' must stay inside"),
])
def test_bad_lines(tmp_path, obj, msg):
    d = write(tmp_path / "ds", [json.dumps(obj)])
    with pytest.raises(DatasetError, match=f"captions.jsonl:1: {msg}"):
        load_dataset(d)


def test_text_only_corpus_file(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text("\n".join(json.dumps({"caption": f"caption {i}"}) for i in range(3)) + "\n")
    ds = load_dataset(f)
    assert ds.images == [] and [c.image for c in ds.captions] == [None] * 3
    assert is_dataset(f) and not is_dataset(tmp_path)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset folder"):
        load_dataset(tmp_path)
