//! `audiotext-train export-text`: a sentence-transformers folder of the BERT or MPNet family
//! becomes a model bundle (`text.onnx`, `tokenizer.json`, `manifest.json`).
//!
//! - [`folder`]: reading the folder: config, weights, pooling, tokenizer, optional head.
//! - [`graph`]: the ONNX graph that reproduces the model's `encode`.
//! - this file: the command, which writes the bundle and checks it against the weights.

pub mod folder;
pub mod graph;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use audiotext_core::model::manifest::{
    sha256_file, Manifest, TextSection, MANIFEST_FILE, MANIFEST_FORMAT_VERSION,
};

use crate::weights::Weights;

pub use folder::*;
pub use graph::*;

/// File names inside the bundle.
pub const TEXT_ONNX_FILE: &str = "text.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// What to export and where; also the command line of `export-text` (the trainer's) and
/// `text` (the assembler's).
#[derive(Debug, Clone, clap::Args)]
pub struct ExportTextOptions {
    /// sentence-transformers model folder (config.json, model.safetensors, tokenizer.json,
    /// sentence_bert_config.json, 1_Pooling/config.json, modules.json).
    #[arg(long = "from", value_name = "DIR")]
    pub from: PathBuf,
    /// Bundle folder to write text.onnx, tokenizer.json and manifest.json into (created if
    /// missing); an existing manifest keeps its other sections (audio, training).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Optional linear projection applied after pooling: a safetensors file with `weight`
    /// [out, in] and optional `bias` [out] (PyTorch nn.Linear layout).
    #[arg(long, value_name = "FILE")]
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

impl ExportTextReport {
    /// The summary the commands print.
    pub fn print(&self) {
        println!(
            "exported {} ({}, {} layers, hidden {}, {} heads, vocab {})",
            self.name,
            self.model_type,
            self.num_layers,
            self.hidden_size,
            self.num_heads,
            self.vocab_size
        );
        println!(
            "  {}: {:.1} MB, {:.2} M parameters",
            self.onnx_path.display(),
            self.onnx_bytes as f64 / 1e6,
            self.parameters as f64 / 1e6
        );
        let head = match self.head {
            Some((i, o)) => format!(", head {i} -> {o}"),
            None => String::new(),
        };
        println!(
            "  embedding: {} dims, {} pooling{head}, L2-normalised; max {} tokens",
            self.embedding_dim, self.pooling, self.max_tokens
        );
        let kept = if self.kept_existing_manifest {
            " (updated; other sections kept)"
        } else {
            ""
        };
        println!("  {}{kept}", self.manifest_path.display());
        for note in &self.notes {
            println!("  note: {note}");
        }
        println!("  took {:.1} s", self.seconds);
    }
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

/// Exports a sentence-transformers folder to a model bundle: read, build, write, then run
/// the bundle on a few texts against the folder's weights, in that order.
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

    // A centre (fit-head --text-centre) belongs to the network's output space: it stays when the
    // same network is exported again (set-up does that on a fresh clone), and goes otherwise.
    let centre = existing.as_ref().and_then(|m| {
        let same_network = m.files.get(TEXT_ONNX_FILE).map(String::as_str)
            == Some(sha256_file(&onnx_path).ok()?.as_str());
        m.text.as_ref()?.centre.clone().filter(|_| same_network)
    });
    let text = TextSection {
        onnx: TEXT_ONNX_FILE.to_string(),
        tokenizer: TOKENIZER_FILE.to_string(),
        max_tokens: folder.max_tokens,
        pooling: folder.pooling.as_str().to_string(),
        input_ids: "input_ids".to_string(),
        attention_mask: "attention_mask".to_string(),
        output: "embedding".to_string(),
        source: Some(source),
        centre,
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
