//! The audio front-end, shared by the extension and the trainer: decode (symphonia), mix down,
//! resample (rubato), log-mel (rustfft). Signal processing is pure; I/O lives in its own files.

pub mod config;

pub use config::{FrontEnd, Windowing};
