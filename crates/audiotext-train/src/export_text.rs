//! `audiotext-train export-text`: a sentence-transformers folder of the BERT or MPNet family
//! becomes a model bundle (`text.onnx`, `tokenizer.json`, `manifest.json`).
//!
//! The ONNX graph reproduces `SentenceTransformer(folder).encode(texts, normalize_embeddings=True)`
//! on already tokenized input:
//!
//! - inputs `input_ids` and `attention_mask`, int64 `[batch, tokens]`;
//! - BERT (`model_type: "bert"`, e.g. all-MiniLM-L6-v2): word + token type 0 + position
//!   embeddings (token type ids are all zero and not an input; positions are `0..tokens`,
//!   `tokens <= max_position_embeddings`), LayerNorm, then per layer multi-head self-attention
//!   with an additive key mask, output dense + residual + LayerNorm, FFN with the exact (erf)
//!   GELU, residual + LayerNorm (post-LN, as in HF's `BertModel`);
//! - MPNet (`model_type: "mpnet"`, e.g. all-mpnet-base-v2, HF's `MPNetModel`): word + position
//!   embeddings (no token types), LayerNorm, then the same post-LN layers (weights named
//!   `attention.attn.{q,k,v,o}` and `attention.LayerNorm`) whose attention logits also get a
//!   relative position bias shared by all layers. Positions are those of HF's
//!   `create_position_ids_from_input_ids`: `padding_idx + 1 + (index among real tokens)`, with
//!   padding (and masked tokens) at `padding_idx` (1), so `tokens <= max_position_embeddings - 2`.
//!   The bias is `relative_attention_bias[bucket(j - i)]` with T5's bidirectional buckets
//!   ([`relative_position_bucket`], max distance 128). Buckets depend only on the sequence
//!   length, so the graph holds a precomputed bucket table for every length the position
//!   embeddings allow (`[max_position_embeddings - 2]^2` int64, 2 MB for all-mpnet-base-v2)
//!   and slices it to the batch's length: the same integers HF computes, exact by construction
//!   and simpler than rebuilding the bucketing from Range, Abs, Log, Cast and Where in the graph;
//! - pooling from `1_Pooling/config.json` (`mean`, `cls` or `max`) over the attention mask;
//! - an optional linear projection head (`--head`, PyTorch `nn.Linear` layout);
//! - L2 normalisation, `x / max(|x|, 1e-12)`;
//! - output `embedding`, float32 `[batch, embedding_dim]`.
//!
//! Only default-domain operators of opset 17 are used, so any ONNX Runtime build runs it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use audiotext_core::model::manifest::{
    Manifest, TextSection, MANIFEST_FILE, MANIFEST_FORMAT_VERSION,
};
use audiotext_onnx::{AttributeProto, DataType, Dim, GraphBuilder, ModelInfo, ModelProto};

use super::weights::Weights;

/// Opset of the default domain the exported graph imports (LayerNormalization needs 17).
pub const TEXT_OPSET: i64 = 17;
/// File names inside the bundle.
pub const TEXT_ONNX_FILE: &str = "text.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Value added to the attention logits of masked keys. exp() of it underflows to exactly 0 next
/// to any real logit, and a fully masked row still gives finite (uniform) weights, never NaN.
pub const MASK_NEG: f32 = -1e4;

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportTextOptions {
    /// A sentence-transformers folder (config.json, model.safetensors, tokenizer.json, ...).
    pub from: PathBuf,
    /// The bundle folder to write (created if missing).
    pub out: PathBuf,
    /// Optional projection head: a safetensors file with `weight` `[out, in]` and optional `bias`.
    pub head: Option<PathBuf>,
}

/// What was exported.
#[derive(Debug, Clone)]
pub struct ExportTextReport {
    /// The bundle's name in its manifest.
    pub name: String,
    pub model_type: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub vocab_size: usize,
    /// Length of the exported embedding (the head's `out` if there is a head).
    pub embedding_dim: usize,
    pub max_tokens: usize,
    pub pooling: String,
    /// `(in, out)` of the projection head, if any.
    pub head: Option<(usize, usize)>,
    /// Number of weights taken from the checkpoint (and the head).
    pub parameters: u64,
    pub onnx_path: PathBuf,
    pub onnx_bytes: u64,
    pub manifest_path: PathBuf,
    /// Whether an existing manifest's other sections (audio, training, ...) were kept.
    pub kept_existing_manifest: bool,
    /// Things the user should know (e.g. normalisation added where the source had none).
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// HF's MPNet offsets positions by its padding index: real tokens start at `MPNET_PADDING_IDX
/// + 1`. `MPNetEmbeddings` hard-codes 1 whatever the config says.
pub const MPNET_PADDING_IDX: i64 = 1;
/// The distance from which all relative positions share MPNet's last bucket (hard-coded in HF's
/// `MPNetEncoder.relative_position_bucket`).
pub const MPNET_MAX_DISTANCE: i64 = 128;

/// The encoder architectures this exporter implements, from config.json's `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// HF `BertModel`: absolute positions `0..tokens`, token type embeddings.
    Bert,
    /// HF `MPNetModel`: positions after the padding index, relative position bias.
    MPNet,
}

impl Architecture {
    /// The `model_type` of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::MPNet => "mpnet",
        }
    }
}

/// The encoder settings the graph depends on, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub architecture: Architecture,
    pub model_type: String,
    pub name_or_path: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// BERT only (MPNet has no token types).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    /// MPNet only: rows of `encoder.relative_attention_bias.weight`.
    pub relative_attention_num_buckets: usize,
}

impl EncoderConfig {
    /// The most tokens (special tokens included) the position embeddings can number.
    pub fn max_positions(&self) -> usize {
        match self.architecture {
            Architecture::Bert => self.max_position_embeddings,
            // Rows 0..=padding_idx are never a real token's position.
            Architecture::MPNet => self
                .max_position_embeddings
                .saturating_sub(MPNET_PADDING_IDX as usize + 1),
        }
    }
}

/// Pooling modes this exporter implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }
}

/// A projection head loaded from `--head`.
#[derive(Debug, Clone)]
pub struct Head {
    pub file_name: String,
    pub in_features: usize,
    pub out_features: usize,
    /// `[out, in]`, row-major.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// The parts of a sentence-transformers folder the export reads.
#[derive(Debug, Clone)]
pub struct SentenceTransformerFolder {
    pub dir: PathBuf,
    pub name: String,
    pub config: EncoderConfig,
    pub pooling: Pooling,
    /// `max_seq_length` of sentence_bert_config.json, capped at what the position embeddings
    /// number ([`EncoderConfig::max_positions`]).
    pub max_tokens: usize,
    /// Whether modules.json lists a Normalize module.
    pub normalize: bool,
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn get_usize(config: &Value, key: &str, path: &Path) -> Result<usize> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| anyhow!("{}: missing or non-integer field {key:?}", path.display()))
}

