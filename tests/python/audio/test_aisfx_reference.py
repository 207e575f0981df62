"""The aiSFX backbone export against an independent numpy reference (reference_aisfx.py).

`audiotext-train export-backbone --encoder aisfx --pretrained CKPT --out DIR` writes
DIR/backbone.onnx: input `log_mel` float32 [batch, 1, frames, 96], output `embedding` float32
[batch, 512], aiSFX's EmbeddingNet (Ma and Lerch, ISMIR 2022) with the weights of the aisfx 0.1.2
wheel's checkpoint (fetched at set-up into .cache/pretrained/aisfx). ONNX Runtime runs it on
log-mels of real ESC-50 clips and of generated sounds, at several frame counts (odd ones
exercise the floor of the 2x2 max pooling), and must agree with the float64 numpy reference
within 1e-4 absolute. The embeddings are of order 1 (max about 5-7 on ESC-50 clips) and a float32
forward lands within about 1.5e-6 of the reference, so 1e-4 has ample room for float32
rounding while a transposed kernel, a BatchNorm eps of 1e-3 or ceil pooling each miss by more
than 0.5.

The reference's own checks need no trainer: its checkpoint reader against values written
without it (make_checkpoints.py) and against the real checkpoint's structure, its refusal to
run code named by a pickle, its layers against a loop-by-loop transcription of their
definitions, and its input features against the checkpoint's BatchNorm statistics.
"""

import collections
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import make_audio as ma
import reference_aisfx as ref
from conftest import HELPERS, ROOT
from trainer_cli import TRAINER, trainer

ort = pytest.importorskip("onnxruntime")
librosa = pytest.importorskip("librosa", reason="librosa is in tests/python/requirements.txt")

CHECKPOINT = ROOT / ".cache" / "pretrained" / "aisfx" / "checkpoint.pth"
FRAME_COUNTS = [100, 37, 215]
TOLERANCE = 1e-4
N_REAL_CLIPS = 3


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint():
    if not CHECKPOINT.exists():
        pytest.fail(f"{CHECKPOINT} is missing: run scripts/fetch-python-assets.sh (scripts/build.sh runs it)")
    return CHECKPOINT


@pytest.fixture(scope="module")
def weights(checkpoint):
    return ref.embedding_weights(ref.load_state_dict(checkpoint))


@pytest.fixture(scope="module")
def backbone(checkpoint, tmp_path_factory):
    if not TRAINER.exists():
        pytest.fail(f"{TRAINER} is missing: build it with scripts/build.sh")
    out = tmp_path_factory.mktemp("aisfx-backbone")
    trainer("export-backbone", "--encoder", "aisfx", "--pretrained", checkpoint, "--out", out, timeout=600)
    onnx_path = out / "backbone.onnx"
    assert onnx_path.exists(), f"export-backbone wrote no {onnx_path}: it wrote {sorted(p.name for p in out.iterdir())}"
    return onnx_path


