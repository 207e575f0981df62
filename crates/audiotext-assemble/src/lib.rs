//! audiotext-assemble: model bundles from published weights, with no training framework, so
//! that set-up and the Python package's first use can build the default bundle in seconds
//! (the trainer, `audiotext-train`, uses the same code for its exports).
//!
//! - [`weights`]: safetensors reading (F32, F16, BF16, F64 as f32).
//! - [`checkpoint`]: pretrained checkpoints as f32 state dicts: safetensors and PyTorch's
//!   `torch.save` formats (zip and legacy), through a pickle reader that runs no code.
//! - [`export_text`]: a sentence-transformers text model (BERT or MPNet family) becomes a
//!   model bundle (`text.onnx`, `tokenizer.json`, `manifest.json`).
//! - [`layers`]: ONNX layers of audio encoders written from plain tensors.
//! - [`aisfx`]: the default audio encoder, aiSFX's backbone with a trained head.
//! - `testing`: temporary folders and the fixture-writing Python, for tests.

pub mod aisfx;
pub mod checkpoint;
pub mod export_text;
pub mod layers;
#[doc(hidden)]
pub mod testing;
pub mod weights;

pub use export_text::{export_text, ExportTextOptions, ExportTextReport};