impl EncoderConfig {
    /// Parses and checks `config.json`, refusing what the exporter does not implement.
    pub fn from_json(config: &Value, path: &Path) -> Result<EncoderConfig> {
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let architecture = match model_type.as_str() {
            "bert" => Architecture::Bert,
            "mpnet" => Architecture::MPNet,
            "" => bail!(
                "{}: no model_type; only BERT-family (model_type \"bert\", e.g. all-MiniLM-L6-v2) and MPNet (model_type \"mpnet\", e.g. all-mpnet-base-v2) models can be exported",
                path.display()
            ),
            other => bail!(
                "{}: model_type {other:?} is not supported; only BERT-family (model_type \"bert\", e.g. all-MiniLM-L6-v2) and MPNet (model_type \"mpnet\", e.g. all-mpnet-base-v2) models can be exported",
                path.display()
            ),
        };
        let hidden_act = config
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        if hidden_act != "gelu" {
            bail!(
                "{}: hidden_act {hidden_act:?} is not supported; only \"gelu\" (the exact erf GELU of BERT and MPNet) is, tanh approximations such as \"gelu_new\" are not",
                path.display()
            );
        }
        let position = config
            .get("position_embedding_type")
            .and_then(Value::as_str)
            .unwrap_or("absolute");
        if position != "absolute" {
            bail!(
                "{}: position_embedding_type {position:?} is not supported; only \"absolute\" position embeddings are",
                path.display()
            );
        }
        if config.get("is_decoder").and_then(Value::as_bool) == Some(true) {
            bail!(
                "{}: is_decoder is true; only encoder (bidirectional) models can be exported",
                path.display()
            );
        }
        let cfg = EncoderConfig {
            architecture,
            model_type,
            name_or_path: config
                .get("_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
            vocab_size: get_usize(config, "vocab_size", path)?,
            hidden_size: get_usize(config, "hidden_size", path)?,
            num_layers: get_usize(config, "num_hidden_layers", path)?,
            num_heads: get_usize(config, "num_attention_heads", path)?,
            intermediate_size: get_usize(config, "intermediate_size", path)?,
            max_position_embeddings: get_usize(config, "max_position_embeddings", path)?,
            type_vocab_size: match architecture {
                Architecture::Bert => config
                    .get("type_vocab_size")
                    .and_then(Value::as_u64)
                    .unwrap_or(2) as usize,
                Architecture::MPNet => 0,
            },
            layer_norm_eps: config
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12) as f32,
            relative_attention_num_buckets: match architecture {
                Architecture::Bert => 0,
                // HF's MPNetConfig default.
                Architecture::MPNet => config
                    .get("relative_attention_num_buckets")
                    .map_or(Ok(32), |_| {
                        get_usize(config, "relative_attention_num_buckets", path)
                    })?,
            },
        };
        if cfg.hidden_size == 0
            || cfg.num_heads == 0
            || !cfg.hidden_size.is_multiple_of(cfg.num_heads)
        {
            bail!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                cfg.hidden_size,
                cfg.num_heads
            );
        }
        if architecture == Architecture::MPNet {
            // The graph finds padding by this id, as HF's position ids do; HF compares with
            // its hard-coded padding_idx 1, so another id would make the two disagree.
            if let Some(pad) = config.get("pad_token_id").filter(|v| !v.is_null()) {
                if pad.as_i64() != Some(MPNET_PADDING_IDX) {
                    bail!(
                        "{}: pad_token_id {pad} is not supported; MPNet's position ids count tokens after padding_idx {MPNET_PADDING_IDX} (hard-coded in HF's MPNetEmbeddings), so the tokenizer's <pad> must have id {MPNET_PADDING_IDX} as in every published MPNet",
                        path.display()
                    );
                }
            }
            let buckets = cfg.relative_attention_num_buckets;
            // T5 bucketing: half the buckets per direction, half of those exact distances,
            // and at least one exact distance below the max distance.
            if !(4..=2 * MPNET_MAX_DISTANCE as usize).contains(&buckets) {
                bail!(
                    "{}: relative_attention_num_buckets {buckets} is not supported; MPNet's bucketing needs 4 to {} buckets (all published MPNets use 32)",
                    path.display(),
                    2 * MPNET_MAX_DISTANCE
                );
            }
            if cfg.max_positions() == 0 {
                bail!(
                    "{}: max_position_embeddings {} leaves no position for a token; MPNet's positions start at padding_idx + 1 = {}",
                    path.display(),
                    cfg.max_position_embeddings,
                    MPNET_PADDING_IDX + 1
                );
            }
        }
        Ok(cfg)
    }
}

/// MPNet's (T5's bidirectional) bucket of a relative position `key - query`, as HF's
/// `MPNetEncoder.relative_position_bucket`: half the buckets for keys after the query; in each
/// half, distances below `num_buckets / 4` have a bucket each, longer ones share
/// logarithmically wider buckets up to `max_distance`, beyond which all share the last one.
///
/// The logarithm is taken in f32 like PyTorch does; over every distance below 4096 it gives the
/// same buckets as f64 (checked in the tests), so the table is not sensitive to rounding.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: i64,
) -> i64 {
    let half = (num_buckets / 2) as i64;
    let n = -relative_position;
    let direction = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return direction + n;
    }
    let log_ratio =
        (n as f32 / max_exact as f32).ln() / ((max_distance as f64 / max_exact as f64).ln() as f32);
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as i64;
    direction + large.min(half - 1)
}

/// `table[i * len + j]` = the bucket of key `j` seen from query `i`, for `len` positions.
pub fn relative_position_bucket_table(len: usize, num_buckets: usize) -> Vec<i64> {
    let mut table = Vec::with_capacity(len * len);
    for query in 0..len as i64 {
        for key in 0..len as i64 {
            table.push(relative_position_bucket(
                key - query,
                num_buckets,
                MPNET_MAX_DISTANCE,
            ));
        }
    }
    table
}

/// Reads the pooling mode from a sentence-transformers `Pooling` config.
pub fn parse_pooling(config: &Value, path: &Path) -> Result<Pooling> {
    let flag = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
    let supported = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
    ];
    let unsupported = [
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ];
    let mut enabled: Vec<String> = Vec::new();
    let mut chosen = None;
    for (key, mode) in supported {
        if flag(key) {
            enabled.push(key.to_string());
            chosen = Some(mode);
        }
    }
    for key in unsupported {
        if flag(key) {
            enabled.push(key.to_string());
        }
    }
    // Newer sentence-transformers also accept a single `pooling_mode` string.
    if enabled.is_empty() {
        if let Some(mode) = config.get("pooling_mode").and_then(Value::as_str) {
            return match mode {
                "mean" => Ok(Pooling::Mean),
                "cls" => Ok(Pooling::Cls),
                "max" => Ok(Pooling::Max),
                other => bail!(
                    "{}: pooling_mode {other:?} is not supported; only mean, cls and max are",
                    path.display()
                ),
            };
        }
    }
    match (enabled.len(), chosen) {
        (1, Some(mode)) => Ok(mode),
        (0, _) => bail!("{}: no pooling mode is enabled; set one of pooling_mode_mean_tokens, pooling_mode_cls_token, pooling_mode_max_tokens", path.display()),
        _ => bail!(
            "{}: pooling {} is not supported; exactly one of mean, cls or max pooling must be enabled",
            path.display(),
            enabled.join(" + ")
        ),
    }
}

impl SentenceTransformerFolder {
    /// Reads and checks a sentence-transformers folder (without loading the weights).
    pub fn open(dir: &Path) -> Result<SentenceTransformerFolder> {
        if !dir.is_dir() {
            bail!("{} is not a folder; pass --from a sentence-transformers model folder (with config.json, model.safetensors, tokenizer.json)", dir.display());
        }
        let name = folder_name(dir);

        // modules.json (optional) names the pooling folder and tells whether a Normalize
        // module ends the pipeline.
        let modules_path = dir.join("modules.json");
        let mut pooling_dir = dir.join("1_Pooling");
        let mut normalize = false;
        if modules_path.exists() {
            let modules = read_json(&modules_path)?;
            let modules = modules.as_array().ok_or_else(|| {
                anyhow!(
                    "{}: expected a JSON list of modules",
                    modules_path.display()
                )
            })?;
            for module in modules {
                let kind = module.get("type").and_then(Value::as_str).unwrap_or("");
                let short = kind.rsplit('.').next().unwrap_or(kind);
                match short {
                    "Transformer" => {}
                    "Pooling" => {
                        if let Some(p) = module.get("path").and_then(Value::as_str) {
                            pooling_dir = dir.join(p);
                        }
                    }
                    "Normalize" => normalize = true,
                    _ => bail!(
                        "{}: module {kind:?} is not supported; only Transformer, Pooling and Normalize modules can be exported (a linear projection can be given with --head)",
                        modules_path.display()
                    ),
                }
            }
        }

        let required = [
            dir.join("config.json"),
            dir.join("model.safetensors"),
            dir.join(TOKENIZER_FILE),
            dir.join("sentence_bert_config.json"),
            pooling_dir.join("config.json"),
        ];
        let missing: Vec<String> = required
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
            .collect();
        if !missing.is_empty() {
            let hint = if missing.iter().any(|m| m == "model.safetensors")
                && dir.join("pytorch_model.bin").exists()
            {
                "; only safetensors weights are read: convert pytorch_model.bin to model.safetensors first"
            } else {
                "; download the complete model folder, e.g. `huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 --local-dir DIR`"
            };
            bail!(
                "{} is not a complete sentence-transformers folder: missing {}{hint}",
                dir.display(),
                missing.join(", ")
            );
        }

        let config_path = dir.join("config.json");
        let config = EncoderConfig::from_json(&read_json(&config_path)?, &config_path)?;

        let pooling_path = pooling_dir.join("config.json");
        let pooling_json = read_json(&pooling_path)?;
        let pooling = parse_pooling(&pooling_json, &pooling_path)?;
        if let Some(dim) = pooling_json
            .get("word_embedding_dimension")
            .and_then(Value::as_u64)
        {
            if dim as usize != config.hidden_size {
                bail!(
                    "{}: word_embedding_dimension {dim} differs from config.json's hidden_size {}",
                    pooling_path.display(),
                    config.hidden_size
                );
            }
        }

        let sbert_path = dir.join("sentence_bert_config.json");
        let sbert = read_json(&sbert_path)?;
        let max_seq_length = sbert
            .get("max_seq_length")
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .unwrap_or(config.max_positions());
        let max_tokens = max_seq_length.min(config.max_positions());
        // sentence-transformers lowercases the text itself when do_lower_case is set; the
        // bundle only has tokenizer.json, so that must lowercase already.
        if sbert.get("do_lower_case").and_then(Value::as_bool) == Some(true) {
            let tokenizer_path = dir.join(TOKENIZER_FILE);
            let tokenizer = read_json(&tokenizer_path)?;
            if !normalizer_lowercases(tokenizer.get("normalizer").unwrap_or(&Value::Null)) {
                bail!(
                    "{}: do_lower_case is true but {} does not lowercase; the bundle's tokenizer would see text sentence-transformers lowercases first: add a Lowercase normalizer to tokenizer.json",
                    sbert_path.display(),
                    tokenizer_path.display()
                );
            }
        }

        Ok(SentenceTransformerFolder {
            dir: dir.to_path_buf(),
            name,
            config,
            pooling,
            max_tokens,
            normalize,
        })
    }
}

