//! The audio front-end, shared by the extension and the trainer: decode (symphonia), mix down,
//! resample (rubato), log-mel (realfft). Signal processing is pure (`mel`, `resample`); I/O lives
//! in `decode`, and `stream` joins them: file -> mono -> model rate -> log-mel per window.
//!
//! - `config`: the manifest's `FrontEnd` and `Windowing` settings.
//! - `container_check`: header counts and lengths checked against the file's size (pure).
//! - `decode`: `AudioSource` (path or bytes) -> `Decoder` streaming mono f32 at the file's rate.
//! - `resample`: `StreamResampler`, any rate to the model's, delay-compensated.
//! - `mel`: `MelExtractor`, librosa's `melspectrogram` + log.
//! - `stream`: `decode_mono` (whole file) and `log_mel_windows` (bounded memory).
//! - `formats`: the extensions (and MIME types) of the files the decoder reads.
//!
//! No model runs here: [`crate::audio_encoder`] runs `audio.onnx` over these windows.

pub mod config;
pub mod container_check;
pub mod decode;
pub mod formats;
pub mod mel;
pub mod resample;
pub mod stream;

pub use config::{FrontEnd, Windowing};
pub use decode::{probe, AudioInfo, AudioSource, DecodeOptions, Decoder, TruncatedAudio};
pub use mel::{LogMel, MelExtractor};
pub use resample::StreamResampler;
pub use stream::{
    decode_mono, log_mel_windows, window_bounds, window_waveform, LogMelWindows, WindowPlan,
};
