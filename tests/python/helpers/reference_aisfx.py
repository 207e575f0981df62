"""Independent numpy reference for the aiSFX embedding network, and a torch-free checkpoint reader.

aiSFX (Ma and Lerch, ISMIR 2022, "Representation Learning for the Automatic Indexing of Sound
Effects Libraries"; PyPI `aisfx` 0.1.2, CC BY 4.0) ships `aisfx/models/checkpoint.pth`, written
by `torch.save((state_dict, ds_dict))`. Its embedding is `EmbeddingNet('max', 3, 1, 64)` (the
DCASE 2018 cross-task baseline's 9-layer CNN, aisfx/models/cnn2d.py) inside `CrossNet`; the
`fc.*` classifier heads of CrossNet are not part of the embedding.

    x (batch, frames, 96 mels)  -> unsqueeze -> (batch, 1, frames, 96)
    4 x ConvBlock: conv3x3 (pad 1, no bias) -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> max pool
                   channels 64, 128, 256, 512; pool 2x2 (floor) after blocks 1-3, 1x1 after 4
    mean over mels, then max over frames -> (batch, 512)

This module reproduces that forward pass in float64 numpy. float64, not float32: the thing under
test (ONNX Runtime, float32) accumulates 576 to 4608 products per output through eight layers in
an order we do not control; a float64 reference carries ~1e-16 relative error instead of ~1e-7,
so the measured difference is the float32 error of the export alone, not the sum of two
float32 errors of unknown order. The weights are float32 in the checkpoint and are widened
exactly.

Nothing here imports torch, the trainer, or the ONNX export: it reads the checkpoint with
`zipfile` and a restricted unpickler (`load_checkpoint`, `load_state_dict`) and implements the
layers from their definitions (PyTorch's Conv2d, BatchNorm2d in eval mode, ReLU, max_pool2d),
so agreement with the export is evidence that both are right.

`aisfx_logmel` computes the input as aisfx's librosa path does (spectrogram_librosa.py, then
inference.py's 'original' min-max normalisation), but in the `(frames, mels)` order the network
expects: the wheel's librosa path returns librosa's `(mels, frames)` and forgets to transpose
(its essentia path returns frames first, which is what the model was trained on).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_state_dict",
    "embedding_weights",
    "forward",
    "aisfx_logmel",
    "N_MELS",
    "EMBEDDING_DIM",
    "SAMPLE_RATE",
]

N_MELS = 96
EMBEDDING_DIM = 512
SAMPLE_RATE = 44100
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default; cnn2d.py does not change it
BLOCKS = 4
PREFIX = "embedding_net."

# --------------------------------------------------------------------------- checkpoint reader


class CheckpointError(ValueError):
    """A checkpoint that cannot (or must not) be read; the message starts with its path."""


# torch storage class name -> numpy dtype of its elements (little-endian; see _byteorder).
# bfloat16 has no numpy dtype: it is read as uint16 and widened to float32 (_to_numpy).
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StandIn:
    """What find_class hands out: calls `fn`, and refuses BUILD (pickle's BUILD opcode would
    otherwise set attributes on a shared function or class for every later load)."""

    __slots__ = ("fn", "name")

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"{self.name} cannot be given a state")


class _StorageType(_StandIn):
    """Stands for `torch.FloatStorage` etc.: a name in a storage's persistent id, never called."""

    __slots__ = ("dtype",)

    def __init__(self, name):
        super().__init__(None, "torch." + name)
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"{self.name} is only allowed as a storage type")