/// Whether a tokenizer.json `normalizer` lowercases (BertNormalizer with `lowercase`, or a
/// Lowercase normalizer, possibly inside a Sequence).
fn normalizer_lowercases(normalizer: &Value) -> bool {
    match normalizer.get("type").and_then(Value::as_str) {
        Some("BertNormalizer") => normalizer
            .get("lowercase")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        Some("Lowercase") => true,
        Some("Sequence") => normalizer
            .get("normalizers")
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(normalizer_lowercases)),
        _ => false,
    }
}

fn folder_name(dir: &Path) -> String {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}

/// Loads a projection head (`weight` `[out, in]`, optional `bias` `[out]`).
pub fn load_head(path: &Path, in_features: usize) -> Result<Head> {
    if !path.is_file() {
        bail!("--head {}: no such file; pass a safetensors file with `weight` [out, in] and optional `bias` [out]", path.display());
    }
    let mut weights = Weights::open(path)?;
    if !weights.contains("weight") {
        bail!(
            "--head {}: no tensor named `weight`; the head must hold `weight` [out, in] and optional `bias` [out] (PyTorch nn.Linear names); found {:?}",
            path.display(),
            weights.names()
        );
    }
    let weight = weights.get_any("weight")?;
    if weight.shape.len() != 2 || weight.shape[1] != in_features || weight.shape[0] == 0 {
        bail!(
            "--head {}: `weight` has shape {:?}, expected [out, {in_features}] (PyTorch nn.Linear layout, `in` = the pooled embedding size {in_features})",
            path.display(),
            weight.shape
        );
    }
    let out_features = weight.shape[0];
    let bias = if weights.contains("bias") {
        Some(weights.get("bias", &[out_features])?.data)
    } else {
        None
    };
    Ok(Head {
        file_name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        in_features,
        out_features,
        weight: weight.data,
        bias,
    })
}

/// Where one layer's attention weights are, under `encoder.layer.N.`.
struct LayerNames {
    query: &'static str,
    key: &'static str,
    value: &'static str,
    /// The attention's output projection.
    output: &'static str,
    /// The LayerNorm after the attention's residual.
    attention_norm: &'static str,
}

/// HF `BertLayer`.
const BERT_LAYER: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
};

/// HF `MPNetLayer`.
const MPNET_LAYER: LayerNames = LayerNames {
    query: "attention.attn.q",
    key: "attention.attn.k",
    value: "attention.attn.v",
    output: "attention.attn.o",
    attention_norm: "attention.LayerNorm",
};

/// Refuses a checkpoint whose tensors are not named as config.json's model_type says, naming
/// the architecture they do look like.
fn check_architecture_tensors(
    config: &EncoderConfig,
    weights: &Weights,
    prefix: &str,
    names: &LayerNames,
) -> Result<()> {
    let mut expected = Vec::new();
    if config.architecture == Architecture::MPNet {
        expected.push("encoder.relative_attention_bias.weight".to_string());
    }
    if config.num_layers > 0 {
        expected.push(format!("encoder.layer.0.{}.weight", names.query));
    }
    let Some(missing) = expected.iter().find(|name| !weights.contains(name)) else {
        return Ok(());
    };
    let looks_like = if weights.contains(&format!("encoder.layer.0.{}.weight", MPNET_LAYER.query)) {
        Some(Architecture::MPNet)
    } else if weights.contains(&format!("encoder.layer.0.{}.weight", BERT_LAYER.query)) {
        Some(Architecture::Bert)
    } else {
        None
    };
    let hint = match looks_like {
        Some(other) if other != config.architecture => format!(
            "; its tensors are named like a {:?} checkpoint: set model_type to {:?} in config.json if that is what it is",
            other.model_type(),
            other.model_type()
        ),
        _ => format!(
            "; is it a {:?} checkpoint? It holds e.g. {:?}",
            config.model_type,
            weights.names().into_iter().take(4).collect::<Vec<_>>()
        ),
    };
    bail!(
        "{}: config.json says model_type {:?} but there is no tensor {prefix}{missing}{hint}",
        weights.path().display(),
        config.model_type,
    )
}

/// `embeddings.position_embeddings.weight` as an initializer.
fn position_table(
    g: &mut GraphBuilder,
    config: &EncoderConfig,
    weights: &mut Weights,
) -> Result<String> {
    let h = config.hidden_size;
    let pos = weights.get(
        "embeddings.position_embeddings.weight",
        &[config.max_position_embeddings, h],
    )?;
    Ok(g.initializer_f32(
        "embeddings.position_embeddings.weight",
        &[config.max_position_embeddings as i64, h as i64],
        &pos.data,
    ))
}

/// `[tokens]`, the length of the batch, as a 1-d int64 (for Slice ends).
fn token_count(g: &mut GraphBuilder, input_ids: &str) -> String {
    g.node(
        "Shape",
        &[input_ids],
        vec![
            AttributeProto::int("start", 1),
            AttributeProto::int("end", 2),
        ],
    )
}

/// MPNet's position ids `[batch, tokens]`: HF's `create_position_ids_from_input_ids`,
/// `padding_idx + cumsum(real) * real`, where a real token is one that is not `<pad>` (as in
/// HF) and is attended to, so that a batch padded with another id, or on the left, still
/// numbers its real tokens from `padding_idx + 1`.
fn mpnet_position_ids(g: &mut GraphBuilder, input_ids: &str, attention_mask: &str) -> String {
    let padding_idx = g.initializer_i64("padding_idx", &[], &[MPNET_PADDING_IDX]);
    let is_pad = g.node("Equal", &[input_ids, &padding_idx], vec![]);
    let not_pad = g.node("Not", &[&is_pad], vec![]);
    let attended = g.node(
        "Cast",
        &[attention_mask],
        vec![AttributeProto::int("to", DataType::Bool as i64)],
    );
    let real = g.node("And", &[&not_pad, &attended], vec![]);
    let real = g.node(
        "Cast",
        &[&real],
        vec![AttributeProto::int("to", DataType::Int64 as i64)],
    );
    let token_axis = g.initializer_i64("token_axis", &[], &[1]);
    let count = g.node("CumSum", &[&real, &token_axis], vec![]);
    let count = g.node("Mul", &[&count, &real], vec![]);
    g.node("Add", &[&count, &padding_idx], vec![])
}

/// MPNet's relative position bias `[heads, tokens, tokens]`: the precomputed bucket table
/// sliced to the batch's length, looked up in `encoder.relative_attention_bias.weight`.
fn mpnet_position_bias(
    g: &mut GraphBuilder,
    config: &EncoderConfig,
    weights: &mut Weights,
    tokens: &str,
) -> Result<String> {
    let buckets = config.relative_attention_num_buckets;
    let heads = config.num_heads;
    let weight = weights.get("encoder.relative_attention_bias.weight", &[buckets, heads])?;
    let weight = g.initializer_f32(
        "encoder.relative_attention_bias.weight",
        &[buckets as i64, heads as i64],
        &weight.data,
    );
    let len = config.max_positions();
    let table = g.initializer_i64(
        "encoder.relative_position_buckets",
        &[len as i64, len as i64],
        &relative_position_bucket_table(len, buckets),
    );
    let starts = g.const_i64("bucket_starts", &[0, 0]);
    let ends = g.node(
        "Concat",
        &[tokens, tokens],
        vec![AttributeProto::int("axis", 0)],
    );
    let axes = g.const_i64("bucket_axes", &[0, 1]);
    let table = g.node("Slice", &[&table, &starts, &ends, &axes], vec![]);
    let bias = g.node(
        "Gather",
        &[&weight, &table],
        vec![AttributeProto::int("axis", 0)],
    );
    Ok(g.node(
        "Transpose",
        &[&bias],
        vec![AttributeProto::ints("perm", &[2, 0, 1])],
    ))
}

