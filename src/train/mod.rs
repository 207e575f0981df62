//! The trainer's library half: everything `audiotext-train` needs that does not depend on the
//! training framework (burn lives in the binary's own module tree, never in the extension).
//!
//! - [`export_text`]: a sentence-transformers text model (BERT or MPNet family) becomes a model bundle
//!   (`text.onnx`, `tokenizer.json`, `manifest.json`).
//! - [`weights`]: safetensors reading (F32, F16, BF16, F64 as f32).
//! - [`checkpoint`]: pretrained checkpoints as f32 state dicts: safetensors and PyTorch's
//!   `torch.save` formats (zip and legacy), through a pickle reader that runs no code.
//! - [`data`]: captioned audio datasets (Clotho v2, AudioCaps, generic `captions.csv` + `audio/`).
//! - [`split`]: train/validation splits that keep each recording on one side; a seeded RNG.
//! - [`metrics`]: retrieval metrics (R@k, mAP@10) in both directions.
//! - [`cache`]: on-disk caches of log-mel features and caption embeddings.
//! - `testing`: temporary folders and the fixture-writing Python, for tests.

pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod export_text;
pub mod metrics;
pub mod split;
#[doc(hidden)]
pub mod testing;
pub mod weights;

pub use export_text::{export_text, ExportTextOptions, ExportTextReport};
