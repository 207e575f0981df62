//! ../src/audio without the encoder (ONNX Runtime sessions).

#[path = "../../../src/audio/config.rs"]
pub mod config;
#[path = "../../../src/audio/container_check.rs"]
pub mod container_check;
#[path = "../../../src/audio/decode.rs"]
pub mod decode;
#[path = "../../../src/audio/mel.rs"]
pub mod mel;
#[path = "../../../src/audio/resample.rs"]
pub mod resample;
#[path = "../../../src/audio/stream.rs"]
pub mod stream;

pub use config::{FrontEnd, Windowing};
