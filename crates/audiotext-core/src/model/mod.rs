//! A bundle's manifest and the ONNX Runtime that runs its graphs; the bundle itself, which
//! joins the text and audio encoders, is [`crate::bundle`], above both.

pub mod manifest;
pub mod runtime;
