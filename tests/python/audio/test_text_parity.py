"""Parity of the extension's text_embed() with sentence-transformers, via the numpy reference.

text_embed([model,] text) must return what SentenceTransformer("all-MiniLM-L6-v2").encode(text)
returns, moved off the default manifest's text centre and normalised again: a 384-d
L2-normalised float32 vector, stored as a little-endian BLOB. The reference
(reference_bert.py) recomputes that from the raw sentence-transformers folder
(.cache/pretrained/all-MiniLM-L6-v2), independently of the ONNX export the extension runs.

Decision recorded here: for the empty string and whitespace-only text the extension returns
what sentence-transformers gives, the embedding of just [CLS] [SEP], not NULL or an error.
"""

import functools
import json

import numpy as np
import pytest

import reference_bert as ref
from conftest import DEFAULT_BUNDLE, open_connection

DIM = 384
TOL = 1e-4  # max |diff| per component against the float64 reference
NORM_TOL = 1e-5
SAME = 1e-6  # two calls that must give the same vector (same tokens, same model)
MAX_SEQ_LENGTH = 256

LONG_CAPTION = " ".join(
    f"Part {i}: a crowded market at dusk, vendors shouting prices over the hum of scooters, "
    f"a dog barking twice near the fruit stalls, rain starting to tap on canvas awnings, "
    f"and somewhere a radio playing an old song with a scratchy violin."
    for i in range(1, 9)
)  # about 330 words, far past the 256-token limit

# One token per word, so token counts are easy to control around the truncation boundary.
_WORDS = "dog cat bird rain wind car bell door water fire music voice".split()


def _words(n, offset=0):
    return " ".join(_WORDS[(i + offset) % len(_WORDS)] for i in range(n))


SENTENCES = [
    # ordinary captions
    pytest.param("A dog barks twice in the distance.", id="caption-dog"),
    pytest.param("Rain falling on a tin roof while thunder rumbles.", id="caption-rain"),
    pytest.param("A man speaks over crowd noise at a busy train station", id="caption-station"),
    pytest.param("birds", id="single-word"),
    pytest.param("The weather is lovely today.", id="sbert-docs-example"),
    # truncation at max_seq_length = 256 tokens, [CLS] and [SEP] included
    pytest.param(LONG_CAPTION, id="long-truncated"),
    pytest.param(_words(254), id="long-254-tokens-fits"),
    pytest.param(_words(255), id="long-255-tokens-cut-by-one"),
    pytest.param(_words(126) + " " + _words(70, 5), id="long-196-tokens-past-128"),
    # unicode
    pytest.param("Café crème brûlée, naïve façade, résumé", id="accents"),
    pytest.param("Cafe\u0301 decomposed accent", id="combining-accent"),
    pytest.param("東京の雨の音", id="cjk-japanese"),
    pytest.param("狗在远处叫了两声", id="cjk-chinese"),
    pytest.param("Привет, мир! Шум дождя.", id="cyrillic"),
    pytest.param("🎸 guitar riff 🔥🔥 with 👏 applause", id="emoji"),
    pytest.param("a" * 150, id="overlong-word-unk"),
    # punctuation-heavy
    pytest.param("!!! ??? ... --- *** ###", id="punctuation-only"),
    pytest.param("Hello,world!!!(really?)[yes]{no}<maybe>", id="punctuation-glued"),
    pytest.param("C++/C#; e-mail@example.com $100.00 (50%) 3.14159", id="symbols-numbers"),
    pytest.param("tab\tseparated\nlines\r\nand a bell\x07 char", id="control-chars"),
    # case: BERT uncased, both must equal the same reference
    pytest.param("A DOG BARKING LOUDLY IN THE YARD", id="upper-case"),
    pytest.param("a dog barking loudly in the yard", id="lower-case"),
    pytest.param("A Dog Barking Loudly In The Yard", id="title-case"),
    # leading / trailing whitespace (sentence-transformers strips it)
    pytest.param("   a cat meows   ", id="padded-spaces"),
    pytest.param("\t\na cat meows\n\t", id="padded-tabs-newlines"),
    # empty and whitespace-only: embedding of [CLS] [SEP]
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces-only"),
    pytest.param("\t\n \r\n", id="whitespace-mixed"),
    pytest.param("\u00a0\u3000", id="unicode-spaces-only"),
]


@functools.lru_cache(maxsize=None)
def _reference(model_dir: str, sentence: str) -> np.ndarray:
    return ref.encode(model_dir, [sentence])[0]


@functools.cache
def _default_centre():
    """The default bundle's text centre (fit-head --text-centre), or None."""
    centre = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["text"].get("centre")
    return None if centre is None else np.asarray(centre, dtype=np.float32).astype(np.float64)


def reference(minilm_dir, sentence):
    """sentence-transformers' embedding, moved off the default bundle's text centre and
    normalised again, as its manifest defines the default's text embedding."""
    v = _reference(str(minilm_dir), sentence)
    centre = _default_centre()
    if centre is None:
        return v
    v = v - centre
    return v / np.linalg.norm(v)


def blob_to_vec(blob):
    assert isinstance(blob, bytes), f"expected a BLOB, got {type(blob).__name__}"
    assert len(blob) == DIM * 4, f"BLOB is {len(blob)} bytes, expected {DIM}*4"
    return np.frombuffer(blob, dtype="<f4")