/// Builds the ONNX model; returns it with the number of checkpoint weights it uses.
pub fn build_text_graph(
    config: &EncoderConfig,
    weights: &mut Weights,
    pooling: Pooling,
    head: Option<&Head>,
    doc: &str,
) -> Result<(ModelProto, u64)> {
    let h = config.hidden_size;
    let nh = config.num_heads;
    let dh = h / nh;
    let eps = config.layer_norm_eps;
    let embedding_dim = head.map_or(h, |hd| hd.out_features);

    let prefix = weights.detect_prefix("embeddings.word_embeddings.weight")?;
    let names = match config.architecture {
        Architecture::Bert => &BERT_LAYER,
        Architecture::MPNet => &MPNET_LAYER,
    };
    check_architecture_tensors(config, weights, &prefix, names)?;
    let mut g = GraphBuilder::new("text_encoder", TEXT_OPSET);
    let batch_tokens = [Dim::from("batch"), Dim::from("tokens")];
    let input_ids = g.input("input_ids", DataType::Int64, &batch_tokens);
    let attention_mask = g.input("attention_mask", DataType::Int64, &batch_tokens);

    // ---- embeddings: word (+ token type 0) + position, then LayerNorm (HF's order of sums).
    let word = weights.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
    let word = g.initializer_f32(
        "embeddings.word_embeddings.weight",
        &[config.vocab_size as i64, h as i64],
        &word.data,
    );
    let mut x = g.node(
        "Gather",
        &[&word, &input_ids],
        vec![AttributeProto::int("axis", 0)],
    );
    let tokens = match config.architecture {
        Architecture::Bert => {
            if config.type_vocab_size > 0
                && weights.contains("embeddings.token_type_embeddings.weight")
            {
                let tt = weights.get(
                    "embeddings.token_type_embeddings.weight",
                    &[config.type_vocab_size, h],
                )?;
                let tt0 = g.initializer_f32(
                    "embeddings.token_type_embeddings.row0",
                    &[h as i64],
                    &tt.data[..h],
                );
                x = g.node("Add", &[&x, &tt0], vec![]);
            }
            let pos = position_table(&mut g, config, weights)?;
            let tokens = token_count(&mut g, &input_ids);
            let zero = g.const_i64("zero", &[0]);
            let pos_rows = g.node("Slice", &[&pos, &zero, &tokens, &zero], vec![]);
            x = g.node("Add", &[&x, &pos_rows], vec![]);
            tokens
        }
        Architecture::MPNet => {
            let pos = position_table(&mut g, config, weights)?;
            let position_ids = mpnet_position_ids(&mut g, &input_ids, &attention_mask);
            let pos_rows = g.node(
                "Gather",
                &[&pos, &position_ids],
                vec![AttributeProto::int("axis", 0)],
            );
            x = g.node("Add", &[&x, &pos_rows], vec![]);
            token_count(&mut g, &input_ids)
        }
    };
    let ln_w = weights.get("embeddings.LayerNorm.weight", &[h])?;
    let ln_b = weights.get("embeddings.LayerNorm.bias", &[h])?;
    x = g.layer_norm("embeddings.LayerNorm", &x, &ln_w.data, &ln_b.data, eps);

    // ---- attention mask: 0 for real keys, MASK_NEG for padding; [batch, 1, 1, tokens].
    let mask_f = g.node(
        "Cast",
        &[&attention_mask],
        vec![AttributeProto::int("to", DataType::Float as i64)],
    );
    let one = g.scalar_f32("one", 1.0);
    let inverted = g.node("Sub", &[&one, &mask_f], vec![]);
    let neg = g.scalar_f32("mask_neg", MASK_NEG);
    let bias = g.node("Mul", &[&inverted, &neg], vec![]);
    let key_bias = g.unsqueeze(&bias, &[1, 2]);
    // What every layer adds to its attention logits: the key mask, plus for MPNet the
    // relative position bias, computed once as HF's MPNetEncoder does ([batch, heads, q, k]).
    let attention_bias = match config.architecture {
        Architecture::Bert => key_bias,
        Architecture::MPNet => {
            let position_bias = mpnet_position_bias(&mut g, config, weights, &tokens)?;
            g.node("Add", &[&position_bias, &key_bias], vec![])
        }
    };

    let heads_shape = g.const_i64("heads_shape", &[0, 0, nh as i64, dh as i64]);
    let hidden_shape = g.const_i64("hidden_shape", &[0, 0, h as i64]);
    let sqrt_dh = g.scalar_f32("sqrt_head_dim", (dh as f32).sqrt());
    let half = g.scalar_f32("half", 0.5);
    let sqrt2 = g.scalar_f32("sqrt2", std::f32::consts::SQRT_2);

    for layer in 0..config.num_layers {
        let p = format!("encoder.layer.{layer}.");
        let linear = |g: &mut GraphBuilder,
                      w: &mut Weights,
                      name: &str,
                      x: &str,
                      inf: usize,
                      outf: usize|
         -> Result<String> {
            let weight = w.get(&format!("{p}{name}.weight"), &[outf, inf])?;
            let bias = w.get(&format!("{p}{name}.bias"), &[outf])?;
            Ok(g.linear(
                &format!("{p}{name}"),
                x,
                &weight.data,
                Some(&bias.data),
                inf,
                outf,
            ))
        };
        // Self-attention: softmax(Q K^T / sqrt(d) + bias) V per head.
        let q = linear(&mut g, weights, names.query, &x, h, h)?;
        let k = linear(&mut g, weights, names.key, &x, h, h)?;
        let v = linear(&mut g, weights, names.value, &x, h, h)?;
        let q = g.node("Reshape", &[&q, &heads_shape], vec![]);
        let q = g.node(
            "Transpose",
            &[&q],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        );
        let k = g.node("Reshape", &[&k, &heads_shape], vec![]);
        let k = g.node(
            "Transpose",
            &[&k],
            vec![AttributeProto::ints("perm", &[0, 2, 3, 1])],
        );
        let v = g.node("Reshape", &[&v, &heads_shape], vec![]);
        let v = g.node(
            "Transpose",
            &[&v],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        );
        let scores = g.node("MatMul", &[&q, &k], vec![]);
        let scores = g.node("Div", &[&scores, &sqrt_dh], vec![]);
        let scores = g.node("Add", &[&scores, &attention_bias], vec![]);
        let probs = g.node("Softmax", &[&scores], vec![AttributeProto::int("axis", -1)]);
        let context = g.node("MatMul", &[&probs, &v], vec![]);
        let context = g.node(
            "Transpose",
            &[&context],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        );
        let context = g.node("Reshape", &[&context, &hidden_shape], vec![]);
        let attn = linear(&mut g, weights, names.output, &context, h, h)?;
        let attn = g.node("Add", &[&attn, &x], vec![]);
        let norm = names.attention_norm;
        let w = weights.get(&format!("{p}{norm}.weight"), &[h])?;
        let b = weights.get(&format!("{p}{norm}.bias"), &[h])?;
        let x1 = g.layer_norm(&format!("{p}{norm}"), &attn, &w.data, &b.data, eps);

        // Feed-forward: dense, GELU(x) = x * 0.5 * (1 + erf(x / sqrt 2)), dense.
        let inter = linear(
            &mut g,
            weights,
            "intermediate.dense",
            &x1,
            h,
            config.intermediate_size,
        )?;
        let scaled = g.node("Div", &[&inter, &sqrt2], vec![]);
        let erf = g.node("Erf", &[&scaled], vec![]);
        let erf1 = g.node("Add", &[&erf, &one], vec![]);
        let halfx = g.node("Mul", &[&inter, &half], vec![]);
        let gelu = g.node("Mul", &[&halfx, &erf1], vec![]);
        let out = linear(
            &mut g,
            weights,
            "output.dense",
            &gelu,
            config.intermediate_size,
            h,
        )?;
        let out = g.node("Add", &[&out, &x1], vec![]);
        let w = weights.get(&format!("{p}output.LayerNorm.weight"), &[h])?;
        let b = weights.get(&format!("{p}output.LayerNorm.bias"), &[h])?;
        x = g.layer_norm(&format!("{p}output.LayerNorm"), &out, &w.data, &b.data, eps);
    }

    // ---- pooling over the attention mask: [batch, tokens, hidden] -> [batch, hidden].
    let mask3 = g.unsqueeze(&mask_f, &[2]);
    let mut pooled = match pooling {
        Pooling::Mean => {
            let masked = g.node("Mul", &[&x, &mask3], vec![]);
            let sum = g.reduce("ReduceSum", &masked, &[1], false);
            let count = g.reduce("ReduceSum", &mask_f, &[1], true);
            // sentence-transformers clamps the token count at 1e-9.
            let min_count = g.scalar_f32("min_count", 1e-9);
            let count = g.node("Max", &[&count, &min_count], vec![]);
            g.node("Div", &[&sum, &count], vec![])
        }
        Pooling::Cls => {
            let index = g.initializer_i64("cls_index", &[], &[0]);
            g.node(
                "Gather",
                &[&x, &index],
                vec![AttributeProto::int("axis", 1)],
            )
        }
        Pooling::Max => {
            // Padding positions are replaced by -1e9 (as sentence-transformers does).
            let keep = g.node(
                "Cast",
                &[&mask3],
                vec![AttributeProto::int("to", DataType::Bool as i64)],
            );
            let floor = g.scalar_f32("max_pool_fill", -1e9);
            let filled = g.node("Where", &[&keep, &x, &floor], vec![]);
            g.reduce("ReduceMax", &filled, &[1], false)
        }
    };

    let mut parameters = weights.used_elements();
    if let Some(head) = head {
        pooled = g.linear(
            "head",
            &pooled,
            &head.weight,
            head.bias.as_deref(),
            head.in_features,
            head.out_features,
        );
        parameters += head.weight.len() as u64 + head.bias.as_ref().map_or(0, |b| b.len() as u64);
    }

    // ---- L2 normalisation: x / max(|x|, 1e-12) (torch.nn.functional.normalize).
    let norm = g.reduce("ReduceL2", &pooled, &[1], true);
    let min_norm = g.scalar_f32("min_norm", 1e-12);
    let norm = g.node("Max", &[&norm, &min_norm], vec![]);
    g.node_to("Div", &[&pooled, &norm], vec![], &["embedding"]);
    g.output(
        "embedding",
        DataType::Float,
        &[Dim::from("batch"), Dim::from(embedding_dim)],
    );

    let model = g.finish(ModelInfo {
        producer_name: "audiotext-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: Some(doc.to_string()),
        metadata: vec![
            ("model_type".into(), config.architecture.model_type().into()),
            ("pooling".into(), pooling.as_str().into()),
            ("embedding_dim".into(), embedding_dim.to_string()),
            ("normalized".into(), "true".into()),
        ],
    });
    Ok((model, parameters))
}