@pytest.fixture(scope="module")
def session(backbone):
    return ort.InferenceSession(str(backbone), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def real_logmels(shared_data):
    """aiSFX log-mels (frames, 96) of the first clip of each of the first few ESC-50 classes."""
    audio = shared_data / "esc50-dev" / "audio"
    if not audio.is_dir():
        pytest.skip(f"{audio} is absent: the real-clip case needs ESC-50's dev clips")
    by_class = {}
    for path in sorted(audio.glob("*.flac")):
        by_class.setdefault(path.stem.rsplit("-", 1)[-1], path)
    clips = [by_class[c] for c in sorted(by_class, key=int)[:N_REAL_CLIPS]]
    assert len(clips) == N_REAL_CLIPS, f"{audio} holds fewer than {N_REAL_CLIPS} classes"
    out = []
    for path in clips:
        y, sr = librosa.load(path, sr=ref.SAMPLE_RATE, mono=True)
        out.append((path.name, ref.aisfx_logmel(y, sr)))
    return out


@pytest.fixture(scope="module")
def generated_logmels():
    """Two generated 5.5 s sounds at 44.1 kHz: a chirp in noise, and a tone that stops halfway."""
    rate, seconds = ref.SAMPLE_RATE, 5.5
    chirp = ma.chirp(60.0, 16000.0, rate, seconds) + ma.white_noise(rate, seconds, 0.05, seed=5)
    tone = ma.sine(440.0, rate, seconds) + ma.white_noise(rate, seconds, 0.02, seed=6)
    tone[len(tone) // 2:] = 0.0
    return [("chirp", ref.aisfx_logmel(chirp, rate)), ("tone", ref.aisfx_logmel(tone, rate))]


def batch_of(logmels, frames):
    """float32 (batch, frames, 96): each log-mel cut to `frames`, or zero-padded (silence: aiSFX's
    log10(1 + 10000 S) is 0 where S is)."""
    out = np.zeros((len(logmels), frames, ref.N_MELS), dtype=np.float32)
    for i, (_, spec) in enumerate(logmels):
        n = min(frames, len(spec))
        out[i, :n] = spec[:n]
    return out


def assert_parity(session, weights, logmels, frames):
    x = batch_of(logmels, frames)
    (got,) = session.run(["embedding"], {"log_mel": x[:, None]})
    want = ref.forward(weights, x)
    assert got.shape == want.shape == (len(logmels), ref.EMBEDDING_DIM)
    assert got.dtype == np.float32
    diff = np.abs(got.astype(np.float64) - want).max(axis=1)
    names = [name for name, _ in logmels]
    assert diff.max() <= TOLERANCE, (
        f"max |onnx - numpy| at {frames} frames: {dict(zip(names, diff.tolist()))} "
        f"(embeddings' max |value| {np.abs(want).max():.3f})")


# --------------------------------------------------------------------------- the export


def test_backbone_interface(session):
    """One input `log_mel` [batch, 1, frames, 96] and one output `embedding` [batch, 512], float32."""
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, len(inp.shape)) == ("log_mel", "tensor(float)", 4)
    assert inp.shape[1] == 1 and inp.shape[3] == ref.N_MELS, inp.shape
    assert (out.name, out.type, len(out.shape)) == ("embedding", "tensor(float)", 2)
    assert out.shape[1] == ref.EMBEDDING_DIM, out.shape


@pytest.mark.parametrize("frames", FRAME_COUNTS)
def test_parity_on_real_clips(session, weights, real_logmels, frames):
    assert_parity(session, weights, real_logmels, frames)


@pytest.mark.parametrize("frames", FRAME_COUNTS)
def test_parity_on_generated_sounds(session, weights, generated_logmels, frames):
    assert_parity(session, weights, generated_logmels, frames)


# --------------------------------------------------------------------------- the reference


def test_reader_reads_the_aisfx_checkpoint(checkpoint):
    """torch.save((state_dict, ds_dict)): the tuple, the EmbeddingNet's tensors, and classifier
    heads whose output sizes are the class counts ds_dict gives their datasets (two halves of
    the file that must agree, whatever the reader got wrong)."""
    obj = ref.load_checkpoint(checkpoint)
    assert isinstance(obj, tuple) and len(obj) == 2
    state, ds_dict = obj
    assert ref.load_state_dict(checkpoint).keys() == state.keys()
    weights = ref.embedding_weights(state)  # checks every shape of EmbeddingNet('max', 3, 1, 64)
    assert len(weights) == 4 * 2 * 5
    assert state["embedding_net.conv_block4.conv2.weight"].dtype == np.float32
    assert state["embedding_net.conv_block1.bn1.num_batches_tracked"].dtype == np.int64
    assert len(ds_dict) == 9
    assert sorted(int(index) for index, _ in ds_dict.values()) == list(range(9))
    for name, (index, classes) in ds_dict.items():
        head = f"fc.{int(index)}."
        assert state[head + "0.weight"].shape == (256, 512), name
        assert state[head + "2.weight"].shape == (128, 256), name
        assert state[head + "4.weight"].shape == (classes, 128), name
    for name, w in weights.items():
        assert np.isfinite(w).all(), name
        if name.endswith("running_var"):
            assert (w > 0).all(), name


def test_reader_honours_offsets_strides_and_byte_order(tmp_path):
    """make_checkpoints.py writes torch's zip format without torch, laying storages out from
    the logical values (transposed, shared at an offset, a strided column, half, bfloat16,
    big-endian), so these values never went through a strided read like the reader's."""
    import json

    subprocess.run([sys.executable, str(HELPERS / "make_checkpoints.py"), str(tmp_path)], check=True,
                   capture_output=True)
    expected = json.loads((tmp_path / "expected.json").read_text())
    for name in ("state_dict.pth", "big_endian.pth"):
        state = ref.load_checkpoint(tmp_path / name)
        for key, tensor in expected["tensors"][name].items():
            got = np.asarray(state[key])
            assert list(got.shape) == tensor["shape"], (name, key)
            want = np.array(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
            # expected.json holds the f32 nearest each value; the double tensor is compared in f32
            np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32), err_msg=f"{name} {key}")


