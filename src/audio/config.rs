//! The audio front-end's settings, as written in a bundle's manifest (`audio` section).
//!
//! The keys are precise enough for an independent implementation to reproduce the features:
//! librosa's `melspectrogram` + a log, with the argument of the same name for each key.
//! One definition serves the extension and the trainer, so features cannot drift.

use serde::{Deserialize, Serialize};

/// Log-mel spectrogram settings. Field names follow `librosa.feature.melspectrogram`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontEnd {
    /// Audio is resampled to this rate before anything else (librosa `sr`).
    pub sample_rate: u32,
    /// FFT size in samples (librosa `n_fft`).
    pub n_fft: usize,
    /// Window length in samples, <= n_fft; the window is zero-padded to n_fft, centred
    /// (librosa `win_length`).
    pub win_length: usize,
    /// Hop between frames in samples (librosa `hop_length`).
    pub hop_length: usize,
    /// Window function: `hann` (periodic, as scipy's `get_window('hann', n)`).
    pub window: String,
    /// Whether frames are centred, the signal padded by n_fft/2 on both sides (librosa `center`).
    pub center: bool,
    /// Padding when centred: `constant` (zeros, librosa's default) or `reflect` (PANNs').
    pub pad_mode: String,
    /// Exponent of the magnitude spectrum: 2 = power, 1 = magnitude (librosa `power`).
    pub power: f32,
    /// Number of mel bands (librosa `n_mels`).
    pub n_mels: usize,
    /// Lowest and highest filter edge in Hz (librosa `fmin`, `fmax`).
    pub fmin: f32,
    pub fmax: f32,
    /// Mel scale: `slaney` (librosa's default, `htk=False`) or `htk`.
    pub mel_scale: String,
    /// Filter normalisation: `slaney` (area, librosa's default `norm='slaney'`) or `none`.
    pub mel_norm: String,
    /// Log: `db` = 10*log10(max(x, log_floor)) (librosa `power_to_db(x, ref=1, amin=log_floor,
    /// top_db=None)`), or `ln` = ln(x + log_floor).
    pub log: String,
    pub log_floor: f32,
    /// Multiscale log-mel: further window lengths in samples, each `1..=n_fft`, each adding one
    /// input channel computed exactly like the first (same n_fft, hop, centring, padding,
    /// filterbank and log) with its own periodic Hann window of that length, zero-padded and
    /// centred to n_fft (librosa's `melspectrogram(win_length=...)` for each). Channel 0 is
    /// `win_length`; channel `c >= 1` is `multiscale_win_lengths[c - 1]`. Absent or empty: one
    /// channel, as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multiscale_win_lengths: Vec<usize>,
}

/// How a file longer than the model's window is cut, and how window embeddings are pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Windowing {
    /// Length of one window in seconds; a shorter file is one window of its own length.
    pub clip_seconds: f32,
    /// Start-to-start distance of windows in seconds (= clip_seconds: no overlap).
    pub hop_seconds: f32,
    /// A trailing window shorter than this is dropped, unless it is the only one.
    pub min_seconds: f32,
    /// How window embeddings combine into the file's: `mean` (then L2-normalised).
    pub pooling: String,
}

impl FrontEnd {
    /// PANNs CNN14's front-end (Kong et al. 2020): 32 kHz, 1024-point FFT, hop 320 (10 ms),
    /// 64 mel bands from 50 Hz to 14 kHz, power spectrum in dB with floor 1e-10.
    pub fn panns_32k() -> FrontEnd {
        FrontEnd {
            sample_rate: 32_000,
            n_fft: 1024,
            win_length: 1024,
            hop_length: 320,
            window: "hann".into(),
            center: true,
            pad_mode: "reflect".into(),
            power: 2.0,
            n_mels: 64,
            fmin: 50.0,
            fmax: 14_000.0,
            mel_scale: "slaney".into(),
            mel_norm: "slaney".into(),
            log: "db".into(),
            log_floor: 1e-10,
            multiscale_win_lengths: Vec::new(),
        }
    }

    /// Input channels of the log-mel: 1 + `multiscale_win_lengths.len()`.
    pub fn channels(&self) -> usize {
        1 + self.multiscale_win_lengths.len()
    }

    /// The window length of every channel, channel 0 (`win_length`) first.
    pub fn win_lengths(&self) -> Vec<usize> {
        std::iter::once(self.win_length)
            .chain(self.multiscale_win_lengths.iter().copied())
            .collect()
    }

    /// Number of frames for a signal of `samples` samples.
    pub fn frames(&self, samples: usize) -> usize {
        frame_count(samples, self.n_fft, self.hop_length, self.center)
    }
}

impl Windowing {
    /// Ten-second windows without overlap, mean-pooled: ESC-50 and most Clotho clips fit one.
    pub fn ten_seconds() -> Windowing {
        Windowing {
            clip_seconds: 10.0,
            hop_seconds: 10.0,
            min_seconds: 1.0,
            pooling: "mean".into(),
        }
    }
}

/// Frames of a signal of `samples` samples: centred frames (padded by n_fft/2 on both sides)
/// give 1 + samples/hop; otherwise only frames that fit whole.
pub fn frame_count(samples: usize, n_fft: usize, hop_length: usize, center: bool) -> usize {
    if center {
        1 + samples / hop_length
    } else if samples < n_fft {
        0
    } else {
        1 + (samples - n_fft) / hop_length
    }
}