def embed(conn, *args):
    placeholders = ", ".join("?" for _ in args)
    (blob,) = conn.execute(f"SELECT text_embed({placeholders})", args).fetchone()
    return blob_to_vec(blob)


def max_diff(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@pytest.mark.parametrize("sentence", SENTENCES)
def test_matches_reference(conn, minilm_dir, sentence):
    """text_embed(text) equals sentence-transformers' encode(text) within 1e-4 per component."""
    got = embed(conn, sentence)
    want = reference(minilm_dir, sentence)
    d = max_diff(got, want)
    assert d <= TOL, f"max |diff| {d:.3g} > {TOL} for {sentence[:60]!r}"
    assert abs(np.linalg.norm(got.astype(np.float64)) - 1.0) <= NORM_TOL


def test_blob_format(conn):
    """The BLOB is 384 little-endian float32s, finite, with unit L2 norm within 1e-5."""
    (blob,) = conn.execute("SELECT text_embed('A dog barks.')").fetchone()
    assert isinstance(blob, bytes) and len(blob) == DIM * 4
    (typ,) = conn.execute("SELECT typeof(text_embed('A dog barks.'))").fetchone()
    assert typ == "blob"
    vec = np.frombuffer(blob, dtype="<f4")
    assert np.all(np.isfinite(vec))
    assert abs(np.linalg.norm(vec.astype(np.float64)) - 1.0) <= NORM_TOL


def test_null_gives_null(conn):
    """text_embed(NULL) is NULL, so it can run over a column with missing captions."""
    assert conn.execute("SELECT text_embed(NULL)").fetchone() == (None,)


def test_explicit_default_model(conn):
    """text_embed('default', x) is the same as the one-argument form text_embed(x)."""
    for text in ["x", "A dog barks twice in the distance.", ""]:
        d = max_diff(embed(conn, "default", text), embed(conn, text))
        assert d <= SAME, f"{text!r}: max |diff| {d:.3g}"


def test_case_insensitive(conn):
    """The model is uncased: upper-case and lower-case text give the same vector."""
    d = max_diff(
        embed(conn, "A DOG BARKING LOUDLY IN THE YARD"),
        embed(conn, "a dog barking loudly in the yard"),
    )
    assert d <= SAME


def test_surrounding_whitespace_ignored(conn):
    """Leading and trailing whitespace does not change the vector (sentence-transformers strips)."""
    base = embed(conn, "a cat meows")
    for text in ["   a cat meows", "a cat meows   ", "\t\na cat meows\n\t"]:
        assert max_diff(embed(conn, text), base) <= SAME, repr(text)


def test_empty_and_whitespace_are_cls_sep(conn, minilm_dir):
    """Empty and whitespace-only text all give the [CLS] [SEP] embedding, not NULL or an error."""
    assert ref.tokenize(minilm_dir, [""]) == [[101, 102]]
    want = reference(minilm_dir, "")
    for text in ["", " ", "   ", "\t\n\r\n", "\u00a0\u3000"]:
        d = max_diff(embed(conn, text), want)
        assert d <= TOL, f"{text!r}: max |diff| {d:.3g}"


def test_truncation_ignores_tail(conn, minilm_dir):
    """Past 256 tokens the text is cut: texts sharing the first 254 word tokens give one vector."""
    prefix = _words(254)
    assert len(ref.tokenize(minilm_dir, [prefix])[0]) == MAX_SEQ_LENGTH
    base = embed(conn, prefix)
    for tail in [" thunder", " a quiet morning with birds singing", " " + _words(300, 3)]:
        assert max_diff(embed(conn, prefix + tail), base) <= SAME, tail[:40]
    # ...while a change inside the window does change it (the check above is not vacuous).
    changed = _words(253) + " thunder"
    assert max_diff(embed(conn, changed), base) > 1e-3


def test_batch_independence(conn):
    """A sentence embedded alone equals the same sentence among other rows of one SELECT.

    Guards against state leaking between rows (padding to the longest row, reused buffers):
    the rows mix lengths, with a truncated one before short ones.
    """
    rows = [
        "A dog barks twice in the distance.",
        LONG_CAPTION,
        "birds",
        "",
        "東京の雨の音 🎸",
        "A dog barks twice in the distance.",
        _words(40),
    ]
    conn.execute("CREATE TABLE captions(id INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO captions(text) VALUES (?)", [(r,) for r in rows])
    batch = conn.execute("SELECT id, text_embed(text) FROM captions ORDER BY id").fetchall()
    assert [i for i, _ in batch] == list(range(1, len(rows) + 1))

    alone_conn = open_connection()  # a fresh connection: no state from the batch above
    try:
        for (i, blob), text in zip(batch, rows):
            d = max_diff(blob_to_vec(blob), embed(alone_conn, text))
            assert d <= SAME, f"row {i} {text[:40]!r}: max |diff| {d:.3g}"
    finally:
        alone_conn.close()

    # Several calls in one row of one statement, too.
    multi = conn.execute(
        "SELECT text_embed(?), text_embed(?), text_embed(?)", (rows[1], rows[2], rows[0])
    ).fetchone()
    for blob, text in zip(multi, [rows[1], rows[2], rows[0]]):
        assert max_diff(blob_to_vec(blob), embed(conn, text)) <= SAME
