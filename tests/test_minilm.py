"""Our plain-torch MiniLM equals transformers' BertModel on the same weights and tokens."""

import numpy as np
import torch

from retrieval.encoders.text_encoder import model_dir


def test_matches_transformers_bertmodel(text_encoder):
    from transformers import AutoTokenizer, BertModel

    folder = str(model_dir())
    ref = BertModel.from_pretrained(folder, local_files_only=True).eval()
    ref_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    texts = ["A dog runs on the beach.", "two zebras", "An unusually long caption " * 5, "ünïcödé café"]
    enc, _ = text_encoder.tokenize(texts)
    want = ref_tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    assert torch.equal(enc["input_ids"], want["input_ids"])
    assert torch.equal(enc["attention_mask"], want["attention_mask"])
    with torch.no_grad():
        ours = text_encoder.network(enc["input_ids"], enc["attention_mask"])
        theirs = ref(**want).last_hidden_state
    m = want["attention_mask"].bool()
    np.testing.assert_allclose(ours[m].numpy(), theirs[m].numpy(), atol=2e-4)
