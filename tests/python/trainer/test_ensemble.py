"""`audiotext-train ensemble` through SQL: an ensemble of two members (tiny encoders trained
here for one step on generated tones with different seeds, against the default's text encoder)
embeds with the summed dimension, scores as the mean of its members' scores, and feeds a vec0
index. Every clip is shorter than one window (10 s), where the mean is exact (see ensemble.rs
for longer files)."""

import hashlib
import json
import os

import numpy as np
import pytest

import make_audio as ma
from conftest import DEFAULT_BUNDLE, open_connection
from trainer_cli import RATE, trainer, write_tone_dataset

QUERIES = ["a dog barks", "a high beep", "rain on a roof", "a low hum"]


def vec(blob):
    return np.frombuffer(blob, dtype="<f4")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two members trained from scratch with the trainer's front-end (the default bundle's
    aiSFX front-end differs, and members must share one), with different seeds and licences."""
    root = tmp_path_factory.mktemp("ensemble")
    data = write_tone_dataset(root / "data")
    members = []
    for seed, license in [(3, "CC BY-NC 3.0 (generated test tones)"), (4, "CC0-1.0 (generated test tones)")]:
        run, member = root / f"run{seed}", root / f"member{seed}"
        trainer(
            "fit", "--data", data, "--text-bundle", DEFAULT_BUNDLE, "--out", run,
            "--epochs", 1, "--max-steps", 1, "--width", 2, "--batch-size", 8, "--max-seconds", 2,
            "--seed", seed, "--cache", root / "cache", "--data-license", license,
        )
        trainer("export", "--run", run, "--out", member, "--text-bundle", DEFAULT_BUNDLE)
        members.append(member)
    ensemble = root / "ensemble"
    built = trainer(
        "ensemble", "--member", members[0], "--member", members[1], "--out", ensemble, "--name", "test ensemble"
    )
    return {"members": members, "ensemble": ensemble, "stdout": built.stdout, "root": root}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Clips shorter than one window: a chirp, noise, a tone, a tone burst over noise."""
    folder = tmp_path_factory.mktemp("ensemble-clips")
    t = np.arange(int(RATE * 2.0)) / RATE
    signals = {
        "chirp.wav": ma.chirp(200, 8000, RATE, 3.0),
        "noise.wav": ma.white_noise(RATE, 2.5, 0.3, seed=4),
        "tone.wav": ma.sine(2700, RATE, 1.5),
        "burst.wav": ma.white_noise(RATE, 2.0, 0.05, seed=5) + 0.4 * np.sin(2 * np.pi * 600 * t) * (t > 0.7),
    }
    for name, signal in signals.items():
        ma.write_wav(folder / name, np.clip(signal, -0.99, 0.99).astype(np.float32), RATE, "f32")
    return folder


@pytest.fixture
def econn(bundles):
    conn = open_connection()
    for name, path in [("m0", bundles["members"][0]), ("m1", bundles["members"][1]), ("ens", bundles["ensemble"])]:
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES (?, ?)", (name, str(path)))
    yield conn
    conn.close()


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_manifest_records_members_dims_and_licences(bundles):
    m0, m1 = (manifest(p) for p in bundles["members"])
    ens = manifest(bundles["ensemble"])
    assert ens["name"] == "test ensemble"
    assert ens["embedding_dim"] == m0["embedding_dim"] + m1["embedding_dim"]
    assert sorted(ens["files"]) == ["audio.onnx", "text.onnx", "tokenizer.json"]
    for name, digest in ens["files"].items():
        assert sha256(bundles["ensemble"] / name) == digest
    record = ens["training"]["ensemble"]
    assert "sqrt(2)" in record["formula"]
    assert [m["manifest_sha256"] for m in record["members"]] == [
        sha256(p / "manifest.json") for p in bundles["members"]
    ]
    assert [m["embedding_dim"] for m in record["members"]] == [m0["embedding_dim"], m1["embedding_dim"]]
    assert record["check"]["audio_max_abs_diff"] <= 1e-5
    assert "CC BY-NC 3.0" in ens["license"] and "CC0-1.0 (generated test tones)" in ens["license"]
    assert ens["license"].count("text encoder: Apache-2.0") == 1, "a clause the members share appears once"
    # The members share all-MiniLM-L6-v2 byte for byte: the ensemble holds one copy of it.
    assert m0["files"]["text.onnx"] == m1["files"]["text.onnx"]
    text_bytes = (bundles["ensemble"] / "text.onnx").stat().st_size
    assert text_bytes < 1.01 * (DEFAULT_BUNDLE / "text.onnx").stat().st_size
    assert "1 text graph(s) for 2 members" in bundles["stdout"]


