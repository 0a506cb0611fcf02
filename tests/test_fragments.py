"""Caption fragments (retrieval/training/fragments.py): the few words cut from a caption, their
vectors, and ITC trained on them, on the demo photos' real features."""

import numpy as np
import pytest
import torch

from retrieval.data.datasets import load_dataset
from retrieval.data.words import content_words
from retrieval.model.heads import ModelConfig
from retrieval.training.features import DatasetFeatures, dataset_features
from retrieval.training.fragments import FRAGMENTS, MAX_WORDS, cut, fragment_vectors, with_fragments
from retrieval.training.loop import TrainConfig, train_itc
from retrieval.training.trainer import class_embeddings


@pytest.fixture(scope="module")
def demo(demo_dir, image_encoder, text_encoder, tmp_path_factory):
    ds = load_dataset(demo_dir)
    cache = tmp_path_factory.mktemp("cache")
    f = dataset_features(ds, image_encoder, text_encoder, cache, progress=False)
    return ds, with_fragments(f.without_cells_and_tokens(), ds, text_encoder, seed=0, progress=False, cache_dir=cache)


def test_a_fragment_is_a_few_of_the_captions_content_words_in_order():
    rng = np.random.default_rng(0)
    caption = "A black dog runs along the sandy beach with a red ball"
    found = content_words(caption)
    for fragment in (f for _ in range(50) for f in cut(caption, rng)):
        words = fragment.split()
        assert 1 <= len(words) <= MAX_WORDS
        at = [found.index(w) for w in words]  # each is a content word of the caption ...
        assert at == sorted(at) and len(set(at)) == len(at)  # ... in the caption's order
    assert cut("A man on it", rng) == [" ".join(content_words("A man on it"))] * FRAGMENTS
    assert cut("on the", rng) == ["on the"] * FRAGMENTS  # no content words: the caption itself


def test_fragment_vectors_are_the_encoders_vectors_of_the_fragments(text_encoder):
    captions = ["Two dogs play in the snow", "A woman rides a bicycle down a city street"]
    vecs = fragment_vectors(captions, text_encoder, seed=3, progress=False)
    rng = np.random.default_rng(3)
    texts = [f for c in captions for f in cut(c, rng)]
    want = text_encoder.encode(texts, normalize=False).pooled.reshape(2, FRAGMENTS, -1)
    assert vecs.shape == want.shape and vecs.dtype == np.float16
    np.testing.assert_allclose(vecs.astype(np.float32), want, atol=2e-2)


