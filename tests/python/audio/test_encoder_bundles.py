"""Every encoder, pooling head and loss of the trainer, end to end through the CLI and SQL:
`fit` one step on generated tones, `export` (which checks ONNX Runtime against the trainer and
fails above 1e-4), then the SQLite extension loads the bundle and embeds a clip and a caption
with it, and librosa + onnxruntime reproduce the extension's embedding from nothing but the
bundle's manifest. The comparison's bundles are built the same way (scripts/compare.sh)."""

import json

import numpy as np
import pytest

import make_audio as ma
from conftest import DEFAULT_BUNDLE, open_connection
from trainer_cli import RATE, trainer, write_tone_dataset

CONFIGS = (
    [(encoder, "mean-max", "infonce") for encoder in ["cnn6", "cnn10", "cnn14", "resnet38", "crnn", "tcn", "spec2vec", "wavegram-logmel"]]
    + [("cnn10", pooling, "infonce") for pooling in ["mean", "max", "lstm-last", "lstm-mean", "netvlad", "netrvlad"]]
    + [("tcn", "mean-max", loss) for loss in ["ntxent", "triplet-weighted", "cosine", "infonce+0.1*vicreg"]]
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    write_tone_dataset(root / "data")
    clip = root / "chirp.wav"
    ma.write_wav(clip, ma.chirp(200, 8000, RATE, 12.5).astype(np.float32), RATE, "f32")
    return root


@pytest.mark.parametrize("encoder,pooling,loss", CONFIGS, ids=lambda v: v)
def test_trains_exports_and_embeds_in_sql(workdir, encoder, pooling, loss):
    manifest = fit_export_and_embed(workdir, encoder, pooling, loss)
    # Waveform encoders name their second input; the others have none.
    assert manifest["audio"]["input"].get("waveform") == ("waveform" if encoder == "wavegram-logmel" else None)
    assert_reproduced_from_the_manifest(workdir, encoder, pooling, loss)


@pytest.mark.parametrize("encoder", ["cnn10", "tcn", "wavegram-logmel"])
def test_multiscale_mel_trains_exports_and_embeds_in_sql(workdir, encoder):
    manifest = fit_export_and_embed(workdir, encoder, "mean-max", "infonce", ["--multiscale", "256,512"])
    audio = manifest["audio"]
    assert audio["multiscale_win_lengths"] == [256, 512]
    assert audio["input"]["layout"] == "batch,frames,channels,mels"
    assert audio["encoder"]["config"]["input_channels"] == 3
    assert_reproduced_from_the_manifest(workdir, encoder, "mean-max", "infonce", ["--multiscale", "256,512"])


def assert_reproduced_from_the_manifest(workdir, encoder, pooling, loss, extra=()):
    """librosa + onnxruntime, reading nothing but the manifest, embed the 12.5 s clip as
    audio_embed does (test_manifest_reproduction.py). A one-step model maps every sound to
    nearly the same direction, so a cosine bar would pass anything: the reproduction must
    instead land within 1% of the distance between the embeddings of two different sounds.
    Such a model's waveform branch contributes almost nothing yet (its BatchNorm statistics are
    untrained), so this shows the manifest's `waveform` input is fed, not what it is fed: that
    contract is tested on a hand-made graph in crates/audiotext-core/src/audio_encoder.rs
    (`waveform_input_gets_each_windows_samples`)."""
    pytest.importorskip("librosa", reason="librosa is in tests/python/requirements.txt")
    from test_manifest_reproduction import ours, reproduce

    bundle = workdir / "bundles" / run_name(encoder, pooling, loss, extra)
    manifest = json.loads((bundle / "manifest.json").read_text())
    clip, other = workdir / "chirp.wav", sorted((workdir / "data" / "audio").iterdir())[0]
    conn = open_connection()
    try:
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('m', ?)", (str(bundle),))
        chirp, tone = ours(conn, clip), ours(conn, other)
    finally:
        conn.close()
    between = float(np.linalg.norm(chirp - tone))
    assert between > 1e-4, f"the model does not tell a chirp from a tone ({between:.2e})"
    error = float(np.linalg.norm(chirp - reproduce(clip, manifest, bundle)))
    assert error <= 0.01 * between, (error, between)


def fit_export_and_embed(workdir, encoder, pooling, loss, extra=()):
    """Trains one step, exports (with its parity check), embeds a 12.5 s clip and a caption in
    SQL; returns the bundle's manifest."""
    name = run_name(encoder, pooling, loss, extra)
    run, bundle = workdir / "runs" / name, workdir / "bundles" / name
    trainer(
        "fit", "--data", workdir / "data", "--text-bundle", DEFAULT_BUNDLE, "--out", run,
        "--encoder", encoder, "--pooling", pooling, "--loss", loss, "--clusters", 3,
        "--epochs", 1, "--max-steps", 1, "--width", 2, "--batch-size", 8, "--max-seconds", 2,
        "--seed", 5, "--cache", workdir / "cache", "--data-license", "CC0-1.0 (generated test tones)",
        *extra,
    )
    exported = trainer("export", "--run", run, "--out", bundle, "--checkpoint", "last")
    assert "parity: max |diff|" in exported.stdout

    manifest = json.loads((bundle / "manifest.json").read_text())
    described = manifest["audio"]["encoder"]
    assert described["config"]["architecture"]["kind"] == encoder
    saved_pooling = described["config"]["pooling"]
    if pooling.startswith("lstm-"):
        assert saved_pooling == {"kind": "lstm", "hidden": saved_pooling["hidden"], "last": pooling == "lstm-last"}
    else:
        assert saved_pooling["kind"] == pooling
    # The run config writes every option of the spec out (e.g. `cosine:margin=0`).
    saved = manifest["training"]["audio_encoder"]["hyperparameters"]["loss"]
    assert [t.split(":")[0] for t in saved.split("+")] == [t.split(":")[0] for t in loss.split("+")]

    conn = open_connection()
    try:
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('m', ?)", (str(bundle),))
        # 12.5 s: two windows (10 s + 2.5 s), so the windowing and any padding are exercised.
        (audio,) = conn.execute("SELECT audio_embed('m', ?)", (str(workdir / "chirp.wav"),)).fetchone()
        (score,) = conn.execute(
            "SELECT audio_text_score('m', audio_embed('m', ?), 'a rising whistle')",
            (str(workdir / "chirp.wav"),),
        ).fetchone()
    finally:
        conn.close()
    a = np.frombuffer(audio, dtype="<f4")
    assert a.shape == (manifest["embedding_dim"],)
    assert np.all(np.isfinite(a)) and abs(np.linalg.norm(a) - 1.0) < 1e-5
    assert -1.0 <= score <= 1.0
    return manifest


def run_name(encoder, pooling, loss, extra=()):
    return f"{encoder}-{pooling}-{loss}-{'-'.join(extra)}".replace("*", "x").replace("+", "p").replace(",", "_")
