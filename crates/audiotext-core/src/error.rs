//! The library's error type. Messages are lowercase, without a final period, and say the fix.

/// Everything that can go wrong inside the library; the SQL layer adds the function name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ONNX Runtime could not be found or loaded.
    #[error("{0}")]
    Runtime(String),
    /// A model bundle is missing, incomplete or inconsistent.
    #[error("{0}")]
    Bundle(String),
    /// ONNX Runtime failed while creating a session or running a model.
    #[error("onnx runtime: {0}")]
    Ort(#[from] ort::Error),
    /// Audio could not be decoded or resampled (corrupt, truncated, empty, not audio).
    #[error("{0}")]
    Audio(String),
    /// The tokenizer failed on the input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The caller's cancellation check asked to stop (the SQL layer: `sqlite3_interrupt`).
    /// `seconds_done` is the audio read so far, `seconds_total` the length the file's header
    /// states, when it does.
    #[error("interrupted after {seconds_done:.0} of {} s", seconds_total.map_or("?".to_string(), |t| format!("{t:.0}")))]
    Interrupted {
        seconds_done: f64,
        seconds_total: Option<f64>,
    },
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
