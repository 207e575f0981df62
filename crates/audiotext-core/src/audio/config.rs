//! The audio front-end's settings, as written in a bundle's manifest (`audio` section).
//!
//! The keys are precise enough for an independent implementation to reproduce the features:
//! librosa's `melspectrogram` + a log, with the argument of the same name for each key.
//! One definition serves the extension and the trainer, so features cannot drift.
//!
//! The order of operations, optional steps in brackets: samples -> [peak_normalize] ->
//! [input_gain_db] -> centre padding and framing -> window -> FFT -> |X|^power -> [lowpass_hz]
//! -> mel projection -> log -> [log_divisor]. The optional keys default to "off", are left out
//! of a manifest when off, and so do not change the manifests (and hashes) of bundles written
//! before they existed.

use serde::{Deserialize, Serialize};

/// Log-mel spectrogram settings. Field names follow `librosa.feature.melspectrogram`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontEnd {
    /// Audio is resampled to this rate before anything else (librosa `sr`).
    pub sample_rate: u32,
    /// Peak normalisation, before anything else: `window` divides the samples of each analysis
    /// window (the slice `MelExtractor::compute` gets: one window of the file, see
    /// `audio::stream`) by their largest |x|; a window of zeros stays zero. aiSFX's own
    /// front-end divides the whole file by its peak; per window keeps streaming bounded (no
    /// pass over the whole file first) and is the same for a file of one window. Absent: no
    /// normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_normalize: Option<String>,
    /// Gain in dB applied after peak normalisation: samples are multiplied by
    /// `10^(input_gain_db / 20)`; at most 200 dB either way (`mel::MAX_INPUT_GAIN_DB`).
    /// Absent: 0 dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_gain_db: Option<f32>,
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
    /// Brick-wall low-pass on the spectrum: bins `k` whose frequency `k * sample_rate / n_fft`
    /// (Hz, computed in f64) is strictly above `lowpass_hz` are set to 0 before the mel
    /// projection, so that full-band audio looks like band-limited training data. Absent: no
    /// low-pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowpass_hz: Option<f32>,
    /// Number of mel bands (librosa `n_mels`).
    pub n_mels: usize,
    /// Lowest and highest filter edge in Hz (librosa `fmin`, `fmax`).
    pub fmin: f32,
    pub fmax: f32,
    /// Mel scale: `slaney` (librosa's default, `htk=False`) or `htk`.
    pub mel_scale: String,
    /// Filter normalisation: `slaney` (area, librosa's default `norm='slaney'`), `l1` (each
    /// filter divided by the sum of its weights, librosa's `norm=1`) or `none`.
    pub mel_norm: String,
    /// Log: `db` = 10*log10(max(x, log_floor)) (librosa `power_to_db(x, ref=1, amin=log_floor,
    /// top_db=None)`), `ln` = ln(x + log_floor), or `log10_1p` = log10(1 + log_multiplier * x)
    /// (aiSFX's).
    pub log: String,
    /// The floor of `db` and `ln`; must be > 0 for every log, but `log10_1p` does not use it
    /// (log10(1 + m x) is 0 for silence).
    pub log_floor: f32,
    /// `log10_1p` only (and required there): the multiplier `m` in log10(1 + m x), > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_multiplier: Option<f32>,
    /// After the log, every value is divided by this (finite, nonzero). Absent: no division.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_divisor: Option<f32>,
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
            peak_normalize: None,
            input_gain_db: None,
            lowpass_hz: None,
            log_multiplier: None,
            log_divisor: None,
        }
    }

    /// aiSFX's front-end (Ma and Lerch, ISMIR 2022; PyPI `aisfx` 0.1.2,
    /// `aisfx/spectrogram/spectrogram_librosa.py` and `preprocessing.py`): 44.1 kHz, peak
    /// normalised, `melspectrogram(n_fft=2048, hop_length=1024, win_length=2048, n_mels=96,
    /// fmin=0, fmax=22050, htk=True, norm=1, power=2)` (librosa 0.11's `center=True`,
    /// `pad_mode='constant'`), then `log10(10000 * x + 1) / 9.457798957824707`. The peak is
    /// taken per analysis window here (see `peak_normalize`), per file in aiSFX. No gain and no
    /// low-pass: set `input_gain_db` and `lowpass_hz` to adapt it to other data.
    pub fn aisfx() -> FrontEnd {
        FrontEnd {
            sample_rate: 44_100,
            n_fft: 2048,
            win_length: 2048,
            hop_length: 1024,
            window: "hann".into(),
            center: true,
            pad_mode: "constant".into(),
            power: 2.0,
            n_mels: 96,
            fmin: 0.0,
            fmax: 22_050.0,
            mel_scale: "htk".into(),
            mel_norm: "l1".into(),
            log: "log10_1p".into(),
            log_floor: 1e-10,
            multiscale_win_lengths: Vec::new(),
            peak_normalize: Some("window".into()),
            input_gain_db: None,
            lowpass_hz: None,
            log_multiplier: Some(10_000.0),
            log_divisor: Some(9.457_799),
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

    /// The log-mel value of silence (a mel value of 0), as `MelExtractor` computes it: the log
    /// of the floor for `db` and `ln`, 0 for `log10_1p`, then divided by `log_divisor`. Windows
    /// shorter than an encoder's minimum are padded with it.
    pub fn silence_value(&self) -> f32 {
        let value = match self.log.as_str() {
            "ln" => self.log_floor.ln(),
            "log10_1p" => 0.0,
            _ => 10.0 * self.log_floor.log10(),
        };
        match self.log_divisor {
            Some(divisor) => value / divisor,
            None => value,
        }
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

    /// aiSFX's blocks: 100 centred frames (99 hops of 1024 samples = 101376 samples at
    /// 44.1 kHz) every 50 frames (51200 samples), mean-pooled; a trailing block under 1 s is
    /// dropped unless it is the only one. The seconds are the sample counts over 44100, which
    /// `WindowPlan` rounds back to exactly those counts.
    pub fn aisfx_blocks() -> Windowing {
        Windowing {
            clip_seconds: AISFX_BLOCK_SAMPLES as f32 / AISFX_SAMPLE_RATE_HZ as f32,
            hop_seconds: AISFX_BLOCK_HOP_SAMPLES as f32 / AISFX_SAMPLE_RATE_HZ as f32,
            min_seconds: 1.0,
            pooling: "mean".into(),
        }
    }
}

/// aiSFX's sample rate.
const AISFX_SAMPLE_RATE_HZ: u32 = 44_100;
/// aiSFX's block: 100 frames with hop 1024 and centred frames span 99 hops.
const AISFX_BLOCK_SAMPLES: u32 = 99 * 1024;
/// aiSFX's block hop: 50 frames.
const AISFX_BLOCK_HOP_SAMPLES: u32 = 50 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::stream::WindowPlan;

    const NEW_KEYS: [&str; 5] = [
        "peak_normalize",
        "input_gain_db",
        "lowpass_hz",
        "log_multiplier",
        "log_divisor",
    ];

    #[test]
    fn optional_keys_serialise_only_when_set() {
        // A manifest written before the keys existed reads as before and writes the same bytes.
        let panns = FrontEnd::panns_32k();
        let json = serde_json::to_string(&panns).unwrap();
        assert_eq!(
            json,
            r#"{"sample_rate":32000,"n_fft":1024,"win_length":1024,"hop_length":320,"window":"hann","center":true,"pad_mode":"reflect","power":2.0,"n_mels":64,"fmin":50.0,"fmax":14000.0,"mel_scale":"slaney","mel_norm":"slaney","log":"db","log_floor":1e-10}"#
        );
        let back: FrontEnd = serde_json::from_str(&json).unwrap();
        assert_eq!(back, panns);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);

        let aisfx = FrontEnd {
            input_gain_db: Some(-20.0),
            lowpass_hz: Some(8000.0),
            ..FrontEnd::aisfx()
        };
        let value = serde_json::to_value(&aisfx).unwrap();
        for key in NEW_KEYS {
            assert!(value.get(key).is_some(), "{key}");
        }
        assert_eq!(value["peak_normalize"], "window");
        assert_eq!(value["mel_norm"], "l1");
        assert_eq!(value["log"], "log10_1p");
        let back: FrontEnd = serde_json::from_value(value).unwrap();
        assert_eq!(back, aisfx);
        // aiSFX's divisor is a float32 value: it survives the manifest's shortest f32 text.
        assert_eq!(back.log_divisor, Some(9.457798957824707f64 as f32));
        assert_eq!(back.log_divisor.unwrap() as f64, 9.457798957824707);
    }

    #[test]
    fn aisfx_blocks_are_100_frames_every_50() {
        let fe = FrontEnd::aisfx();
        let plan = WindowPlan::new(&Windowing::aisfx_blocks(), fe.sample_rate).unwrap();
        assert_eq!(plan.clip_samples, 101_376);
        assert_eq!(plan.hop_samples, 51_200);
        assert_eq!(plan.min_samples, 44_100);
        assert_eq!(fe.frames(plan.clip_samples), 100);
        assert_eq!(plan.hop_samples / fe.hop_length, 50);
        // A 5 s file: blocks every 50 frames; the last one (1.5 s) reaches the end.
        let bounds = plan.bounds(5 * 44_100);
        assert_eq!(
            bounds,
            vec![
                (0, 101_376),
                (51_200, 152_576),
                (102_400, 203_776),
                (153_600, 220_500)
            ]
        );
        // With blocks overlapping by 49 hops, a trailing block that a previous one does not
        // cover is always longer than 49 hops (1.14 s > min_seconds): none is dropped.
        assert_eq!(plan.bounds(132_300), vec![(0, 101_376), (51_200, 132_300)]);
    }

    #[test]
    fn silence_value_follows_the_log() {
        assert_eq!(FrontEnd::panns_32k().silence_value(), -100.0);
        let ln = FrontEnd {
            log: "ln".into(),
            log_floor: 1e-6,
            log_divisor: Some(2.0),
            ..FrontEnd::panns_32k()
        };
        assert_eq!(ln.silence_value(), 1e-6f32.ln() / 2.0);
        assert_eq!(FrontEnd::aisfx().silence_value(), 0.0);
    }
}