def write_pickle_zip(path, data_pkl):
    """A torch-style zip whose data.pkl is `data_pkl`."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                         ("subprocess", "call")])
def test_reader_refuses_to_call_functions(tmp_path, module, name):
    """A pickle is a program: one naming os.system (as `posix system` when pickle.dumps writes
    it on Linux) would run a shell command on load. The reader names the file and the refused
    global, and the command never runs."""
    marker = tmp_path / "ran"
    payload = f"c{module}\n{name}\n(S'touch {marker}'\ntR.".encode()
    path = write_pickle_zip(tmp_path / "evil.pth", payload)
    with pytest.raises(ref.CheckpointError) as error:
        ref.load_checkpoint(path)
    assert str(path) in str(error.value) and f"{module}.{name}" in str(error.value)
    assert not marker.exists()


def test_reader_refuses_to_modify_its_stand_ins(tmp_path):
    """BUILD on an allowed global (here _rebuild_tensor_v2 given a `__defaults__` slot state)
    would change it for every later load: refused."""
    payload = b"ctorch._utils\n_rebuild_tensor_v2\n(N}S'__defaults__'\n(I1\ntstb."
    path = write_pickle_zip(tmp_path / "build.pth", payload)
    with pytest.raises(ref.CheckpointError, match="cannot be given a state") as error:
        ref.load_checkpoint(path)
    assert str(path) in str(error.value)


def test_reader_errors_name_the_file(tmp_path):
    not_zip = tmp_path / "legacy.pth"
    not_zip.write_bytes(b"\x80\x02K\x01.")
    with pytest.raises(ref.CheckpointError, match="not a torch zip checkpoint") as error:
        ref.load_checkpoint(not_zip)
    assert str(not_zip) in str(error.value)
    no_state = write_pickle_zip(tmp_path / "epoch.pth", b"\x80\x02}X\x05\x00\x00\x00epochK\x03s.")
    assert ref.load_checkpoint(no_state) == {"epoch": 3}
    with pytest.raises(ref.CheckpointError, match="not a state dict") as error:
        ref.load_state_dict(no_state)
    assert str(no_state) in str(error.value)


def tiny_state(width, seed):
    """A random EmbeddingNet('max', 3, 1, width) state dict, keyed as aiSFX's."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    c_in = 1
    for i in range(1, 5):
        c_out = width << (i - 1)
        for conv, bn, cin in (("conv1", "bn1", c_in), ("conv2", "bn2", c_out)):
            p = f"embedding_net.conv_block{i}."
            state[p + conv + ".weight"] = rng.normal(0, 1 / np.sqrt(9 * cin), (c_out, cin, 3, 3)).astype(np.float32)
            state[p + bn + ".weight"] = rng.uniform(0.5, 1.5, c_out).astype(np.float32)
            state[p + bn + ".bias"] = rng.uniform(-0.5, 0.5, c_out).astype(np.float32)
            state[p + bn + ".running_mean"] = rng.uniform(-0.5, 0.5, c_out).astype(np.float32)
            state[p + bn + ".running_var"] = rng.uniform(0.25, 2.0, c_out).astype(np.float32)
        c_in = c_out
    return state


