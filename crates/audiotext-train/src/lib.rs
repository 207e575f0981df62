//! audiotext-train: the trainer of the audio-text dual encoder, as a library; `main.rs` is only
//! the command line over it.
//!
//! - [`export_text`], [`weights`], [`checkpoint`]: the text exporter and the checkpoint readers,
//!   which need no training framework: they live in `audiotext-assemble` (the default bundle's
//!   assembler) and are re-exported here under their old names.
//! - [`data`]: captioned audio datasets (Clotho v2, AudioCaps, generic `captions.csv` + `audio/`).
//! - [`split`]: train/validation splits that keep each recording on one side; a seeded RNG.
//! - [`metrics`]: retrieval metrics (R@k, mAP@10) in both directions.
//! - [`cache`]: on-disk caches of log-mel features and caption embeddings.
//! - `testing`: temporary folders and the fixture-writing Python, for tests (also the assembler's).

pub mod audio_graph;
pub mod backbone;
pub mod cache;
pub mod data;
pub mod embed;
pub mod encoders;
pub mod ensemble;
pub mod eval;
pub mod export_audio;
pub mod features;
pub mod fit;
pub mod head;
pub mod loss;
pub mod metrics;
pub mod mix;
pub mod model;
pub mod plot;
pub mod pretrained;
pub mod report;
pub mod run;
pub mod specaug;
pub mod split;
pub mod tensors;
pub mod trained;

pub use audiotext_assemble::export_text::{self, export_text, ExportTextOptions, ExportTextReport};
#[doc(hidden)]
pub use audiotext_assemble::testing;
pub use audiotext_assemble::{checkpoint, weights};

#[cfg(test)]
mod tests;

/// burn's CPU backend keeps one random generator per process. Tests that seed it and expect
/// the same weights twice (resume) must not interleave with tests that draw from it, so every
/// test that builds or trains a model holds this lock.
#[cfg(test)]
pub fn burn_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
