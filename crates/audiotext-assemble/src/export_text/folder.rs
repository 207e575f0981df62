//! A sentence-transformers folder read for export: `config.json` (BERT or MPNet), the
//! weights, `1_Pooling/config.json`, the tokenizer, and an optional projection head.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::weights::Weights;

use super::graph::{MPNET_MAX_DISTANCE, MPNET_PADDING_IDX};
use super::TOKENIZER_FILE;

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

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub(super) fn get_usize(config: &Value, key: &str, path: &Path) -> Result<usize> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| anyhow!("{}: missing or non-integer field {key:?}", path.display()))
}

impl EncoderConfig {
    /// Parses and checks `config.json`, refusing what the exporter does not implement (one
    /// check per key, each with its message).
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
pub(super) fn normalizer_lowercases(normalizer: &Value) -> bool {
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

pub(super) fn folder_name(dir: &Path) -> String {
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