def loop_forward(state, spec):
    """EmbeddingNet.forward for one (frames, 96) input, transcribed from the definitions of
    torch's Conv2d (cross-correlation, zero padding 1), BatchNorm2d (eval), ReLU, max_pool2d
    (kernel 2, stride 2, floor), torch.mean(dim=3) and torch.max(dim=2), one output at a time."""
    x = spec[None].astype(np.float64)  # (channels, frames, mels)
    for i in range(1, 5):
        p = f"embedding_net.conv_block{i}."
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
            w = state[p + conv + ".weight"].astype(np.float64)
            c, h, wd = x.shape
            xp = np.zeros((c, h + 2, wd + 2))
            xp[:, 1:-1, 1:-1] = x
            y = np.empty((w.shape[0], h, wd))
            for t in range(h):
                for f in range(wd):
                    y[:, t, f] = np.tensordot(w, xp[:, t:t + 3, f:f + 3], axes=3)
            for o in range(w.shape[0]):
                scale = state[p + bn + ".weight"][o] / np.sqrt(float(state[p + bn + ".running_var"][o]) + 1e-5)
                y[o] = (y[o] - state[p + bn + ".running_mean"][o]) * scale + state[p + bn + ".bias"][o]
            x = np.where(y > 0, y, 0.0)
        if i < 4:
            c, h, wd = x.shape
            pooled = np.empty((c, h // 2, wd // 2))
            for t in range(h // 2):
                for f in range(wd // 2):
                    pooled[:, t, f] = x[:, 2 * t:2 * t + 2, 2 * f:2 * f + 2].reshape(c, 4).max(axis=1)
            x = pooled
    per_frame = np.array([[x[o, t].sum() / x.shape[2] for t in range(x.shape[1])] for o in range(x.shape[0])])
    return np.array([max(row) for row in per_frame])


@pytest.mark.parametrize("frames", [8, 19, 30])
def test_reference_layers_match_their_definitions(frames):
    """The reference's vectorised layers (shifted matmuls, reshaped pooling) against the loop
    transcription, on a random width-2 network; odd frame counts drop rows at each pooling."""
    state = tiny_state(2, seed=frames)
    rng = np.random.default_rng(100 + frames)
    x = rng.uniform(0.0, 1.0, (2, frames, ref.N_MELS)).astype(np.float32)
    got = ref.forward(state, x)
    assert got.shape == (2, 16)
    for b in range(2):
        np.testing.assert_allclose(got[b], loop_forward(state, x[b]), rtol=1e-12, atol=1e-12)


def test_features_match_the_checkpoint_statistics(weights, real_logmels):
    """BatchNorm's running statistics record what each layer saw in training. On aisfx_logmel's
    features of real clips, each layer's per-channel variance before BatchNorm is within a
    factor 4 of the running variance (the median over channels; 0.7-2.8 measured), and the
    per-channel means follow the running means: the features are at the scale the network was
    trained on (without the 'original' normalisation the variances are 100-300 times too big)."""
    for name, spec in real_logmels:
        x = spec[:100, :, None].astype(np.float64)
        for i in range(1, 5):
            p = f"conv_block{i}."
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                z = ref._conv3x3(x, weights[p + conv + ".weight"])
                flat = z.reshape(-1, z.shape[-1])
                ratio = np.median(flat.var(axis=0) / weights[p + bn + ".running_var"])
                corr = np.corrcoef(flat.mean(axis=0), weights[p + bn + ".running_mean"])[0, 1]
                assert 0.25 <= ratio <= 4.0, (name, p + bn, ratio)
                assert corr >= 0.3, (name, p + bn, corr)
                x = np.maximum(ref._batch_norm(z, weights, p + bn), 0.0)
            if i < 4:
                x = ref._max_pool_2x2(x)


def test_reference_on_a_real_clip_is_plausible(weights, real_logmels):
    """Max over time of mean-over-frequency ReLU maps: non-negative, mostly non-zero, of order 1."""
    emb = ref.forward(weights, batch_of(real_logmels, 100))
    assert emb.shape == (len(real_logmels), ref.EMBEDDING_DIM)
    assert (emb >= 0).all()
    assert (emb == 0).mean() < 0.05
    assert 0.3 < emb.mean() < 5.0 and emb.max() < 20.0
