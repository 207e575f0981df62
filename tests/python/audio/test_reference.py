"""Tests of the numpy reference (reference_bert.py) itself; none of them needs the extension.

The parity tests trust this reference, so it is checked here against things that do not come
from it: similarity values published in the sentence-transformers documentation for
all-MiniLM-L6-v2, tokenizer invariants, and basic semantic sanity.
"""

import json

import numpy as np

import reference_bert as ref

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
CLS, SEP = 101, 102


def test_tokenize_adds_cls_and_sep(minilm_dir):
    """Every sequence is [CLS] ... [SEP], and the empty string is exactly [CLS] [SEP]."""
    ids = ref.tokenize(minilm_dir, ["a dog", ""])
    assert ids[0][0] == CLS and ids[0][-1] == SEP and len(ids[0]) == 4
    assert ids[1] == [CLS, SEP]


def test_tokenize_truncates_at_max_seq_length(minilm_dir):
    """Long text is cut to 256 tokens *including* [CLS]/[SEP] (not 128 as tokenizer.json says)."""
    (ids,) = ref.tokenize(minilm_dir, ["word " * 1000])
    assert len(ids) == MAX_SEQ_LENGTH
    assert ids[0] == CLS and ids[-1] == SEP
    assert set(ids[1:-1]) == {ref.tokenize(minilm_dir, ["word"])[0][1]}


def test_tokenize_boundary(minilm_dir):
    """254 content tokens fit exactly; 255 lose the last one (off-by-one guard)."""
    (fits,) = ref.tokenize(minilm_dir, ["dog " * 254])
    (cut,) = ref.tokenize(minilm_dir, ["dog " * 255])
    assert len(fits) == len(cut) == MAX_SEQ_LENGTH
    assert fits == cut


def test_tokenize_strips_and_lowercases(minilm_dir):
    """sentence-transformers strips the text; BertNormalizer lowercases and strips accents."""
    a, b, c, d = ref.tokenize(minilm_dir, ["  A Café  ", "a cafe", "\t\n", "\u00a0\u3000"])
    assert a == b
    assert c == d == [CLS, SEP]


def test_unit_norm(minilm_dir):
    """modules.json lists Normalize, so every embedding (empty string included) has unit L2 norm."""
    emb = ref.encode(minilm_dir, ["A dog barks.", "", "word " * 400, "東京 🎸"])
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_matches_published_similarities(minilm_dir):
    """Reproduce the cosine and Manhattan matrices printed in the sentence-transformers docs.

    sbert.net's usage page prints, for all-MiniLM-L6-v2, cosine similarities
    0.6660 / 0.1046 / 0.1411 and Manhattan distances 12.6269 / 20.2167 / 20.1288 for these
    three sentences. Manhattan distance sums |diff| over all 384 components, so matching it to
    4 decimals checks the whole vectors, not just their angles.
    """
    emb = ref.encode(
        minilm_dir,
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    ).astype(np.float64)
    cos = emb @ emb.T
    manhattan = np.abs(emb[:, None, :] - emb[None, :, :]).sum(-1)
    np.testing.assert_allclose(
        [cos[0, 1], cos[0, 2], cos[1, 2]], [0.6660, 0.1046, 0.1411], atol=1e-4
    )
    np.testing.assert_allclose(
        [manhattan[0, 1], manhattan[0, 2], manhattan[1, 2]],
        [12.6269, 20.2167, 20.1288],
        atol=2e-4,
    )


def test_paraphrase_closer_than_unrelated(minilm_dir):
    """A paraphrase scores cosine > 0.5 and well above an unrelated sentence."""
    a, para, other = ref.encode(
        minilm_dir,
        [
            "A dog is barking loudly in the yard.",
            "In the garden a dog barks noisily.",
            "The stock market closed higher on Tuesday.",
        ],
    )
    assert float(a @ para) > 0.5
    assert float(a @ other) < 0.3
    assert float(a @ para) > float(a @ other) + 0.3


def test_uppercase_equals_lowercase(minilm_dir):
    """The model is uncased: upper and lower case give the same tokens, hence the same vector."""
    up, low = ref.encode(minilm_dir, ["A DOG BARKING LOUDLY", "a dog barking loudly"])
    np.testing.assert_array_equal(up, low)


def test_other_pooling_modes(minilm_dir, tmp_path):
    """cls / max / mean_sqrt_len pooling (used by other sentence-transformers folders) are wired right.

    A copy of the folder's configs (same weights, no Normalize module) is given each pooling
    mode in turn, and the result is compared with the token states from bert_forward.
    """
    for name in ["config.json", "tokenizer.json", "sentence_bert_config.json"]:
        (tmp_path / name).write_bytes((minilm_dir / name).read_bytes())
    (tmp_path / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    modules = json.loads((minilm_dir / "modules.json").read_text())
    (tmp_path / "modules.json").write_text(
        json.dumps([m for m in modules if not m["type"].endswith(".Normalize")])
    )
    (tmp_path / "1_Pooling").mkdir()

    sentence = "A dog barks at the mailman."
    (ids,) = ref.tokenize(minilm_dir, [sentence])
    states = ref.bert_forward(ref.load_model(str(minilm_dir)), ids)
    expected = {
        "pooling_mode_cls_token": states[0],
        "pooling_mode_max_tokens": states.max(axis=0),
        "pooling_mode_mean_tokens": states.mean(axis=0),
        "pooling_mode_mean_sqrt_len_tokens": states.sum(axis=0) / np.sqrt(len(ids)),
    }
    for key, want in expected.items():
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({key: True}))
        (got,) = ref.encode(tmp_path, [sentence])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=key)
    # Without Normalize, mean pooling is not unit norm: the module list is really consulted.
    assert abs(np.linalg.norm(expected["pooling_mode_mean_tokens"]) - 1.0) > 1e-3