/// The licence recorded for a known source model (folder names as `huggingface-cli download`
/// or the HF cache, `sentence-transformers_NAME`, leave them).
fn known_license(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
        .into_iter()
        .find(|known| {
            let known = known.to_ascii_lowercase();
            lower == known || lower.ends_with(&format!("_{known}"))
        })
        .map(|known| format!("Apache-2.0 ({known}, sentence-transformers)"))
}

/// Exports a sentence-transformers folder to a model bundle.
pub fn export_text(options: &ExportTextOptions) -> Result<ExportTextReport> {
    let started = Instant::now();
    let folder = SentenceTransformerFolder::open(&options.from)?;
    let config = &folder.config;

    let head = match &options.head {
        Some(path) => Some(load_head(path, config.hidden_size)?),
        None => None,
    };
    let embedding_dim = head.as_ref().map_or(config.hidden_size, |h| h.out_features);

    // The output folder: never the source itself (tokenizer.json would be copied onto itself).
    let out = &options.out;
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} exists and is not a folder; pass a folder for the bundle",
            out.display()
        );
    }
    if out.is_dir() {
        let same = match (out.canonicalize(), folder.dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            bail!(
                "--out {} is the source folder; write the bundle to another folder",
                out.display()
            );
        }
    }

    // An existing manifest keeps its other sections; check it before writing anything.
    let existing = if out.join(MANIFEST_FILE).is_file() {
        let manifest = Manifest::read(out).map_err(|e| {
            anyhow!(
                "{e}; to start over, delete {} or export into an empty folder",
                out.join(MANIFEST_FILE).display()
            )
        })?;
        if manifest.audio.is_some() {
            // Text and audio share the manifest's one embedding_dim.
            let audio_dim = manifest.embedding_dim;
            if audio_dim != embedding_dim {
                bail!(
                    "{} holds an audio encoder with {audio_dim}-dim embeddings but the text encoder gives {embedding_dim}; text and audio must share one embedding space: pass --head FILE that projects to {audio_dim} dims, or export into another folder",
                    out.join(MANIFEST_FILE).display()
                );
            }
        }
        Some(manifest)
    } else {
        None
    };

    let mut weights = Weights::open(&folder.dir.join("model.safetensors"))?;
    let mut source = json!({
        "model_type": config.model_type,
        "folder": folder.name,
        "name_or_path": config.name_or_path,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "pooling": folder.pooling.as_str(),
        "normalize": true,
        "head": head.as_ref().map(|h| json!({
            "file": h.file_name,
            "in": h.in_features,
            "out": h.out_features,
            "bias": h.bias.is_some(),
        })),
        "opset": TEXT_OPSET,
        "exporter": format!("audiotext-train {}", env!("CARGO_PKG_VERSION")),
    });
    if config.architecture == Architecture::MPNet {
        source["relative_attention_num_buckets"] = json!(config.relative_attention_num_buckets);
        source["relative_attention_max_distance"] = json!(MPNET_MAX_DISTANCE);
        source["padding_idx"] = json!(MPNET_PADDING_IDX);
    }
    let doc = format!(
        "{} text encoder ({} {} layers, hidden {}), {} pooling{}, L2-normalised; exported by audiotext-train",
        folder.name,
        config.model_type,
        config.num_layers,
        config.hidden_size,
        folder.pooling.as_str(),
        head.as_ref().map(|h| format!(", projection head {}->{}", h.in_features, h.out_features)).unwrap_or_default()
    );
    let (model, parameters) =
        build_text_graph(config, &mut weights, folder.pooling, head.as_ref(), &doc)?;
    drop(weights);
    let bytes = model.to_bytes();
    drop(model);

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let onnx_path = out.join(TEXT_ONNX_FILE);
    let tmp = out.join(format!("{TEXT_ONNX_FILE}.tmp"));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &onnx_path)
        .with_context(|| format!("cannot write {}", onnx_path.display()))?;
    let tokenizer_src = folder.dir.join(TOKENIZER_FILE);
    let tokenizer_dst = out.join(TOKENIZER_FILE);
    std::fs::copy(&tokenizer_src, &tokenizer_dst).with_context(|| {
        format!(
            "cannot copy {} to {}",
            tokenizer_src.display(),
            tokenizer_dst.display()
        )
    })?;

    let text = TextSection {
        onnx: TEXT_ONNX_FILE.to_string(),
        tokenizer: TOKENIZER_FILE.to_string(),
        max_tokens: folder.max_tokens,
        pooling: folder.pooling.as_str().to_string(),
        input_ids: "input_ids".to_string(),
        attention_mask: "attention_mask".to_string(),
        output: "embedding".to_string(),
        source: Some(source),
    };
    let kept = existing.is_some();
    let mut manifest = match existing {
        Some(mut manifest) => {
            manifest.text = Some(text);
            manifest.embedding_dim = embedding_dim;
            if manifest.license.is_none() {
                manifest.license = known_license(&folder.name);
            }
            manifest
        }
        None => Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: folder.name.clone(),
            embedding_dim,
            text: Some(text),
            audio: None,
            training: None,
            license: known_license(&folder.name),
            files: Default::default(),
        },
    };
    manifest
        .write(out)
        .map_err(|e| anyhow!("cannot write the manifest: {e}"))?;

    let mut notes = Vec::new();
    if !folder.normalize {
        notes.push(
            "the source pipeline has no Normalize module; the export L2-normalises anyway (bundles hold unit vectors), cosine similarities are unchanged".to_string(),
        );
    }
    Ok(ExportTextReport {
        name: manifest.name.clone(),
        model_type: config.model_type.clone(),
        hidden_size: config.hidden_size,
        num_layers: config.num_layers,
        num_heads: config.num_heads,
        vocab_size: config.vocab_size,
        embedding_dim,
        max_tokens: folder.max_tokens,
        pooling: folder.pooling.as_str().to_string(),
        head: head.as_ref().map(|h| (h.in_features, h.out_features)),
        parameters,
        onnx_path,
        onnx_bytes: bytes.len() as u64,
        manifest_path: out.join(MANIFEST_FILE),
        kept_existing_manifest: kept,
        notes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use audiotext_onnx::proto::type_proto;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    const H: usize = 8;
    const HEADS: usize = 2;
    const INTER: usize = 16;
    const VOCAB: usize = 20;
    const MAX_POS: usize = 16;

    use crate::testing::TempDir;

    fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.2)
            .collect()
    }

    /// A tiny random BERT in sentence-transformers layout; returns its parameter count.
    fn tiny_model(dir: &Path, prefix: &str, config_patch: Value) -> u64 {
        let mut config = json!({
            "model_type": "bert", "hidden_size": H, "num_hidden_layers": 2, "num_attention_heads": HEADS,
            "intermediate_size": INTER, "vocab_size": VOCAB, "max_position_embeddings": MAX_POS,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
            "position_embedding_type": "absolute"
        });
        for (k, v) in config_patch.as_object().unwrap() {
            config[k] = v.clone();
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            let n = shape.iter().product();
            let seed = t.len();
            t.push((format!("{prefix}{name}"), shape, values(n, seed)));
        };
        add("embeddings.word_embeddings.weight".into(), vec![VOCAB, H]);
        add(
            "embeddings.position_embeddings.weight".into(),
            vec![MAX_POS, H],
        );
        add("embeddings.token_type_embeddings.weight".into(), vec![2, H]);
        add("embeddings.LayerNorm.weight".into(), vec![H]);
        add("embeddings.LayerNorm.bias".into(), vec![H]);
        for l in 0..2 {
            let p = format!("encoder.layer.{l}.");
            for name in [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
            ] {
                add(format!("{p}{name}.weight"), vec![H, H]);
                add(format!("{p}{name}.bias"), vec![H]);
            }
            add(format!("{p}intermediate.dense.weight"), vec![INTER, H]);
            add(format!("{p}intermediate.dense.bias"), vec![INTER]);
            add(format!("{p}output.dense.weight"), vec![H, INTER]);
            add(format!("{p}output.dense.bias"), vec![H]);
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                add(format!("{p}{ln}.weight"), vec![H]);
                add(format!("{p}{ln}.bias"), vec![H]);
            }
        }
        // A tensor BertModel has but the sentence embedding does not use.
        t.push((
            format!("{prefix}pooler.dense.weight"),
            vec![H, H],
            values(H * H, 99),
        ));
        let params = t
            .iter()
            .filter(|(n, _, _)| !n.contains("pooler"))
            .map(|(_, _, d)| d.len() as u64)
            .sum();
        write_safetensors(&dir.join("model.safetensors"), &t);
        write_sentence_transformers_files(dir, "{\"model\": {}}");
        params
    }

    /// What sentence-transformers writes next to the weights: tokenizer, max length 64,
    /// mean pooling, Normalize.
    fn write_sentence_transformers_files(dir: &Path, tokenizer_json: &str) {
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json).unwrap();
        std::fs::write(
            dir.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 64, "do_lower_case": false}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(
            dir.join("1_Pooling/config.json"),
            json!({"word_embedding_dimension": H, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false,
                   "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
    }

    const MPNET_BUCKETS: usize = 32;
    const MPNET_WORDS: [&str; 12] = [
        "a", "dog", "barks", "the", "cat", "rain", "on", "roof", "##s", "##ing", ".", ",",
    ];

    /// A WordPiece tokenizer.json with MPNet's special tokens (`<s>` 0, `<pad>` 1, `</s>` 2,
    /// `<unk>` 3) and its post-processor (`<s> A </s>`, `<s> A </s> </s> B </s>`).
    fn mpnet_tokenizer_json() -> String {
        let specials = ["<s>", "<pad>", "</s>", "<unk>"];
        let mut vocab = serde_json::Map::new();
        for (id, token) in specials.iter().chain(MPNET_WORDS.iter()).enumerate() {
            vocab.insert(token.to_string(), json!(id));
        }
        let added: Vec<Value> = specials
            .iter()
            .enumerate()
            .map(|(id, t)| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                                  "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let sequence = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
        json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [special("<s>"), sequence("A", 0), special("</s>")],
                "pair": [special("<s>"), sequence("A", 0), special("</s>"), special("</s>"),
                         sequence("B", 1), special("</s>")],
                "special_tokens": {
                    "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                    "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}
                }
            },
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "<unk>", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        })
        .to_string()
    }

    /// A tiny random MPNet in sentence-transformers layout (HF `MPNetModel` tensor names under
    /// `prefix`); returns its parameter count.
    fn tiny_mpnet(dir: &Path, prefix: &str, config_patch: Value) -> u64 {
        let mut config = json!({
            "model_type": "mpnet", "architectures": ["MPNetModel"], "hidden_size": H,
            "num_hidden_layers": 2, "num_attention_heads": HEADS, "intermediate_size": INTER,
            "vocab_size": VOCAB, "max_position_embeddings": MAX_POS,
            "relative_attention_num_buckets": MPNET_BUCKETS, "layer_norm_eps": 1e-5,
            "hidden_act": "gelu", "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2
        });
        for (k, v) in config_patch.as_object().unwrap() {
            config[k] = v.clone();
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            let n = shape.iter().product();
            let seed = t.len();
            t.push((format!("{prefix}{name}"), shape, values(n, seed)));
        };
        add("embeddings.word_embeddings.weight".into(), vec![VOCAB, H]);
        add(
            "embeddings.position_embeddings.weight".into(),
            vec![MAX_POS, H],
        );
        add("embeddings.LayerNorm.weight".into(), vec![H]);
        add("embeddings.LayerNorm.bias".into(), vec![H]);
        add(
            "encoder.relative_attention_bias.weight".into(),
            vec![MPNET_BUCKETS, HEADS],
        );
        for l in 0..2 {
            let p = format!("encoder.layer.{l}.");
            for name in ["q", "k", "v", "o"] {
                add(format!("{p}attention.attn.{name}.weight"), vec![H, H]);
                add(format!("{p}attention.attn.{name}.bias"), vec![H]);
            }
            add(format!("{p}intermediate.dense.weight"), vec![INTER, H]);
            add(format!("{p}intermediate.dense.bias"), vec![INTER]);
            add(format!("{p}output.dense.weight"), vec![H, INTER]);
            add(format!("{p}output.dense.bias"), vec![H]);
            for ln in ["attention.LayerNorm", "output.LayerNorm"] {
                add(format!("{p}{ln}.weight"), vec![H]);
                add(format!("{p}{ln}.bias"), vec![H]);
            }
        }
        let params = t.iter().map(|(_, _, d)| d.len() as u64).sum();
        // MPNetModel's pooler, which the sentence embedding does not use.
        t.push((
            format!("{prefix}pooler.dense.weight"),
            vec![H, H],
            values(H * H, 99),
        ));
        write_safetensors(&dir.join("model.safetensors"), &t);
        write_sentence_transformers_files(dir, &mpnet_tokenizer_json());
        params
    }

    fn options(from: &Path, out: &Path) -> ExportTextOptions {
        ExportTextOptions {
            from: from.to_path_buf(),
            out: out.to_path_buf(),
            head: None,
        }
    }

    fn tensor_dims(v: &audiotext_onnx::proto::ValueInfoProto) -> (i32, Vec<String>) {
        match &v.r#type.as_ref().unwrap().value {
            Some(type_proto::Value::TensorType(t)) => (
                t.elem_type.unwrap(),
                t.shape
                    .as_ref()
                    .unwrap()
                    .dim
                    .iter()
                    .map(|d| match d.value.as_ref().unwrap() {
                        audiotext_onnx::proto::tensor_shape_proto::dimension::Value::DimValue(
                            n,
                        ) => n.to_string(),
                        audiotext_onnx::proto::tensor_shape_proto::dimension::Value::DimParam(
                            s,
                        ) => s.clone(),
                    })
                    .collect(),
            ),
            None => panic!("no tensor type"),
        }
    }

    #[test]
    fn exports_a_tiny_bert_bundle() {
        let src = TempDir::new("src");
        let out = TempDir::new("out");
        let params = tiny_model(&src.0, "", json!({}));
        let report = export_text(&options(&src.0, &out.0.join("bundle"))).unwrap();
        let bundle = out.0.join("bundle");
        assert_eq!(report.embedding_dim, H);
        assert_eq!(
            report.max_tokens, MAX_POS,
            "max_seq_length 64 is capped at max_position_embeddings"
        );
        assert_eq!(report.parameters, params);
        assert!(report.notes.is_empty());

        let bytes = std::fs::read(bundle.join(TEXT_ONNX_FILE)).unwrap();
        assert_eq!(bytes.len() as u64, report.onnx_bytes);
        let model = ModelProto::from_bytes(&bytes).unwrap();
        assert_eq!(model.opset_import.len(), 1);
        assert_eq!(model.opset_import[0].domain.as_deref(), Some(""));
        assert_eq!(model.opset_import[0].version, Some(TEXT_OPSET));
        let graph = model.graph.unwrap();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .map(|i| (i.name.clone().unwrap(), tensor_dims(i)))
            .collect();
        assert_eq!(
            inputs,
            [
                (
                    "input_ids".to_string(),
                    (
                        DataType::Int64 as i32,
                        vec!["batch".to_string(), "tokens".to_string()]
                    )
                ),
                (
                    "attention_mask".to_string(),
                    (
                        DataType::Int64 as i32,
                        vec!["batch".to_string(), "tokens".to_string()]
                    )
                ),
            ]
        );
        assert_eq!(graph.output.len(), 1);
        assert_eq!(graph.output[0].name.as_deref(), Some("embedding"));
        assert_eq!(
            tensor_dims(&graph.output[0]),
            (
                DataType::Float as i32,
                vec!["batch".to_string(), H.to_string()]
            )
        );
        assert!(graph
            .node
            .iter()
            .all(|n| n.domain.as_deref().unwrap_or("").is_empty()));
        let count = |op: &str| {
            graph
                .node
                .iter()
                .filter(|n| n.op_type.as_deref() == Some(op))
                .count()
        };
        assert_eq!(count("LayerNormalization"), 1 + 2 * 2);
        assert_eq!(count("Softmax"), 2);
        assert_eq!(count("Erf"), 2);
        // Every value a node reads is a graph input, an initializer or an earlier node's output.
        let mut defined: std::collections::HashSet<String> = graph
            .input
            .iter()
            .map(|i| i.name.clone().unwrap())
            .collect();
        defined.extend(graph.initializer.iter().map(|t| t.name.clone().unwrap()));
        for node in &graph.node {
            for input in &node.input {
                assert!(defined.contains(input), "{input} used before it is defined");
            }
            defined.extend(node.output.iter().cloned());
        }

        let manifest = Manifest::read(&bundle).unwrap();
        assert_eq!(manifest.name, src.0.file_name().unwrap().to_string_lossy());
        assert_eq!(manifest.embedding_dim, H);
        assert_eq!(manifest.license, None);
        let text = manifest.text.unwrap();
        assert_eq!((text.max_tokens, text.pooling.as_str()), (MAX_POS, "mean"));
        let source = text.source.unwrap();
        assert_eq!(source["model_type"], "bert");
        assert_eq!(source["num_hidden_layers"], 2);
        assert_eq!(source["head"], Value::Null);
        assert_eq!(manifest.files.len(), 2);
        assert_eq!(
            std::fs::read(bundle.join(TOKENIZER_FILE)).unwrap(),
            b"{\"model\": {}}"
        );
    }

    #[test]
    fn reads_prefixed_checkpoints_and_other_poolings() {
        for (flag, expected) in [
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_max_tokens", "max"),
        ] {
            let src = TempDir::new("prefixed");
            let out = TempDir::new("out");
            tiny_model(&src.0, "bert.", json!({}));
            let pooling = json!({"pooling_mode_mean_tokens": false, flag: true});
            std::fs::write(src.0.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
            let report = export_text(&options(&src.0, &out.0)).unwrap();
            assert_eq!(report.pooling, expected);
            assert_eq!(
                Manifest::read(&out.0).unwrap().text.unwrap().pooling,
                expected
            );
        }
    }

    #[test]
    fn applies_a_head_and_keeps_an_existing_audio_section() {
        let src = TempDir::new("src");
        let out = TempDir::new("out");
        tiny_model(&src.0, "", json!({}));
        // A bundle that already holds a 4-dim audio encoder.
        std::fs::write(out.0.join("audio.onnx"), b"audio").unwrap();
        let mut existing = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: "my-bundle".into(),
            embedding_dim: 4,
            text: None,
            audio: Some(audiotext_core::model::manifest::AudioSection {
                onnx: "audio.onnx".into(),
                front_end: audiotext_core::audio::FrontEnd::panns_32k(),
                windowing: audiotext_core::audio::Windowing::ten_seconds(),
                input: audiotext_core::model::manifest::AudioInput {
                    name: "log_mel".into(),
                    layout: "batch,1,frames,mels".into(),
                    waveform: None,
                },
                output: "embedding".into(),
                encoder: None,
                quantization: None,
            }),
            training: Some(json!({"epochs": 3})),
            license: Some("CC-BY-4.0".into()),
            files: Default::default(),
        };
        existing.write(&out.0).unwrap();

        // 8-dim text next to 4-dim audio is refused, and nothing is written.
        let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
        assert!(
            error.contains("audio") && error.contains("--head"),
            "{error}"
        );
        assert!(!out.0.join(TEXT_ONNX_FILE).exists());

        // A head projecting 8 -> 4 fits.
        let head = src.0.join("proj.safetensors");
        write_safetensors(
            &head,
            &[
                ("weight".into(), vec![4, H], values(4 * H, 5)),
                ("bias".into(), vec![4], values(4, 6)),
            ],
        );
        let mut opts = options(&src.0, &out.0);
        opts.head = Some(head);
        let report = export_text(&opts).unwrap();
        assert_eq!(report.embedding_dim, 4);
        assert_eq!(report.head, Some((H, 4)));
        assert!(report.kept_existing_manifest);
        let manifest = Manifest::read(&out.0).unwrap();
        assert_eq!(manifest.name, "my-bundle");
        assert_eq!(manifest.license.as_deref(), Some("CC-BY-4.0"));
        assert_eq!(manifest.audio, existing.audio);
        assert_eq!(manifest.training, existing.training);
        assert_eq!(manifest.embedding_dim, 4);
        let files: Vec<_> = manifest.files.keys().cloned().collect();
        assert_eq!(files, ["audio.onnx", "text.onnx", "tokenizer.json"]);
        let source = manifest.text.unwrap().source.unwrap();
        assert_eq!(
            source["head"],
            json!({"file": "proj.safetensors", "in": H, "out": 4, "bias": true})
        );
        let graph = ModelProto::from_bytes(&std::fs::read(out.0.join(TEXT_ONNX_FILE)).unwrap())
            .unwrap()
            .graph
            .unwrap();
        assert_eq!(tensor_dims(&graph.output[0]).1, ["batch", "4"]);

        // A head whose `in` is not the hidden size is refused.
        let bad = src.0.join("bad.safetensors");
        write_safetensors(
            &bad,
            &[("weight".into(), vec![4, H + 1], values(4 * (H + 1), 1))],
        );
        opts.head = Some(bad);
        let error = format!("{:#}", export_text(&opts).unwrap_err());
        assert!(error.contains("expected [out, 8]"), "{error}");
    }

    #[test]
    fn refuses_unsupported_models_with_a_fix() {
        let cases = [
            // BERT weights under an MPNet config.
            (
                json!({"model_type": "mpnet"}),
                "no tensor encoder.relative_attention_bias.weight; its tensors are named like a \"bert\" checkpoint",
            ),
            (json!({"model_type": "roberta"}), "only BERT-family"),
            (json!({"model_type": "roberta"}), "and MPNet"),
            (json!({"hidden_act": "gelu_new"}), "hidden_act \"gelu_new\""),
            (
                json!({"position_embedding_type": "relative_key"}),
                "only \"absolute\"",
            ),
            (json!({"num_attention_heads": 3}), "not a multiple"),
        ];
        for (patch, message) in cases {
            let src = TempDir::new("bad");
            let out = TempDir::new("out");
            tiny_model(&src.0, "", patch);
            let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
            assert!(error.contains(message), "{error}");
        }

        let src = TempDir::new("missing");
        let out = TempDir::new("out");
        tiny_model(&src.0, "", json!({}));
        std::fs::remove_file(src.0.join("tokenizer.json")).unwrap();
        std::fs::remove_file(src.0.join("1_Pooling/config.json")).unwrap();
        let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
        assert!(
            error.contains("missing tokenizer.json, 1_Pooling/config.json"),
            "{error}"
        );

        let src = TempDir::new("pool");
        tiny_model(&src.0, "", json!({}));
        std::fs::write(
            src.0.join("1_Pooling/config.json"),
            r#"{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#,
        )
        .unwrap();
        let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
        assert!(error.contains("exactly one of mean, cls or max"), "{error}");

        let src = TempDir::new("same");
        tiny_model(&src.0, "", json!({}));
        let error = format!("{:#}", export_text(&options(&src.0, &src.0)).unwrap_err());
        assert!(error.contains("is the source folder"), "{error}");
    }

    #[test]
    fn recognises_lowercasing_tokenizers() {
        assert!(normalizer_lowercases(
            &json!({"type": "BertNormalizer", "lowercase": true})
        ));
        assert!(!normalizer_lowercases(
            &json!({"type": "BertNormalizer", "lowercase": false})
        ));
        assert!(normalizer_lowercases(
            &json!({"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]})
        ));
        assert!(!normalizer_lowercases(&Value::Null));
        assert_eq!(
            known_license("all-MiniLM-L6-v2").as_deref(),
            Some("Apache-2.0 (all-MiniLM-L6-v2, sentence-transformers)")
        );
        assert_eq!(
            known_license("sentence-transformers_all-mpnet-base-v2").as_deref(),
            Some("Apache-2.0 (all-mpnet-base-v2, sentence-transformers)")
        );
        assert_eq!(known_license("my-mpnet-base-v2"), None);
    }

    #[test]
    fn relative_position_buckets_match_hand_computed_values() {
        // (key - query, bucket) for 32 buckets and max distance 128: keys before the query
        // (negative) use buckets 0..16, keys after it 16..32; distances 0..7 are exact, then
        // 8 + floor(8 * ln(d / 8) / ln(16)) up to 15.
        let expected = [
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-11, 8),
            (-12, 9),
            (-15, 9),
            (-16, 10),
            (-23, 11),
            (-32, 12),
            (-45, 12),
            (-46, 13),
            (-63, 13),
            (-64, 14),
            (-90, 14),
            (-91, 15),
            (-127, 15),
            (-128, 15),
            (-1000, 15),
            (1, 17),
            (7, 23),
            (8, 24),
            (16, 26),
            (64, 30),
            (127, 31),
            (513, 31),
        ];
        for (relative, bucket) in expected {
            assert_eq!(
                relative_position_bucket(relative, 32, MPNET_MAX_DISTANCE),
                bucket,
                "relative position {relative}"
            );
        }
        // PyTorch takes the log in f32; f64 gives the same buckets at every distance the
        // tables can hold, so the boundaries (16, 32, 64: exact powers) are not a matter of
        // rounding.
        for n in 8..4096i64 {
            let wide = 8 + ((n as f64 / 8.0).ln() / 16f64.ln() * 8.0) as i64;
            assert_eq!(
                relative_position_bucket(-n, 32, MPNET_MAX_DISTANCE),
                wide.min(15),
                "distance {n}"
            );
        }
        let table = relative_position_bucket_table(3, 32);
        assert_eq!(table, [0, 17, 18, 1, 0, 17, 2, 1, 0]);
    }

    #[test]
    fn exports_a_tiny_mpnet_bundle() {
        for prefix in ["", "mpnet."] {
            let src = TempDir::new("mpnet");
            let out = TempDir::new("out");
            let params = tiny_mpnet(&src.0, prefix, json!({}));
            let report = export_text(&options(&src.0, &out.0)).unwrap();
            assert_eq!(report.model_type, "mpnet");
            assert_eq!(report.embedding_dim, H);
            assert_eq!(
                report.max_tokens,
                MAX_POS - 2,
                "max_seq_length 64 is capped at the {} positions after padding_idx",
                MAX_POS - 2
            );
            assert_eq!(
                report.parameters, params,
                "every tensor but the pooler is used"
            );

            let manifest = Manifest::read(&out.0).unwrap();
            let text = manifest.text.unwrap();
            assert_eq!(
                (text.max_tokens, text.pooling.as_str()),
                (MAX_POS - 2, "mean")
            );
            let source = text.source.unwrap();
            assert_eq!(source["model_type"], "mpnet");
            assert_eq!(source["relative_attention_num_buckets"], MPNET_BUCKETS);
            assert_eq!(source["relative_attention_max_distance"], 128);
            assert_eq!(source["padding_idx"], 1);

            let model = ModelProto::from_bytes(&std::fs::read(out.0.join(TEXT_ONNX_FILE)).unwrap())
                .unwrap();
            assert!(model
                .metadata_props
                .iter()
                .any(|p| p.key.as_deref() == Some("model_type")
                    && p.value.as_deref() == Some("mpnet")));
            let graph = model.graph.unwrap();
            let count = |op: &str| {
                graph
                    .node
                    .iter()
                    .filter(|n| n.op_type.as_deref() == Some(op))
                    .count()
            };
            assert_eq!(count("LayerNormalization"), 1 + 2 * 2);
            assert_eq!(count("Softmax"), 2);
            assert_eq!(count("Erf"), 2);
            // Position ids once, the bias once for all layers.
            assert_eq!(count("CumSum"), 1);
            assert_eq!(count("Concat"), 1);
            let initializer = |name: &str| {
                graph
                    .initializer
                    .iter()
                    .find(|t| t.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("no initializer {name}"))
            };
            let table = initializer("encoder.relative_position_buckets");
            let len = (MAX_POS - 2) as i64;
            assert_eq!(table.dims, [len, len]);
            let raw = table.raw_data.as_ref().unwrap();
            let buckets: Vec<i64> = raw
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(
                buckets,
                relative_position_bucket_table(MAX_POS - 2, MPNET_BUCKETS)
            );
            assert_eq!(
                initializer("encoder.relative_attention_bias.weight").dims,
                [MPNET_BUCKETS as i64, HEADS as i64]
            );
            assert!(graph.initializer.iter().all(|t| !t
                .name
                .as_deref()
                .unwrap_or("")
                .contains("token_type")));
            let mut defined: std::collections::HashSet<String> = graph
                .input
                .iter()
                .map(|i| i.name.clone().unwrap())
                .collect();
            defined.extend(graph.initializer.iter().map(|t| t.name.clone().unwrap()));
            for node in &graph.node {
                for input in &node.input {
                    assert!(defined.contains(input), "{input} used before it is defined");
                }
                defined.extend(node.output.iter().cloned());
            }

            // The bundle's tokenizer is the folder's, and the extension's loader wraps text in
            // MPNet's <s> ... </s> and truncates at max_tokens.
            let tokenizer = audiotext_core::text::load_tokenizer(
                &out.0.join(TOKENIZER_FILE),
                report.max_tokens,
            )
            .unwrap();
            let ids = tokenizer.encode("A dog barks", true).unwrap();
            assert_eq!(ids.get_ids(), [0, 4, 5, 6, 2]);
            let long = tokenizer.encode("dog ".repeat(40), true).unwrap();
            assert_eq!(long.get_ids().len(), MAX_POS - 2);
            assert_eq!(long.get_ids().last(), Some(&2));
        }
    }

    #[test]
    fn refuses_unsupported_mpnet_shapes_with_a_fix() {
        let cases = [
            (
                json!({"pad_token_id": 0}),
                "pad_token_id 0 is not supported",
            ),
            (
                json!({"relative_attention_num_buckets": 2}),
                "relative_attention_num_buckets 2 is not supported",
            ),
            // The checkpoint has 32 buckets.
            (
                json!({"relative_attention_num_buckets": 16}),
                "relative_attention_bias.weight has shape [32, 2], expected [16, 2]",
            ),
            (json!({"max_position_embeddings": 2}), "leaves no position"),
            (
                json!({"max_position_embeddings": 18}),
                "position_embeddings.weight has shape [16, 8], expected [18, 8]",
            ),
            (json!({"num_attention_heads": 3}), "not a multiple"),
            (json!({"hidden_act": "gelu_new"}), "hidden_act \"gelu_new\""),
            (
                json!({"model_type": "bert"}),
                "named like a \"mpnet\" checkpoint",
            ),
        ];
        for (patch, message) in cases {
            let src = TempDir::new("bad-mpnet");
            let out = TempDir::new("out");
            tiny_mpnet(&src.0, "mpnet.", patch.clone());
            let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
            assert!(error.contains(message), "{patch}: {error}");
            assert!(
                error.contains("config.json") || error.contains("model.safetensors"),
                "{patch}: the error names the file: {error}"
            );
            assert!(!out.0.join(TEXT_ONNX_FILE).exists());
        }
        // A missing pad_token_id is HF's default 1.
        let src = TempDir::new("no-pad");
        let out = TempDir::new("out");
        tiny_mpnet(&src.0, "", json!({"pad_token_id": null}));
        export_text(&options(&src.0, &out.0)).unwrap();
    }
}
