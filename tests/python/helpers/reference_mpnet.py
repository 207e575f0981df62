"""Independent numpy reference for sentence-transformers' ``encode`` on MPNet models.

all-mpnet-base-v2 (the DCASE 2023 text encoder) is an HF ``MPNetModel`` inside a
sentence-transformers pipeline. This file recomputes, in float64 numpy, what
``SentenceTransformer(folder).encode(sentences)`` returns for such a folder, from the published
architecture (Song et al. 2020, "MPNet: Masked and Permuted Pre-training for Language
Understanding"; HF transformers ``models/mpnet/modeling_mpnet.py``):

    embeddings  word + position, LayerNorm (no token type embeddings). Position ids are HF's
                ``create_position_ids_from_input_ids``: with padding_idx = 1, a token that is
                not <pad> gets padding_idx + (number of non-<pad> tokens up to and including
                it), a <pad> gets padding_idx.
    encoder     a relative position bias [heads, q, k] computed once from the sequence length:
                ``relative_attention_bias[bucket(k - q)]`` with T5's bidirectional buckets
                (32 buckets, max distance 128), shared by all layers.
    layer       post-LN transformer layer: q, k, v, o projections (``attention.attn.*``),
                softmax(q k^T / sqrt(d) + position bias + key mask) v, LayerNorm(x + o(...))
                (``attention.LayerNorm``), then LayerNorm(x + dense(gelu(dense(x)))).
    pooling     mean over the attention mask (sentence-transformers Pooling), then the
                Normalize module if modules.json lists one.

It shares no code with the exporter or the extension. Tokenization is sentence-transformers'
(strip, tokenize with the folder's tokenizer.json, truncate at max_seq_length), the same for
every architecture, so it is taken from reference_bert, which test_reference.py checks against
published numbers. Each sentence is encoded alone and unpadded unless a mask is given.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from reference_bert import tokenize

__all__ = [
    "PADDING_IDX",
    "encode",
    "load_model",
    "mpnet_forward",
    "position_ids",
    "relative_position_bucket",
    "tokenize",
]

# HF's MPNetEmbeddings hard-codes padding_idx = 1 (the <pad> id of every MPNet tokenizer).
PADDING_IDX = 1
# HF's MPNetEncoder.relative_position_bucket default.
MAX_DISTANCE = 128


def relative_position_bucket(relative_position, num_buckets=32, max_distance=MAX_DISTANCE):
    """T5's bidirectional bucket of ``relative_position = key - query`` (element-wise).

    Half of the buckets are for keys after the query. In each half, distances below a quarter
    of ``num_buckets`` get a bucket each; longer distances share buckets whose width grows
    logarithmically up to ``max_distance``; everything farther shares the last bucket.
    PyTorch evaluates the logarithm in float32, and so does this.
    """
    relative_position = np.asarray(relative_position, dtype=np.int64)
    half = num_buckets // 2
    distance = -relative_position  # > 0: the key is before the query
    bucket = np.where(distance < 0, half, 0)
    distance = np.abs(distance)
    max_exact = half // 2
    is_small = distance < max_exact
    # max(distance, 1) keeps log() finite where is_small picks the exact bucket anyway.
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
    scaled = (
        np.log(ratio)
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(half - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return bucket + np.where(is_small, distance, large)


def position_ids(ids) -> np.ndarray:
    """HF's create_position_ids_from_input_ids for one sequence."""
    not_pad = (np.asarray(ids, dtype=np.int64) != PADDING_IDX).astype(np.int64)
    return np.cumsum(not_pad) * not_pad + PADDING_IDX


def _read_json(path: Path, default=None):
    if not path.exists() and default is not None:
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _MPNet:
    """MPNet encoder weights in float64, keyed the way HF's MPNetModel names them."""

    def __init__(self, model_dir: Path):
        cfg = _read_json(model_dir / "config.json")
        if cfg.get("model_type") != "mpnet":
            raise ValueError(f"{model_dir}: model_type {cfg.get('model_type')!r} is not mpnet")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise NotImplementedError("only the exact erf 'gelu' is implemented")
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.num_buckets = cfg.get("relative_attention_num_buckets", 32)

        raw = load_file(str(model_dir / "model.safetensors"))
        # Checkpoints saved from MPNetForX prefix every key with "mpnet."; find and drop it.
        anchor = "embeddings.word_embeddings.weight"
        prefix = next(k[: -len(anchor)] for k in raw if k.endswith(anchor))
        self.w = {
            k[len(prefix):]: v.astype(np.float64)
            for k, v in raw.items()
            if k.startswith(prefix) and v.dtype.kind == "f"
        }

    def __getitem__(self, key: str) -> np.ndarray:
        return self.w[key]