def test_fragment_vectors_are_cached_by_captions_encoder_and_seed(demo, text_encoder, tmp_path):
    ds, f = demo
    first = with_fragments(f, ds, text_encoder, seed=0, progress=False, cache_dir=tmp_path)
    (saved,) = tmp_path.glob("*-fragments-*.npz")
    np.testing.assert_array_equal(np.load(saved)["vectors"], first.fragments)
    np.savez(saved, vectors=first.fragments * 0)  # a second call reads the file, not the encoder
    assert not with_fragments(f, ds, text_encoder, seed=0, progress=False, cache_dir=tmp_path).fragments.any()
    other = with_fragments(f, ds, text_encoder, seed=1, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*-fragments-*.npz"))) == 2 and other.fragments.any()
    assert not np.array_equal(other.fragments, first.fragments)  # another seed cuts other fragments


def test_fragments_follow_their_captions_through_subset_and_concat(demo):
    _, f = demo
    part = f.subset(np.array([5, 2]))
    keep = np.flatnonzero(np.isin(f.caption_image, [5, 2]))
    np.testing.assert_array_equal(part.fragments, f.fragments[keep])
    bare = DatasetFeatures(**{k: v for k, v in part.__dict__.items() if k != "fragments"})
    both = DatasetFeatures.concat([part, bare])
    assert both.fragments.shape == (2 * len(part.text),) + f.fragments.shape[1:]
    # a part without fragments (pseudo-captions) has each caption as its own fragments
    np.testing.assert_array_equal(both.fragments[len(part.text):, 1], bare.text.astype(np.float16))


def _fragment_rank(space, f: DatasetFeatures) -> float:
    """Mean rank of each caption's photo when its first fragment is the query."""
    with torch.no_grad():
        img = space.eval().embed_image(*(torch.as_tensor(a, dtype=torch.float32)
                                         for a in (f.pooled, f.logits, f.cells, f.mid))).numpy()
        txt = space.embed_text(torch.as_tensor(f.fragments[:, 0], dtype=torch.float32)).numpy()
    sim = txt @ img.T
    return float(np.mean((sim > sim[np.arange(len(sim)), f.caption_image][:, None]).sum(1)))


def test_itc_on_fragments_learns_them_and_without_a_share_trains_as_before(demo, text_encoder):
    _, f = demo
    classes = class_embeddings(text_encoder)
    bare = DatasetFeatures(**{k: v for k, v in f.__dict__.items() if k != "fragments"})
    tc = TrainConfig(seed=0, batch_size=16, lr=1e-3)
    plain, _, _ = train_itc(ModelConfig(), classes, bare, None, tc, epochs=12)
    same, _, _ = train_itc(ModelConfig(), classes, f, None, tc, epochs=12)  # fragments there, share 0
    for a, b in zip(plain.state_dict().values(), same.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    short, _, _ = train_itc(ModelConfig(), classes, f, None, TrainConfig(seed=0, batch_size=16, lr=1e-3,
                                                                         fragment_share=0.5), epochs=12)
    assert _fragment_rank(short, f) < 0.8 * _fragment_rank(plain, f)


def test_the_tops_tune_on_the_same_fragments_and_only_when_asked(demo_dir, tmp_path):
    """tops_fragment_share: the tops' tuning reads the captions' fragments, cut with the seed ITC
    cuts them with, from block_inputs' cache; fragment j of caption i is row M + i * FRAGMENTS + j
    and gives MiniLM's own vector of that fragment. At share 0 the tops are those of a tuning
    without fragments, to the bit; at 0.5 the text top moves elsewhere."""
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.encoders.tops import digest
    from retrieval.training.block_inputs import block_inputs
    from retrieval.training.fragments import fragment_texts
    from retrieval.training.tops import TextTop, text_batch, text_rows, tune

    ds = load_dataset(demo_dir)
    ie, te = load_image_encoder(image_size=256), load_text_encoder()
    maps, text = block_inputs(ds, ie, te, tmp_path / "cache", 1, fragment_seed=3)
    m = len(text["offsets"]) - 1
    assert m == len(ds.captions) and len(text["fragment_offsets"]) - 1 == FRAGMENTS * m
    states, offsets = text_rows(text)
    texts = fragment_texts([c.text for c in ds.captions], 3)
    rows = [0, 7 * FRAGMENTS + 1, (m - 1) * FRAGMENTS]
    with torch.no_grad():
        got = TextTop(te, 8, False, 1).eval().features(*text_batch(states, offsets, [m + r for r in rows])).numpy()
    want = te.encode([texts[r] for r in rows]).pooled
    assert (np.sum(got * want, 1) / np.linalg.norm(want, axis=1)).min() > 0.999

    caps_of = ds.captions_of()
    photos = np.tile([i for i, c in enumerate(caps_of) if c], 3)
    captions_only = {k: text[k] for k in ("states", "offsets")}
    # the first tuning in a process rounds differently from the next ones (test_tops.py's
    # test_tuned_tops_are_the_same_whether_the_block_inputs_were_cached_or_not): compare later ones
    tune(ie, te, maps, captions_only, caps_of, photos, 1, 0.5, 3)
    plain = tune(ie, te, maps, captions_only, caps_of, photos, 1, 0.5, 3)[1]
    off = tune(ie, te, maps, text, caps_of, photos, 1, 0.5, 3, fragment_share=0.0)[1]
    on = tune(ie, te, maps, text, caps_of, photos, 1, 0.5, 3, fragment_share=0.5)[1]
    assert digest(off["text"]) == digest(plain["text"]) and digest(off["image"]) == digest(plain["image"])
    assert digest(on["text"]) != digest(plain["text"])
