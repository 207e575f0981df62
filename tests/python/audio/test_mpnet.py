"""MPNet export: `audiotext-train export-text` on an MPNet-family sentence-transformers folder.

all-mpnet-base-v2 (the DCASE 2023 baseline's text encoder) cannot be downloaded here, so a tiny
MPNet with random weights is generated at test time in exactly the layout sentence-transformers
saves (HF MPNetModel tensor names, a WordPiece tokenizer.json with MPNet's <s> ... </s>
post-processor and ids <s> 0, <pad> 1, </s> 2, <unk> 3, modules.json, 1_Pooling). Its
max_position_embeddings is all-mpnet-base-v2's 514 and its max_seq_length 140 reaches past the
relative-position max distance (128), so every kind of relative-position bucket is used.

The exported text.onnx, run in onnxruntime on padded batches, and the extension's text_embed()
on the registered bundle must both match the independent numpy reference (reference_mpnet.py)
within 1e-4 per component.
"""

import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors

import reference_mpnet as ref
from conftest import DIST

TOL = 1e-4  # max |diff| per component against the float64 reference
NORM_TOL = 1e-5
HIDDEN, HEADS, LAYERS, INTER = 32, 4, 2, 64
MAX_POSITIONS = 514  # as all-mpnet-base-v2: 512 tokens after padding_idx 1
MAX_SEQ_LENGTH = 140
BUCKETS = 32
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
BOS, PAD, EOS, UNK = 0, 1, 2, 3
WORDS = (
    "a the dog cat bird barks barking meows sings rain falls on roof tin loud quiet "
    "in distance car horn man woman speaks crowd train station music guitar cafe creme "
    "hello world really yes no upper case dogs"
).split()
PIECES = ["##s", "##ing", "##ed", "##er", ".", ",", "!", "?", "(", ")", "雨", "东"]

# Content words only, one token each, for length control around truncation.
_FILL = "dog cat bird rain car horn man woman music guitar".split()


def _words(n, offset=0):
    return " ".join(_FILL[(i + offset) % len(_FILL)] for i in range(n))


SENTENCES = [
    pytest.param("A dog barks.", id="caption-dog"),
    pytest.param("Rain falls on a tin roof in the distance", id="caption-rain"),
    pytest.param("a man speaks over crowd noise at a train station", id="unknown-word"),
    pytest.param("birds", id="single-word-subword"),
    pytest.param("", id="empty"),
    pytest.param(" \t\n ", id="whitespace-only"),
    pytest.param(_words(MAX_SEQ_LENGTH - 2), id="fits-exactly"),
    pytest.param(_words(MAX_SEQ_LENGTH - 1), id="cut-by-one"),
    pytest.param(_words(400, 3) + " thunder", id="long-truncated"),
    pytest.param("Café Crème!", id="accents"),
    pytest.param("雨の音 东京", id="cjk"),
    pytest.param("🎸 guitar riff 🔥 with Привет applause", id="emoji-cyrillic"),
    pytest.param("Hello,world!!!(really?)", id="punctuation-glued"),
    pytest.param("UPPER CASE DOG", id="upper-case"),
    pytest.param("a dog <pad> barks", id="literal-pad-token"),
    pytest.param("<s> nested </s> specials", id="literal-bos-eos"),
]
TEXTS = [p.values[0] for p in SENTENCES]


