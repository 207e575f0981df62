//! Caption embeddings from a text bundle (`text.onnx` through ONNX Runtime, the extension's own
//! text encoder), computed once per caption text and cached per text encoder.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cache::{text_encoder_key, EmbeddingCache};
use audiotext_core::Bundle;

/// Texts per ONNX Runtime call.
const TEXT_BATCH: usize = 64;

/// Embeddings of a set of caption texts, and what they came from.
pub struct CaptionEmbeddings {
    pub by_text: HashMap<String, Vec<f32>>,
    pub dim: usize,
    /// `text_encoder_key` of the bundle.
    pub key: String,
    /// The bundle's name.
    pub model: String,
}

/// The embedding size of a text bundle (from its manifest).
pub fn text_dim(bundle_dir: &Path) -> Result<usize> {
    let bundle = Bundle::open(bundle_dir)
        .with_context(|| format!("cannot open the text bundle {}", bundle_dir.display()))?;
    Ok(bundle.manifest.embedding_dim)
}

/// Embeds `texts` (duplicates allowed) with the text network of the bundle at `bundle_dir`:
/// `text.onnx`'s output, before the bundle's text centre, which training fits to (a run's own
/// centre, `fit-head --text-centre`, applies to queries only).
pub fn caption_embeddings(
    bundle_dir: &Path,
    texts: &[&str],
    cache_root: Option<&Path>,
    ort: Option<&Path>,
) -> Result<CaptionEmbeddings> {
    let bundle = Bundle::open(bundle_dir)
        .with_context(|| format!("cannot open the text bundle {}", bundle_dir.display()))?;
    let key = text_encoder_key(&bundle.manifest)?;
    let dim = bundle.manifest.embedding_dim;
    let mut cache = EmbeddingCache::open(cache_root, &key, dim);
    let missing: Vec<&str> = cache.missing(texts.iter().copied());
    if !missing.is_empty() {
        crate::run::ort_runtime(ort)?;
        let encoder = bundle.text_encoder()?;
        let bar = ProgressBar::new(missing.len() as u64)
            .with_style(bar_style("captions"))
            .with_message("embedding captions");
        for chunk in missing.chunks(TEXT_BATCH) {
            let vectors = encoder.embed_network(chunk)?;
            for (text, v) in chunk.iter().zip(vectors) {
                cache.insert(text, v);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        cache.save()?;
    }
    let by_text = texts
        .iter()
        .map(|t| (t.to_string(), cache.get(t).expect("embedded").to_vec()))
        .collect();
    Ok(CaptionEmbeddings {
        by_text,
        dim,
        key,
        model: bundle.manifest.name.clone(),
    })
}

/// The progress bar style used across the trainer.
pub fn bar_style(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{msg:>18}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed_precise}} (eta {{eta}}) {{prefix}}"
    ))
    .expect("valid template")
    .progress_chars("=> ")
}