def test_embeddings_are_the_scaled_concatenation_and_scores_the_mean(econn, clips):
    dim = econn.execute("SELECT length(text_embed('ens', 'x')) / 4").fetchone()[0]
    dims = [econn.execute(f"SELECT length(text_embed('{m}', 'x')) / 4").fetchone()[0] for m in ("m0", "m1")]
    assert dim == sum(dims)
    spread = 0.0
    for clip in sorted(clips.iterdir()):
        audio = {m: vec(econn.execute("SELECT audio_embed(?, ?)", (m, str(clip))).fetchone()[0]) for m in ("m0", "m1", "ens")}
        assert len(audio["ens"]) == dim
        assert np.abs(audio["ens"] - np.concatenate([audio["m0"], audio["m1"]]) / np.sqrt(2)).max() < 1e-5
        assert abs(np.linalg.norm(audio["ens"]) - 1.0) < 1e-5
        for query in QUERIES:
            scores = {
                m: econn.execute("SELECT audio_text_score(?, audio_embed(?, ?), ?)", (m, m, str(clip), query)).fetchone()[0]
                for m in ("m0", "m1", "ens")
            }
            assert abs(scores["ens"] - (scores["m0"] + scores["m1"]) / 2) < 1e-5, (clip.name, query, scores)
            spread = max(spread, abs(scores["m0"] - scores["m1"]))
    assert spread > 0.05, "the members must disagree for the mean to be tested"
    for query in QUERIES:
        text = {m: vec(econn.execute("SELECT text_embed(?, ?)", (m, query)).fetchone()[0]) for m in ("m0", "m1", "ens")}
        assert np.abs(text["ens"] - np.concatenate([text["m0"], text["m1"]]) / np.sqrt(2)).max() < 1e-5


def test_vec0_knn_over_ensemble_embeddings(econn, clips):
    dim = econn.execute("SELECT length(text_embed('ens', 'x')) / 4").fetchone()[0]
    econn.executescript(f"CREATE VIRTUAL TABLE idx USING vec0(embedding float[{dim}] distance_metric=cosine)")
    econn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT, embedding BLOB)")
    econn.execute("INSERT INTO clips(path, embedding) SELECT path, embedding FROM audio_embed_files(?, 'ens')", (str(clips),))
    econn.execute("INSERT INTO idx(rowid, embedding) SELECT id, embedding FROM clips")
    assert econn.execute("SELECT count(*) FROM idx").fetchone()[0] == 4
    query = "a high pitched tone"
    knn = econn.execute(
        "SELECT rowid, distance FROM idx WHERE embedding MATCH text_embed('ens', ?) AND k = 4 ORDER BY distance",
        (query,),
    ).fetchall()
    by_score = econn.execute(
        "SELECT id, audio_text_score('ens', embedding, ?) AS s FROM clips ORDER BY s DESC", (query,)
    ).fetchall()
    assert [r[0] for r in knn] == [r[0] for r in by_score]
    for (_, distance), (_, score) in zip(knn, by_score):
        assert abs(distance - (1.0 - score)) < 1e-5
    # A clip's own embedding finds itself.
    own = econn.execute("SELECT id, embedding FROM clips WHERE path LIKE '%tone.wav'").fetchone()
    nearest = econn.execute("SELECT rowid FROM idx WHERE embedding MATCH ? AND k = 1", (own[1],)).fetchone()[0]
    assert nearest == own[0]


def test_cli_refuses_a_single_member_and_mismatched_front_ends(bundles):
    single = trainer("ensemble", "--member", bundles["members"][0], "--out", bundles["root"] / "single", check=False)
    assert single.returncode == 2
    assert "an ensemble needs at least two --member bundles, got 1" in single.stderr
    # The trained member with another fmax (its files linked, its manifest edited).
    other = bundles["root"] / "other-fmax"
    other.mkdir()
    for name in ("text.onnx", "tokenizer.json", "audio.onnx"):
        os.symlink(bundles["members"][1] / name, other / name)
    edited = manifest(bundles["members"][1])
    edited["audio"]["fmax"] = 8000.0
    (other / "manifest.json").write_text(json.dumps(edited))
    mismatch = trainer(
        "ensemble", "--member", bundles["members"][0], "--member", other, "--out", bundles["root"] / "mismatch", check=False
    )
    assert mismatch.returncode == 2
    assert "differ in audio.fmax: 14000.0 vs 8000.0" in mismatch.stderr, mismatch.stderr
    assert str(other.resolve()) in mismatch.stderr
