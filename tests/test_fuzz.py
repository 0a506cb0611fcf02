"""Property-based fuzzing (hypothesis, derandomized: a failure prints the example and its
blob, and the same run replays it): mutated real photo bytes through the image opener,
arbitrary captions.jsonl lines, dates, query texts and --under paths, and every HTTP
parameter. Never a crash, a hang past the time budget, or an untyped error. The default run
tries 1,000 mutated photos per image format, 1,000 caption files, 10,000 dates, 100 queries
and 300 HTTP requests; `-m slow` tries 10,000 per image format and caption files, 10,000
queries of any short text plus 500 of up to 100k characters, and 10,000 HTTP requests."""

import io
import json
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from indexer.run import index_paths
from retrieval.api import timestamp
from retrieval.query.results import QueryError
from retrieval.encoders.images import open_image
from retrieval.errors import DatasetError, FusionError, ImageError
from retrieval.model.runtime import Runtime
from retrieval.query.results import Filters
from retrieval.query.search import open_searcher
from retrieval.data.datasets import load_dataset
from tests.serving import get, running_server

BUDGET_S = 5.0  # per input: a decoder stuck in a loop fails the test instead of hanging CI
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "HEIF", "AVIF")
FAST = dict(derandomize=True, print_blob=True, database=None, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def seed_bytes(demo_photos) -> dict:
    """Small real photos (96x72) in each format: mutations of real structure, decoded fast.
    (HEIF saving is registered by retrieval.encoders.images, imported above.)"""
    img = Image.open(demo_photos[0]).convert("RGB").resize((96, 72))
    out = {}
    for fmt in FORMATS:
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 80} if fmt in ("JPEG", "WEBP", "HEIF", "AVIF") else {}))
        out[fmt] = buf.getvalue()
    return out


@st.composite
def mutated(draw, seeds: dict):
    fmt = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[fmt])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "repeat"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            junk = draw(st.binary(min_size=1, max_size=64))
            data[at:at + draw(st.integers(0, 64))] = junk
        else:
            n = draw(st.integers(1, 256))
            data[at:at] = data[at:at + n] * draw(st.integers(1, 3))
    return fmt, bytes(data)


def check_image(tmp_path, fmt, data):
    start = time.monotonic()
    try:
        img = open_image(tmp_path / f"fuzz.{fmt.lower()}", min_side=32, data=data, info={})
        assert img.mode == "RGB" and min(img.size) >= 1
    except ImageError:
        pass
    assert time.monotonic() - start < BUDGET_S, (fmt, len(data))


def make_image_test(n):
    @settings(max_examples=n, **FAST)
    @given(data=st.data())
    def run(tmp_path, demo_photos, data):
        fmt, blob = data.draw(mutated(seed_bytes_cached(demo_photos)))
        check_image(tmp_path, fmt, blob)
    return run


_SEEDS = {}


def seed_bytes_cached(demo_photos):
    if not _SEEDS:
        _SEEDS.update(seed_bytes(demo_photos))
    return _SEEDS


test_mutated_photos_open_or_fail_typed = make_image_test(6 * 1000)
test_mutated_photos_many = pytest.mark.slow(make_image_test(6 * 10_000))

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=6)
LINES = st.one_of(
    st.text(),  # anything, control characters and NUL included
    st.builds(lambda c, i, e: json.dumps({"caption": c, "image": i, **e}), st.text(), st.one_of(st.none(), st.text(),
              st.integers()), st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2)),
    JSON_VALUES.map(json.dumps),
    st.binary().map(lambda b: b.decode("latin-1")),
)


def make_captions_test(n):
    @settings(max_examples=n, **FAST)
    @given(lines=st.lists(LINES, min_size=1, max_size=5), raw=st.binary(max_size=64))
    def run(tmp_path, lines, raw):
        path = tmp_path / "captions.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + raw)
        try:
            ds = load_dataset(path, check_images=False)
            assert ds.captions and all(c.text.strip() for c in ds.captions)
        except DatasetError:
            pass
    return run


test_captions_lines = make_captions_test(1000)
test_captions_lines_many = pytest.mark.slow(make_captions_test(10_000))


@settings(max_examples=10_000, **FAST)
@given(value=st.one_of(st.text(), st.dates().map(str), st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S"))))
def test_dates(value):
    try:
        assert isinstance(timestamp(value, "--after"), float)
    except QueryError as e:
        assert "YYYY-MM-DD" in str(e)


@pytest.fixture(scope="module")
def db(tmp_path_factory, demo_photos):
    root = tmp_path_factory.mktemp("fz")
    index_paths(demo_photos[:6], root / "lib", runtime=Runtime())
    return root / "lib"


SHORT_QUERY = st.one_of(st.text(), st.just("\x00"))  # unicode, control characters, NUL
QUERY = st.one_of(SHORT_QUERY, st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=3000),
                  st.just("a photo " * 12_500))  # the last: 100k characters


def make_query_test(n, queries=QUERY):
    @settings(max_examples=n, **FAST)
    @given(q=queries, under=st.one_of(st.none(), st.text(), st.just("/" + "a/" * 2000)))
    def run(searcher, q, under):
        start = time.monotonic()
        try:
            r = searcher.text(q, k=3, filters=Filters(under=under))
            assert len(r.hits) <= 3
        except FusionError:
            pass
        assert time.monotonic() - start < BUDGET_S
    return run


def test_query_texts_and_under_paths(db):
    make_query_test(100)(open_searcher(db))


@pytest.mark.slow
def test_query_texts_and_under_paths_many(db):
    make_query_test(500)(open_searcher(db))  # long texts cost ~0.15 s an example to draw and read


@pytest.mark.slow
def test_short_query_texts_and_under_paths_many(db):
    make_query_test(10_000, SHORT_QUERY)(open_searcher(db))


PARAMS = st.dictionaries(
    st.sampled_from(["q", "k", "candidates", "rerank", "under", "after", "before", "like", "add", "minus", "id",
                     "threshold", "size", "token"]),
    st.one_of(st.text(max_size=50), st.integers(-10**12, 10**12).map(str), st.sampled_from(["", "0", "true", "nan"])),
    max_size=5)
PATHS = st.sampled_from(["/api/search", "/api/similar", "/api/describe", "/api/duplicates", "/api/health",
                         "/api/thumb/1", "/api/photo/1", "/"])


def make_http_test(n):
    @settings(max_examples=n, **FAST)
    @given(path=PATHS, params=PARAMS)
    def run(db, path, params):
        with_server = _SERVER["base"]
        query = urllib.parse.urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in params.items()})
        status, _ = get(f"{with_server}{path}?{query}")
        assert status in (200, 400, 404, 422), (path, params, status)  # never 500
    return run


_SERVER = {}


@pytest.fixture(scope="module")
def server(db):
    with running_server(db) as base:
        _SERVER["base"] = base
        yield base


def test_http_parameters(server, db):
    make_http_test(300)(db)


@pytest.mark.slow
def test_http_parameters_many(server, db):
    make_http_test(10_000)(db)


@pytest.mark.parametrize("line", [b'{"caption": "x", "image": [1]}', b'{"caption": "x", "image": {"a": 1}}',
                                  b'{"caption": "x", "image": 3}', b'{"caption": "\\u00e9t\\u00e9"}\n\x80\n'])
def test_caption_lines_found_by_fuzzing(tmp_path, line):
    """Inputs the fuzzer found raising untyped errors (unhashable image, bytes not UTF-8)."""
    path = tmp_path / "captions.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(DatasetError, match=r"captions.jsonl:\d+: "):
        load_dataset(path, check_images=False)