class _Dtype:
    """Stands for `numpy.dtype`, which the real checkpoint's ds_dict uses for its int64 indices
    (`numpy.core.multiarray.scalar(dtype('i8'), bytes)`). Numeric dtypes only: no object or
    structured dtypes, which could smuggle in other classes."""

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or np.dtype(name).kind not in "biuf":
            raise pickle.UnpicklingError(f"numpy.dtype({name!r}) is not a plain numeric dtype")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 5 and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(f"numpy.dtype state {state!r} is not a plain dtype's")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data):
    """Stands for `numpy.core.multiarray.scalar(dtype, bytes)`."""
    if not isinstance(dtype, _Dtype) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar with an unexpected dtype or payload")
    return np.frombuffer(data, dtype=dtype.dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
    """Stands for `_codecs.encode`, which protocol-2 pickles use to carry bytes as latin-1 text."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


class _Storage:
    """A storage read from `<prefix>/data/<key>`: a flat numpy array."""

    def __init__(self, key, values):
        self.key = key
        self.values = values


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2: the tensor `storage[offset + sum(i_k * stride_k)]`."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 got something other than a storage")
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"tensor size {size} / stride {stride} do not match")
    values = storage.values
    if 0 in size:
        return np.zeros(size, dtype=values.dtype)
    last = int(storage_offset) + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or last >= len(values):
        raise pickle.UnpicklingError(
            f"tensor (offset {storage_offset}, size {size}, stride {stride}) reads past the end "
            f"of storage {storage.key} ({len(values)} elements)")
    item = values.itemsize
    view = np.lib.stride_tricks.as_strided(
        values[int(storage_offset):], shape=size, strides=tuple(s * item for s in stride),
        writeable=False)
    return np.array(view)  # a copy: contiguous, independent of the storage


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """torch._utils._rebuild_parameter: an nn.Parameter is its tensor."""
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("_rebuild_parameter got something other than a tensor")
    return data


# (module, name) -> what the unpickler hands back. Nothing else can be named by the pickle.
_ALLOWED = {
    ("collections", "OrderedDict"): _StandIn(collections.OrderedDict, "collections.OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"): _StandIn(_rebuild_tensor_v2, "torch._utils._rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"): _StandIn(_rebuild_parameter, "torch._utils._rebuild_parameter"),
    ("numpy", "dtype"): _StandIn(_Dtype, "numpy.dtype"),
    ("numpy.core.multiarray", "scalar"): _StandIn(_numpy_scalar, "numpy.core.multiarray.scalar"),
    ("numpy._core.multiarray", "scalar"): _StandIn(_numpy_scalar, "numpy._core.multiarray.scalar"),
    ("_codecs", "encode"): _StandIn(_codecs_encode, "_codecs.encode"),
}
for _name in _STORAGE_DTYPES:
    _ALLOWED[("torch", _name)] = _StorageType(_name)
    _ALLOWED[("torch.cuda", _name)] = _StorageType(_name)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data, archive, prefix, byteorder):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder
        self.storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refuses to load {module}.{name}: a state dict needs only tensors, "
                f"OrderedDict and plain values") from None

    def persistent_load(self, pid):
        # torch.serialization._save: ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}/data/{key}"
            try:
                raw = self.archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage {name} is missing from the archive") from None
            dtype = storage_type.dtype.newbyteorder(self.byteorder) if storage_type.dtype.itemsize > 1 \
                else storage_type.dtype
            if len(raw) != int(numel) * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {name} holds {len(raw)} bytes, expected {numel} x {dtype.itemsize}")
            values = np.frombuffer(raw, dtype=dtype)
            if storage_type.name == "torch.BFloat16Storage":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            else:
                values = values.astype(dtype.newbyteorder("="))  # native order from here on
            self.storages[key] = _Storage(key, values)
        return self.storages[key]


def load_checkpoint(path):
    """The object torch.save wrote to `path` (a zip checkpoint, torch >= 1.6), tensors as numpy
    arrays, read without torch and without running any code the pickle names: only the classes
    in _ALLOWED can be named; anything else raises CheckpointError naming the file."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a torch zip checkpoint (torch >= 1.6 format): {e}") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one <folder>/data.pkl in the archive, found {pickles}")
        prefix = pickles[0].split("/")[0]
        # torch writes `byteorder` since 1.13; older files (like aiSFX's) are little-endian.
        byteorder = "little"
        if f"{prefix}/byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}/byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
        unpickler = _Unpickler(archive.read(pickles[0]), archive, prefix,
                               "<" if byteorder == "little" else ">")
        try:
            return unpickler.load()
        except CheckpointError:
            raise
        except Exception as e:  # UnpicklingError, and whatever a malformed pickle raises
            raise CheckpointError(f"{path}: {e}") from None


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def load_state_dict(path):
    """The state dict in `path`: a bare one, or the first element of a tuple as aiSFX's
    `torch.save((state_dict, ds_dict))` writes it."""
    obj = load_checkpoint(path)
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, (tuple, list)) and obj and _is_state_dict(obj[0]):
        return obj[0]
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict "
                          f"or a (state dict, ...) tuple")


def embedding_weights(state, width=64):
    """The EmbeddingNet's tensors in float64, keyed without `embedding_net.`, shapes checked
    against EmbeddingNet('max', 3, 1, width): aiSFX's is width 64 (channels 64, 128, 256, 512);
    tests build tiny ones."""
    out = {}
    c_in = 1
    for i in range(1, BLOCKS + 1):
        c_out = width << (i - 1)
        for conv, bn, cin in (("conv1", "bn1", c_in), ("conv2", "bn2", c_out)):
            names = {f"conv_block{i}.{conv}.weight": (c_out, cin, 3, 3)}
            for p in ("weight", "bias", "running_mean", "running_var"):
                names[f"conv_block{i}.{bn}.{p}"] = (c_out,)
            for name, shape in names.items():
                if PREFIX + name not in state:
                    raise KeyError(f"the state dict has no {PREFIX + name}")
                w = np.asarray(state[PREFIX + name])
                if w.shape != shape:
                    raise ValueError(f"{PREFIX + name} has shape {w.shape}, expected {shape}")
                out[name] = w.astype(np.float64)
        c_in = c_out
    return out


# --------------------------------------------------------------------------- the network
# Layout inside: (frames, mels, channels), one clip at a time, so each layer is a matmul over
# channels and memory stays at one clip's activations.


