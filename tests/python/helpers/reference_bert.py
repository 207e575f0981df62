"""Independent numpy reference for sentence-transformers' ``encode`` on BERT-family models.

It reads a sentence-transformers folder (config.json, model.safetensors, tokenizer.json,
sentence_bert_config.json, 1_Pooling/config.json, modules.json) and reproduces, in plain
float64 numpy, what ``SentenceTransformer(folder).encode(sentences)`` returns:

    Transformer module  -> strip, tokenize (truncate to max_seq_length), BERT forward
    Pooling module      -> mean / cls / max / mean_sqrt_len over the attention mask
    Normalize module    -> L2 normalisation (only if modules.json lists it)

Nothing here shares code with the extension or with the ONNX export, so agreement between
the two is evidence that both are right. Each sentence is encoded on its own with no
padding: sentence-transformers pads a batch, but padded positions are masked out of the
attention and the pooling, so the result is the same up to float rounding, and the
reference stays simple.

References:
  [BERT]  Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers",
          section 3 (input representation) and the Transformer of Vaswani et al. 2017.
  [SBERT] Reimers & Gurevych 2019, "Sentence-BERT", section 3 (pooling), and the
          sentence_transformers.models.{Transformer,Pooling,Normalize} modules.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

__all__ = ["encode", "tokenize", "load_model"]


# --------------------------------------------------------------------------- config


def _read_json(path: Path, default=None):
    if not path.exists():
        if default is not None:
            return default
        raise FileNotFoundError(path)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _module_types(model_dir: Path) -> list[str]:
    """Module class names from modules.json, e.g. [..Transformer, ..Pooling, ..Normalize]."""
    modules = _read_json(model_dir / "modules.json", default=[])
    return [m.get("type", "") for m in modules]


def _pooling_config(model_dir: Path) -> dict:
    """The Pooling module's config; its folder is named in modules.json (usually 1_Pooling)."""
    modules = _read_json(model_dir / "modules.json", default=[])
    for m in modules:
        if m.get("type", "").endswith(".Pooling"):
            return _read_json(model_dir / m["path"] / "config.json")
    # No modules.json: sentence-transformers falls back to mean pooling.
    return {"pooling_mode_mean_tokens": True}


# --------------------------------------------------------------------------- tokenizer


@functools.lru_cache(maxsize=None)
def _tokenizer(model_dir: str) -> tuple[Tokenizer, bool]:
    d = Path(model_dir)
    sbert = _read_json(d / "sentence_bert_config.json", default={})
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    # tokenizer.json for all-MiniLM-L6-v2 carries padding to a fixed 128 and truncation at
    # 128; sentence-transformers ignores both: it calls the HF tokenizer with
    # max_length=max_seq_length (256 here) and pads only to the longest in the batch.
    # We encode one sentence at a time, so no padding at all.
    tok.no_padding()
    max_len = sbert.get("max_seq_length")
    if max_len is None:
        tok.no_truncation()
    else:
        # 'longest_first' on a single sequence = cut the tail. The limit counts [CLS] and
        # [SEP]: tokenizers reserves room for the post-processor's special tokens, as HF does.
        tok.enable_truncation(max_length=int(max_len), strategy="longest_first")
    return tok, bool(sbert.get("do_lower_case", False))


def tokenize(model_dir, sentences) -> list[list[int]]:
    """Token ids, special tokens included, exactly as sentence-transformers would feed BERT."""
    tok, lower = _tokenizer(str(Path(model_dir)))
    # sentence_transformers.models.Transformer.tokenize does str(s).strip(), then lower()
    # if do_lower_case (False for MiniLM: its BertNormalizer lowercases anyway).
    texts = [str(s).strip() for s in sentences]
    if lower:
        texts = [t.lower() for t in texts]
    return [enc.ids for enc in tok.encode_batch(texts, add_special_tokens=True)]


# --------------------------------------------------------------------------- weights


class _Bert:
    """BERT encoder weights in float64, keyed the way HF's BertModel names them."""

    def __init__(self, model_dir: Path):
        cfg = _read_json(model_dir / "config.json")
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            # HF's "gelu" is the exact erf form; the tanh variants are named differently.
            raise NotImplementedError(f"hidden_act={act!r}: only exact 'gelu' is implemented")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise NotImplementedError("only absolute position embeddings are implemented")

        raw = load_file(str(model_dir / "model.safetensors"))
        # Some checkpoints prefix every key with "bert." (BertForX) — find and drop it.
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
def load_model(model_dir: str) -> _Bert:
    return _Bert(Path(model_dir))


# --------------------------------------------------------------------------- maths

