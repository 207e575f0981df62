//! Model bundles and the ONNX Runtime that runs them.

pub mod bundle;
pub mod manifest;
pub mod runtime;

pub use bundle::Bundle;