@functools.lru_cache(maxsize=None)
def load_model(model_dir: str) -> _MPNet:
    return _MPNet(Path(model_dir))


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x):
    # HF "gelu" = x * Phi(x), the exact Gaussian CDF through erf.
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _layer_norm(x, gamma, beta, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _linear(x, m, name):
    # torch.nn.Linear: weight [out, in], y = x W^T + b.
    return x @ m[name + ".weight"].T + m[name + ".bias"]


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def position_bias(m: _MPNet, n: int) -> np.ndarray:
    """[heads, n, n]: the bias of key j seen from query i, relative_attention_bias[bucket(j - i)]."""
    query = np.arange(n)[:, None]
    key = np.arange(n)[None, :]
    buckets = relative_position_bucket(key - query, m.num_buckets)
    return m["encoder.relative_attention_bias.weight"][buckets].transpose(2, 0, 1)


def mpnet_forward(m: _MPNet, ids, mask=None, with_position_bias=True) -> np.ndarray:
    """Last hidden state [seq, hidden] of one sequence; ``mask`` 0 marks padding keys."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    mask = np.ones(n) if mask is None else np.asarray(mask, dtype=np.float64)

    x = m["embeddings.word_embeddings.weight"][ids] + m["embeddings.position_embeddings.weight"][
        position_ids(ids)
    ]
    x = _layer_norm(x, m["embeddings.LayerNorm.weight"], m["embeddings.LayerNorm.bias"], m.eps)

    h, d = m.heads, m.hidden // m.heads
    bias = (1.0 - mask)[None, None, :] * -1e30
    if with_position_bias:
        bias = bias + position_bias(m, n)
    for i in range(m.layers):
        p = f"encoder.layer.{i}."
        q = _linear(x, m, p + "attention.attn.q").reshape(n, h, d).transpose(1, 0, 2)
        k = _linear(x, m, p + "attention.attn.k").reshape(n, h, d).transpose(1, 0, 2)
        v = _linear(x, m, p + "attention.attn.v").reshape(n, h, d).transpose(1, 0, 2)
        att = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d) + bias)
        ctx = (att @ v).transpose(1, 0, 2).reshape(n, m.hidden)
        x = _layer_norm(
            x + _linear(ctx, m, p + "attention.attn.o"),
            m[p + "attention.LayerNorm.weight"],
            m[p + "attention.LayerNorm.bias"],
            m.eps,
        )
        ffn = _linear(_gelu(_linear(x, m, p + "intermediate.dense")), m, p + "output.dense")
        x = _layer_norm(
            x + ffn, m[p + "output.LayerNorm.weight"], m[p + "output.LayerNorm.bias"], m.eps
        )
    return x


def _pipeline(model_dir: Path) -> tuple[dict, bool]:
    """The Pooling config and whether a Normalize module follows, from modules.json."""
    modules = _read_json(model_dir / "modules.json", default=[])
    pooling = {"pooling_mode_mean_tokens": True}  # sentence-transformers' default
    for module in modules:
        if module.get("type", "").endswith(".Pooling"):
            pooling = _read_json(model_dir / module["path"] / "config.json")
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    enabled = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True]
    if enabled != ["pooling_mode_mean_tokens"]:
        raise NotImplementedError(f"only mean pooling is implemented, not {enabled}")
    return pooling, normalize


def encode(model_dir, sentences, with_position_bias=True) -> np.ndarray:
    """Sentence embeddings [n, hidden] float32, as SentenceTransformer(model_dir).encode gives."""
    d = Path(model_dir)
    model = load_model(str(d))
    _, normalize = _pipeline(d)
    out = []
    for ids in tokenize(d, sentences):
        tokens = mpnet_forward(model, ids, with_position_bias=with_position_bias)
        emb = tokens.mean(axis=0)  # mean pooling over an unpadded sequence
        if normalize:
            emb = emb / max(np.linalg.norm(emb), 1e-12)
        out.append(emb)
    return np.stack(out).astype(np.float32)