# Exact erf, element by element through the C library: BERT's GELU is x * Phi(x) with the
# Gaussian CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2 (Hendrycks & Gimpel 2016), and HF's "gelu"
# uses that exact form rather than the tanh approximation. Slow but exact to double precision.
_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    # Biased variance over the hidden axis, eps inside the sqrt (torch.nn.LayerNorm).
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _linear(x: np.ndarray, m: _Bert, name: str) -> np.ndarray:
    # torch.nn.Linear stores weight as [out, in]: y = x W^T + b.
    return x @ m[name + ".weight"].T + m[name + ".bias"]


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def bert_forward(m: _Bert, ids: list[int], mask: list[int] | None = None) -> np.ndarray:
    """Last hidden state [seq, hidden] for one sequence (token_type 0 everywhere)."""
    ids_a = np.asarray(ids, dtype=np.int64)
    n = len(ids_a)
    mask_a = np.ones(n) if mask is None else np.asarray(mask, dtype=np.float64)

    # [BERT] sec. 3: input = token + segment + position embeddings, then LayerNorm.
    # Single-sentence input is all segment A (token_type_ids = 0), positions 0..n-1.
    x = (
        m["embeddings.word_embeddings.weight"][ids_a]
        + m["embeddings.position_embeddings.weight"][np.arange(n)]
        + m["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, m["embeddings.LayerNorm.weight"], m["embeddings.LayerNorm.bias"], m.eps)

    h, d = m.heads, m.hidden // m.heads
    # Masked keys get a large negative logit so softmax gives them ~0 weight (HF uses the
    # dtype's min; any value that underflows exp() is equivalent).
    key_bias = (1.0 - mask_a)[None, None, :] * -1e30

    for i in range(m.layers):
        p = f"encoder.layer.{i}."
        # Multi-head self-attention (Vaswani et al. eq. 1): softmax(QK^T / sqrt(d)) V per head.
        q = _linear(x, m, p + "attention.self.query").reshape(n, h, d).transpose(1, 0, 2)
        k = _linear(x, m, p + "attention.self.key").reshape(n, h, d).transpose(1, 0, 2)
        v = _linear(x, m, p + "attention.self.value").reshape(n, h, d).transpose(1, 0, 2)
        att = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d) + key_bias)
        ctx = (att @ v).transpose(1, 0, 2).reshape(n, m.hidden)
        # Post-LN residual blocks, as in the original BERT: LN(x + sublayer(x)).
        x = _layer_norm(
            x + _linear(ctx, m, p + "attention.output.dense"),
            m[p + "attention.output.LayerNorm.weight"],
            m[p + "attention.output.LayerNorm.bias"],
            m.eps,
        )
        ffn = _linear(_gelu(_linear(x, m, p + "intermediate.dense")), m, p + "output.dense")
        x = _layer_norm(
            x + ffn, m[p + "output.LayerNorm.weight"], m[p + "output.LayerNorm.bias"], m.eps
        )
    return x


def _pool(cfg: dict, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[SBERT] pooling. Several enabled modes are concatenated in sentence-transformers' order."""
    mask = mask.astype(np.float64)[:, None]
    count = max(mask.sum(), 1e-9)  # sentence-transformers clamps the count at 1e-9
    parts = []
    if cfg.get("pooling_mode_cls_token"):
        parts.append(tokens[0])  # [CLS] is always position 0 for BERT
    if cfg.get("pooling_mode_max_tokens"):
        # Padding positions are set to a very negative value so they never win the max.
        parts.append(np.where(mask > 0, tokens, -1e9).max(axis=0))
    if cfg.get("pooling_mode_mean_tokens"):
        parts.append((tokens * mask).sum(axis=0) / count)
    if cfg.get("pooling_mode_mean_sqrt_len_tokens"):
        parts.append((tokens * mask).sum(axis=0) / math.sqrt(count))
    if not parts:
        raise NotImplementedError(f"no supported pooling mode enabled in {cfg}")
    return np.concatenate(parts)


def encode(model_dir, sentences) -> np.ndarray:
    """Sentence embeddings [n, dim] float32, as SentenceTransformer(model_dir).encode gives."""
    d = Path(model_dir)
    model = load_model(str(d))
    pool_cfg = _pooling_config(d)
    normalize = any(t.endswith(".Normalize") for t in _module_types(d))

    out = []
    for ids in tokenize(d, sentences):
        mask = np.ones(len(ids))  # one unpadded sentence: every position is real
        emb = _pool(pool_cfg, bert_forward(model, ids, mask), mask)
        if normalize:
            # Normalize module = torch.nn.functional.normalize(p=2, eps=1e-12).
            emb = emb / max(np.linalg.norm(emb), 1e-12)
        out.append(emb)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(out).astype(np.float32)