def _write_tiny_mpnet(folder):
    """A tiny random MPNet in sentence-transformers' layout; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_list = SPECIALS + WORDS + PIECES + ["<mask>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}

    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # MPNet's fast tokenizer (transformers' MPNetConverter): <s> A </s>, <s> A </s></s> B </s>.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B:1 </s>:1",
        special_tokens=[("<s>", BOS), ("</s>", EOS)],
    )
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS + ["<mask>"]])
    # What a downloaded tokenizer.json carries; the reference and the extension replace both.
    tok.enable_truncation(max_length=512)
    tok.enable_padding(pad_id=PAD, pad_token="<pad>")
    tok.save(str(folder / "tokenizer.json"))

    config = {
        "architectures": ["MPNetForMaskedLM"],
        "model_type": "mpnet",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTER,
        "hidden_act": "gelu",
        "vocab_size": len(vocab_list),
        "max_position_embeddings": MAX_POSITIONS,
        "relative_attention_num_buckets": BUCKETS,
        "layer_norm_eps": 1e-5,
        "bos_token_id": BOS,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    rng = np.random.default_rng(2023)

    def normal(*shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def linear(out_f, in_f):
        return normal(out_f, in_f, std=1.0 / np.sqrt(in_f)), normal(out_f, std=0.1)

    w = {
        "embeddings.word_embeddings.weight": normal(len(vocab_list), HIDDEN, std=0.5),
        "embeddings.position_embeddings.weight": normal(MAX_POSITIONS, HIDDEN, std=0.5),
        "embeddings.LayerNorm.weight": 1.0 + normal(HIDDEN, std=0.1),
        "embeddings.LayerNorm.bias": normal(HIDDEN, std=0.1),
        # Large enough that the bias shapes attention as much as the content does.
        "encoder.relative_attention_bias.weight": normal(BUCKETS, HEADS, std=1.5),
    }
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}."
        for name, (out_f, in_f) in {
            "attention.attn.q": (HIDDEN, HIDDEN),
            "attention.attn.k": (HIDDEN, HIDDEN),
            "attention.attn.v": (HIDDEN, HIDDEN),
            "attention.attn.o": (HIDDEN, HIDDEN),
            "intermediate.dense": (INTER, HIDDEN),
            "output.dense": (HIDDEN, INTER),
        }.items():
            w[p + name + ".weight"], w[p + name + ".bias"] = linear(out_f, in_f)
        for norm in ["attention.LayerNorm", "output.LayerNorm"]:
            w[p + norm + ".weight"] = 1.0 + normal(HIDDEN, std=0.1)
            w[p + norm + ".bias"] = normal(HIDDEN, std=0.1)
    # MPNetModel's pooler: saved, unused by the sentence embedding.
    w["pooler.dense.weight"], w["pooler.dense.bias"] = linear(HIDDEN, HIDDEN)
    save_file(w, str(folder / "model.safetensors"))

    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": HIDDEN,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    return folder


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory):
    return _write_tiny_mpnet(tmp_path_factory.mktemp("models") / "tiny-mpnet")


@pytest.fixture(scope="module")
def bundle(mpnet_dir, tmp_path_factory):
    exe = DIST / "audiotext-train"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: build it with scripts/build.sh")
    out = tmp_path_factory.mktemp("bundles") / "tiny-mpnet"
    done = subprocess.run(
        [str(exe), "export-text", "--from", str(mpnet_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def session(bundle):
    return ort.InferenceSession(str(bundle / "text.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def reference(mpnet_dir):
    """Reference embeddings of TEXTS, one unpadded sentence at a time."""
    return dict(zip(TEXTS, ref.encode(mpnet_dir, TEXTS)))


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _run(session, rows, pad_id, left=False):
    """Runs text.onnx on token rows padded to the longest with `pad_id` (mask 0 there)."""
    width = max(map(len, rows))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    (emb,) = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
    return emb


# --- the reference itself ------------------------------------------------------------------


def test_bucket_function_matches_hand_computed_values():
    """T5/MPNet buckets for 32 buckets, max distance 128, worked out by hand.

    Keys before the query (key - query < 0) use buckets 0..15, keys after it 16..31. Distances
    0..7 are exact; a distance d >= 8 goes to 8 + floor(8 * ln(d / 8) / ln(16)), at most 15.
    """
    cases = {
        0: 0, -1: 1, -7: 7, -8: 8, -11: 8, -12: 9, -16: 10, -22: 10, -23: 11,
        -32: 12, -45: 12, -46: 13, -64: 14, -90: 14, -91: 15, -128: 15, -511: 15,
        1: 17, 7: 23, 8: 24, 16: 26, 32: 28, 64: 30, 91: 31, 128: 31, 511: 31,
    }
    rel = np.array(list(cases))
    assert ref.relative_position_bucket(rel).tolist() == list(cases.values())
    # Boundaries 16, 32, 64 are exact powers of two: float32 and float64 logs agree on them
    # (and on every distance a 512-token table holds).
    d = np.arange(8, 4096)
    exact = 8 + np.floor(8 * np.log(d / 8) / np.log(16)).astype(np.int64)
    assert (ref.relative_position_bucket(-d) == np.minimum(exact, 15)).all()


def test_position_ids_follow_hf():
    """Real tokens count from padding_idx + 1; <pad> (id 1) stays at padding_idx."""
    assert ref.position_ids([BOS, 7, 8, EOS]).tolist() == [2, 3, 4, 5]
    assert ref.position_ids([BOS, 7, EOS, PAD, PAD]).tolist() == [2, 3, 4, 1, 1]
    assert ref.position_ids([PAD, PAD, BOS, 7, EOS]).tolist() == [1, 1, 2, 3, 4]


def test_tokenizer_is_mpnet_shaped(mpnet_dir):
    """<s> ... </s> around the text, the empty string is <s></s>, truncation at 140 tokens."""
    a, empty, long_, pad = ref.tokenize(mpnet_dir, ["a dog", "", _words(400), "dog <pad> cat"])
    assert a[0] == BOS and a[-1] == EOS and len(a) == 4
    assert empty == [BOS, EOS]
    assert len(long_) == MAX_SEQ_LENGTH and long_[-1] == EOS
    assert pad[2] == PAD


def test_reference_padding_and_order(mpnet_dir):
    """The reference is padding-invariant the way HF is, and positions and bias matter."""
    model = ref.load_model(str(mpnet_dir))
    (ids,) = ref.tokenize(mpnet_dir, ["the dog barks on a tin roof"])
    alone = ref.mpnet_forward(model, ids)
    padded = ref.mpnet_forward(model, ids + [PAD] * 5, [1] * len(ids) + [0] * 5)
    np.testing.assert_allclose(padded[: len(ids)], alone, atol=1e-12)
    # Mean pooling of a bag of words would not see word order; positions must.
    a, b = ref.encode(mpnet_dir, ["dog cat", "cat dog"])
    assert max_diff(a, b) > 1e-2
    # The relative position bias changes the embedding (the test below is not vacuous).
    (with_bias,) = ref.encode(mpnet_dir, [_words(60)])
    (without,) = ref.encode(mpnet_dir, [_words(60)], with_position_bias=False)
    assert max_diff(with_bias, without) > 1e-2


# --- the export ------------------------------------------------------------------------------


def test_manifest_and_graph(bundle):
    """The manifest says mpnet; the graph is valid ONNX with the exact bucket table."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    text = manifest["text"]
    assert manifest["embedding_dim"] == HIDDEN
    assert text["max_tokens"] == MAX_SEQ_LENGTH and text["pooling"] == "mean"
    assert text["source"]["model_type"] == "mpnet"
    assert text["source"]["relative_attention_num_buckets"] == BUCKETS

    model = onnx.load(str(bundle / "text.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    tables = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    table = tables["encoder.relative_position_buckets"]
    n = MAX_POSITIONS - 2
    assert table.shape == (n, n)
    positions = np.arange(n)
    want = ref.relative_position_bucket(positions[None, :] - positions[:, None])
    np.testing.assert_array_equal(table, want)


def test_onnx_matches_reference_in_padded_batches(session, mpnet_dir, reference):
    """text.onnx on one padded batch of all sentences equals the reference per sentence.

    Padded with <pad> on the right (sentence-transformers), with 0 on the right (the
    extension pads with 0 and masks), and with <pad> on the left: positions and the relative
    bias of the real tokens must not change.
    """
    rows = ref.tokenize(mpnet_dir, TEXTS)
    assert len({len(r) for r in rows}) > 5  # really padded
    want = np.stack([reference[t] for t in TEXTS])
    diffs = {}
    for label, pad_id, left in [("pad-right", PAD, False), ("zero-right", 0, False), ("pad-left", PAD, True)]:
        got = _run(session, rows, pad_id, left)
        diffs[label] = max_diff(got, want)
        np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, atol=NORM_TOL)
    # One at a time, unpadded.
    diffs["alone"] = max(max_diff(_run(session, [r], PAD)[0], reference[t]) for r, t in zip(rows, TEXTS))
    print(f"\ntext.onnx vs reference, max |diff|: {diffs}")
    assert all(d <= TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("sentence", SENTENCES)
def test_text_embed_matches_reference(conn, bundle, reference, sentence):
    """text_embed('tiny_mpnet', text) on the registered bundle equals the reference."""
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('tiny_mpnet', ?)", (str(bundle),))
    (blob,) = conn.execute("SELECT text_embed('tiny_mpnet', ?)", (sentence,)).fetchone()
    got = np.frombuffer(blob, dtype="<f4")
    assert got.shape == (HIDDEN,)
    d = max_diff(got, reference[sentence])
    assert d <= TOL, f"max |diff| {d:.3g} > {TOL} for {sentence[:50]!r}"
    assert abs(np.linalg.norm(got.astype(np.float64)) - 1.0) <= NORM_TOL


def test_text_embed_over_a_table(conn, bundle, reference):
    """Every row of one statement matches, and reports the largest difference seen."""
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('tiny_mpnet', ?)", (str(bundle),))
    conn.execute("CREATE TABLE captions(id INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO captions(text) VALUES (?)", [(t,) for t in TEXTS])
    rows = conn.execute("SELECT text, text_embed('tiny_mpnet', text) FROM captions ORDER BY id").fetchall()
    worst = max(max_diff(np.frombuffer(blob, dtype="<f4"), reference[text]) for text, blob in rows)
    print(f"\ntext_embed vs reference over {len(rows)} rows, max |diff|: {worst:.3g}")
    assert worst <= TOL
    # Truncation: the tail past 140 tokens changes nothing, a change inside the window does.
    base = _words(MAX_SEQ_LENGTH - 2)
    (a,) = conn.execute("SELECT text_embed('tiny_mpnet', ?)", (base,)).fetchone()
    (b,) = conn.execute("SELECT text_embed('tiny_mpnet', ?)", (base + " guitar music",)).fetchone()
    (c,) = conn.execute("SELECT text_embed('tiny_mpnet', ?)", ("guitar " + base,)).fetchone()
    assert max_diff(np.frombuffer(a, "<f4"), np.frombuffer(b, "<f4")) <= 1e-6
    assert max_diff(np.frombuffer(a, "<f4"), np.frombuffer(c, "<f4")) > 1e-3