def _conv3x3(x, w):
    """torch.nn.Conv2d(kernel 3, stride 1, padding 1, bias False) on (H, W, C_in) -> (H, W, C_out).

    Cross-correlation (no kernel flip): out[h, w, o] = sum_{c, i, j} xpad[h + i, w + j, c] * w[o, c, i, j],
    with xpad x zero-padded by one on both sides of H and W. As one matrix product (im2col): row
    (h, w) of `cols` holds the 3x3 neighbourhood, ordered (i, j, c), and the kernel is laid out to
    match. One large product rather than many small ones: multithreaded BLAS is slow on small
    ones when the machine is busy.
    """
    h, wd, c = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    cols = np.concatenate([xp[i:i + h, j:j + wd, :] for i in range(3) for j in range(3)], axis=2)
    kernel = w.transpose(2, 3, 1, 0).reshape(9 * c, w.shape[0])  # [(i, j, c), o]
    return (cols.reshape(h * wd, 9 * c) @ kernel).reshape(h, wd, w.shape[0])


def _batch_norm(x, weights, name):
    """torch.nn.BatchNorm2d in eval mode: (x - running_mean) / sqrt(running_var + eps) * w + b."""
    mean, var = weights[name + ".running_mean"], weights[name + ".running_var"]
    return (x - mean) / np.sqrt(var + BN_EPS) * weights[name + ".weight"] + weights[name + ".bias"]


def _max_pool_2x2(x):
    """F.max_pool2d(kernel 2) (stride 2, no padding): a trailing odd row/column is dropped."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return x.reshape(h // 2, 2, w // 2, 2, -1).max(axis=(1, 3))


def _embed_one(weights, spec):
    x = spec[:, :, None]  # (frames, mels, 1): torch's unsqueeze(1), channels last
    for i in range(1, BLOCKS + 1):
        p = f"conv_block{i}."
        x = np.maximum(_batch_norm(_conv3x3(x, weights[p + "conv1.weight"]), weights, p + "bn1"), 0.0)
        x = np.maximum(_batch_norm(_conv3x3(x, weights[p + "conv2.weight"]), weights, p + "bn2"), 0.0)
        if i < BLOCKS:
            x = _max_pool_2x2(x)  # block 4 pools with kernel (1, 1): the identity
    # torch.mean(x, dim=3) (mels), then torch.max(x, dim=2) (frames)
    return x.mean(axis=1).max(axis=0)


def forward(state, x):
    """The aiSFX embedding, float64 (batch, 512), of log-mels `x` (batch, frames, 96).

    `state` is a state dict as load_state_dict returns (keys `embedding_net.*`), or what
    embedding_weights made of one. frames >= 8: three 2x2 poolings leave frames // 8 steps.
    Not normalised (the network's output as is).
    """
    if "conv_block1.conv1.weight" in state:
        weights = state
    else:
        weights = embedding_weights(state, width=state[PREFIX + "conv_block1.conv1.weight"].shape[0])
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != N_MELS:
        raise ValueError(f"x has shape {x.shape}, expected (batch, frames, {N_MELS})")
    if x.shape[1] < 8:
        raise ValueError(f"{x.shape[1]} frames: the network needs at least 8")
    return np.stack([_embed_one(weights, spec) for spec in x]) if len(x) else np.zeros((0, EMBEDDING_DIM))


# --------------------------------------------------------------------------- input features

# aisfx/inference.py and aisfx/preprocessing.py
_N_FFT = 2048          # SPEC_BLOCK_LENGTH: librosa's n_fft default, = win_length
_HOP = 1024            # SPEC_HOP_LENGTH
_F_MIN, _F_MAX = 0.0, 22050.0
_ORIGINAL_MAX = 9.457798957824707  # spectrogram_normalize(spec_norm='original'): mn 0, mx this


def aisfx_logmel(y, sr=SAMPLE_RATE):
    """float32 (frames, 96): aisfx's librosa features of mono samples `y` at `sr` (44100 for the
    model: resample first), as inference.main computes them with spectrogram_type='librosa':

        y / max|y|  ->  librosa.feature.melspectrogram(n_fft 2048, hop 1024, hann, center, zero
        padding (librosa >= 0.9's default, the wheel pins 0.9.2), power 2, 96 HTK mels 0-22050 Hz
        with unit-sum (norm=1) filters)  ->  log10(10000 S + 1)  ->  / 9.4578 ('original' norm)

    transposed to frames first (see the module docstring)."""
    import librosa

    y = np.asarray(y, dtype=np.float32)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    y = y / (peak if peak > 0 else 1.0)
    spec = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=_N_FFT, hop_length=_HOP, win_length=_N_FFT, window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=N_MELS, fmin=_F_MIN, fmax=_F_MAX, htk=True, norm=1.0)
    spec = np.log10(spec * 10000.0 + 1.0)
    return (spec.T / _ORIGINAL_MAX).astype(np.float32)
