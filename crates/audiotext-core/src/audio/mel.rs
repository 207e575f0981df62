//! Log-mel spectrogram: a port of librosa 0.11's `feature.melspectrogram` followed by the
//! manifest's log (`power_to_db(ref=1, top_db=None)`, a natural log or aiSFX's
//! `log10(1 + m x)`), with the optional steps of `FrontEnd` around it (peak normalisation and
//! gain of the samples, a low-pass on the spectrum, a divisor after the log; see
//! `audio::config` for the order). Pure: slices in, a Vec out.
//!
//! Ported from librosa 0.11.0 (`librosa/core/spectrum.py` `stft`/`_spectrogram`,
//! `librosa/filters.py` `mel`, `librosa/util/utils.py` `normalize`, `librosa/core/convert.py`
//! `hz_to_mel`/`mel_to_hz`/`mel_frequencies`) and scipy's `get_window('hann', n, fftbins=True)`.
//! The filterbank and the window are computed in f64 with numpy's operation order, then stored
//! as f32; the FFT, the power spectrum and the mel projection run in f32 (tolerance:
//! tests/python/audio/test_logmel.py).
//!
//! Padding when centred follows `numpy.pad` (librosa pads `n_fft / 2` on both sides):
//! `constant` adds zeros; `reflect` mirrors without repeating the edge sample and, when the pad
//! is longer than the signal, keeps mirroring (numpy >= 1.17 does the same). Two inputs numpy
//! cannot reflect are defined here: a one-sample signal repeats that sample (numpy does too),
//! and the empty signal is padded with zeros (numpy raises), so it gives one silent frame.

use std::cell::RefCell;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use crate::audio::config::FrontEnd;
use crate::error::{Error, Result};

/// A log-mel spectrogram: `frames` rows of `n_mels` values, row-major (frame-major).
///
/// With a multiscale front-end (`FrontEnd::channels() = C > 1`, `M` mel bands), each row holds
/// `C * M` values: channel 0's M bands (window `win_length`), then channel 1's (the first of
/// `multiscale_win_lengths`), and so on, i.e. `data[(t * C + c) * M + m]`. So `n_mels` is the
/// number of values per frame (`C * M`), which is the mel band count only when `C = 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    pub frames: usize,
    /// Values per frame: `channels * bands` (= the bands when there is one channel).
    pub n_mels: usize,
    /// `frames * n_mels` values; frame `t` is `data[t * n_mels..(t + 1) * n_mels]`.
    pub data: Vec<f32>,
}

impl LogMel {
    /// The values of frame `t` (every channel's bands, channel by channel).
    pub fn frame(&self, t: usize) -> &[f32] {
        &self.data[t * self.n_mels..(t + 1) * self.n_mels]
    }

    /// Values per frame (`channels * bands`): the same as the `n_mels` field, by its meaning.
    pub fn row_len(&self) -> usize {
        self.n_mels
    }

    /// The `bands` mel values of channel `c` in frame `t` (`bands` = `MelExtractor::n_mels`).
    pub fn channel(&self, t: usize, c: usize, bands: usize) -> &[f32] {
        let row = self.frame(t);
        &row[c * bands..(c + 1) * bands]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    Reflect,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Power {
    Two,
    One,
    Other(f32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LogKind {
    Db,
    Ln,
    /// log10(1 + multiplier * x).
    Log10OnePlus {
        multiplier: f32,
    },
}

/// Filter normalisation (librosa `filters.mel(norm=...)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MelNorm {
    /// No normalisation (`norm=None`): triangles of height 1.
    None,
    /// Slaney's area normalisation (`norm='slaney'`): each triangle times 2 / its width in Hz.
    Slaney,
    /// `norm=1`: each filter divided by the sum of its weights (`util.normalize(norm=1)`).
    L1,
}

/// One triangular filter, stored as its non-zero run: bins `first_bin..first_bin + len` with
/// weights `weights[offset..offset + len]` of the extractor.
#[derive(Debug, Clone, Copy)]
struct SparseFilter {
    first_bin: usize,
    offset: usize,
    len: usize,
}

/// Buffers reused from one call to the next (one per thread: `MelExtractor::compute` keeps one
/// in a thread-local; pass your own to `compute_with` to control it).
#[derive(Default)]
pub struct MelScratch {
    padded: Vec<f32>,
    frame: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    fft_scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<MelScratch> = RefCell::new(MelScratch::default());
}

/// Computes log-mel spectrograms for one `FrontEnd`; build it once, share it between threads.
pub struct MelExtractor {
    sample_rate: u32,
    n_fft: usize,
    hop_length: usize,
    center: bool,
    pad_mode: PadMode,
    power: Power,
    log: LogKind,
    log_floor: f32,
    /// Every log value is divided by this (`log_divisor`), when set.
    log_divisor: Option<f32>,
    /// Whether each call's samples are divided by their peak |x| (`peak_normalize: window`).
    peak_normalize: bool,
    /// `10^(input_gain_db / 20)`, when `input_gain_db` is set.
    input_gain: Option<f32>,
    /// Bins `0..kept_bins` of the spectrum feed the mel projection; the rest are zeroed
    /// (`lowpass_hz`; all `n_fft / 2 + 1` bins without it).
    kept_bins: usize,
    n_mels: usize,
    /// One window per channel: the periodic Hann window of that channel's length, zero-padded
    /// and centred to `n_fft` (channel 0: `win_length`, then `multiscale_win_lengths`).
    windows: Vec<Vec<f32>>,
    fft: Arc<dyn RealToComplex<f32>>,
    filters: Vec<SparseFilter>,
    weights: Vec<f32>,
}

impl std::fmt::Debug for MelExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelExtractor")
            .field("n_fft", &self.n_fft)
            .field("hop_length", &self.hop_length)
            .field("center", &self.center)
            .field("n_mels", &self.n_mels)
            .field("channels", &self.windows.len())
            .finish_non_exhaustive()
    }
}

/// The largest |input_gain_db|: beyond about 770 dB the factor is no longer a finite f32 (and
/// 0 * inf would give NaN); 200 dB (x 1e10) keeps every power spectrum of samples in [-1, 1]
/// finite for any practical n_fft, and is far beyond any useful gain.
pub const MAX_INPUT_GAIN_DB: f32 = 200.0;

/// The highest model rate; above any audio format's.
pub const MAX_SAMPLE_RATE_HZ: u32 = 768_000;
/// The longest FFT (0.68 s at 48 kHz); the filterbank holds `n_mels * (n_fft / 2 + 1)` values.
pub const MAX_N_FFT: usize = 1 << 15;
/// The most mel bands.
pub const MAX_N_MELS: usize = 512;
/// The most channels of a multiscale log-mel.
pub const MAX_CHANNELS: usize = 16;

fn invalid(msg: String) -> Error {
    Error::Other(format!("audio front-end: {msg}"))
}

impl MelExtractor {
    /// Validates the settings and precomputes the window, the FFT plan and the filterbank.
    /// Each setting is checked in turn, with a message that names it and the fix.
    pub fn new(fe: &FrontEnd) -> Result<MelExtractor> {
        check_frames(fe)?;
        let pad_mode = pad_mode(fe)?;
        let power = power(fe)?;
        let (fmin, fmax) = check_bands(fe)?;
        let (htk, mel_norm) = (mel_scale_is_htk(fe)?, mel_norm(fe)?);
        let log = log_kind(fe)?;
        let peak_normalize = peak_normalize(fe)?;
        let input_gain = input_gain(fe)?;
        let n_bins = fe.n_fft / 2 + 1;
        let kept_bins = kept_bins(fe, n_bins)?;
        check_window_lengths(fe)?;
        let windows: Vec<Vec<f32>> = fe
            .win_lengths()
            .into_iter()
            .map(|length| padded_hann(fe.n_fft, length))
            .collect();

        let dense = mel_filterbank(
            fe.sample_rate,
            fe.n_fft,
            fe.n_mels,
            fmin,
            fmax,
            htk,
            mel_norm,
        );
        let (filters, weights) = sparse_filters(&dense, n_bins, fe.n_mels);

        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(fe.n_fft);
        Ok(MelExtractor {
            sample_rate: fe.sample_rate,
            n_fft: fe.n_fft,
            hop_length: fe.hop_length,
            center: fe.center,
            pad_mode,
            power,
            log,
            log_floor: fe.log_floor,
            log_divisor: fe.log_divisor,
            peak_normalize,
            input_gain,
            kept_bins,
            n_mels: fe.n_mels,
            windows,
            fft,
            filters,
            weights,
        })
    }

    /// The rate the input must have, in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Mel bands per channel (the manifest's `n_mels`).
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Hop between frames in samples.
    pub fn hop_length(&self) -> usize {
        self.hop_length
    }

    /// Input channels: 1 + the number of `multiscale_win_lengths`.
    pub fn channels(&self) -> usize {
        self.windows.len()
    }

    /// Values per frame of the `LogMel`s this extractor computes: `channels() * n_mels()`.
    pub fn values_per_frame(&self) -> usize {
        self.windows.len() * self.n_mels
    }

    /// Number of frames for a signal of `samples` samples (same as `FrontEnd::frames`).
    pub fn frames(&self, samples: usize) -> usize {
        crate::audio::config::frame_count(samples, self.n_fft, self.hop_length, self.center)
    }

    /// The window applied to each frame of channel 0 (`n_fft` values, the Hann window of
    /// `win_length` centred in it).
    pub fn window(&self) -> &[f32] {
        &self.windows[0]
    }

    /// The window of channel `c` (`n_fft` values), or `None` past the last channel.
    pub fn channel_window(&self, c: usize) -> Option<&[f32]> {
        self.windows.get(c).map(Vec::as_slice)
    }

    /// The filterbank as a dense `n_mels x (n_fft / 2 + 1)` row-major matrix, as
    /// `librosa.filters.mel` returns it.
    pub fn filterbank(&self) -> Vec<f32> {
        let n_bins = self.n_fft / 2 + 1;
        let mut dense = vec![0f32; self.n_mels * n_bins];
        for (m, f) in self.filters.iter().enumerate() {
            dense[m * n_bins + f.first_bin..m * n_bins + f.first_bin + f.len]
                .copy_from_slice(&self.weights[f.offset..f.offset + f.len]);
        }
        dense
    }

    /// The log-mel spectrogram of `samples` (mono, at the front-end's sample rate). Uses this
    /// thread's scratch buffers.
    pub fn compute(&self, samples: &[f32]) -> LogMel {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.compute_with(samples, &mut scratch),
            Err(_) => self.compute_with(samples, &mut MelScratch::default()),
        })
    }

    /// Same as `compute`, with caller-owned scratch buffers.
    pub fn compute_with(&self, samples: &[f32], scratch: &mut MelScratch) -> LogMel {
        let n_frames = self.frames(samples.len());
        let row_len = self.values_per_frame();
        let mut data = vec![0f32; n_frames * row_len];
        let MelScratch {
            padded,
            frame,
            spectrum,
            fft_scratch,
            power,
        } = scratch;
        let n_bins = self.n_fft / 2 + 1;
        frame.resize(self.n_fft, 0.0);
        spectrum.resize(n_bins, Complex::new(0.0, 0.0));
        fft_scratch.resize(self.fft.get_scratch_len(), Complex::new(0.0, 0.0));
        power.resize(n_bins, 0.0);

        // Peak normalisation and gain scale the signal before framing; padding is linear (zeros,
        // or copies of samples), so scaling the padded signal is scaling the samples.
        let peak = if self.peak_normalize {
            let peak = samples.iter().fold(0f32, |m, &x| m.max(x.abs()));
            (peak > 0.0).then_some(peak) // all zeros: left as they are
        } else {
            None
        };
        let scaled = peak.is_some() || self.input_gain.is_some();
        let signal: &[f32] = if self.center {
            self.pad(samples, padded);
            self.scale(padded, peak);
            padded
        } else if scaled {
            padded.clear();
            padded.extend_from_slice(samples);
            self.scale(padded, peak);
            padded
        } else {
            samples
        };

        for (t, row) in data.chunks_exact_mut(row_len).enumerate() {
            let start = t * self.hop_length;
            let segment = &signal[start..start + self.n_fft];
            for (window, row) in self.windows.iter().zip(row.chunks_exact_mut(self.n_mels)) {
                self.frame_into(segment, window, row, frame, spectrum, fft_scratch, power);
            }
        }
        LogMel {
            frames: n_frames,
            n_mels: row_len,
            data,
        }
    }

    /// Divides `x` by `peak` (the samples' peak |x|, when normalising) and multiplies it by the
    /// input gain, in that order.
    fn scale(&self, x: &mut [f32], peak: Option<f32>) {
        match (peak, self.input_gain) {
            (None, None) => {}
            (Some(p), None) => x.iter_mut().for_each(|v| *v /= p),
            (None, Some(g)) => x.iter_mut().for_each(|v| *v *= g),
            (Some(p), Some(g)) => x.iter_mut().for_each(|v| *v = *v / p * g),
        }
    }

    /// One channel of one frame: `segment` (n_fft samples) times `window`, FFT, power, low-pass,
    /// mel projection, log and divisor into `row` (n_mels values).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn frame_into(
        &self,
        segment: &[f32],
        window: &[f32],
        row: &mut [f32],
        frame: &mut [f32],
        spectrum: &mut [Complex<f32>],
        fft_scratch: &mut [Complex<f32>],
        power: &mut [f32],
    ) {
        for ((f, &x), &w) in frame.iter_mut().zip(segment).zip(window) {
            *f = x * w;
        }
        self.fft
            .process_with_scratch(frame, spectrum, fft_scratch)
            .expect("buffer lengths match the FFT plan");
        // The low-pass: bins from `kept_bins` on are zero; their power is not even computed.
        let (kept, cut) = power.split_at_mut(self.kept_bins);
        cut.fill(0.0);
        let spectrum = &spectrum[..self.kept_bins];
        match self.power {
            Power::Two => {
                for (p, c) in kept.iter_mut().zip(spectrum) {
                    *p = c.re * c.re + c.im * c.im;
                }
            }
            Power::One => {
                for (p, c) in kept.iter_mut().zip(spectrum) {
                    *p = (c.re * c.re + c.im * c.im).sqrt();
                }
            }
            Power::Other(e) => {
                for (p, c) in kept.iter_mut().zip(spectrum) {
                    *p = (c.re * c.re + c.im * c.im).powf(e / 2.0);
                }
            }
        }
        for (out, f) in row.iter_mut().zip(&self.filters) {
            let bins = &power[f.first_bin..f.first_bin + f.len];
            let weights = &self.weights[f.offset..f.offset + f.len];
            let mel: f32 = bins.iter().zip(weights).map(|(p, w)| p * w).sum();
            let value = match self.log {
                LogKind::Db => 10.0 * mel.max(self.log_floor).log10(),
                LogKind::Ln => (mel + self.log_floor).ln(),
                // In f64: m * x cannot overflow, and ln_1p keeps small values exact.
                LogKind::Log10OnePlus { multiplier } => {
                    ((mel as f64 * multiplier as f64).ln_1p() * std::f64::consts::LOG10_E) as f32
                }
            };
            *out = match self.log_divisor {
                Some(d) => value / d,
                None => value,
            };
        }
    }

    /// Writes `samples` padded by `n_fft / 2` on both sides into `out` (see the module doc).
    fn pad(&self, samples: &[f32], out: &mut Vec<f32>) {
        let p = self.n_fft / 2;
        let n = samples.len();
        out.clear();
        out.resize(n + 2 * p, 0.0);
        out[p..p + n].copy_from_slice(samples);
        if self.pad_mode == PadMode::Constant || n == 0 {
            return;
        }
        if n == 1 {
            out.fill(samples[0]);
            return;
        }
        for j in 0..p {
            out[p - 1 - j] = samples[reflect_index(-(j as i64) - 1, n)];
            out[p + n + j] = samples[reflect_index((n + j) as i64, n)];
        }
    }
}

/// The frame settings: rate, FFT and window sizes, hop, and bounds on each, so that a mistyped
/// key is an error rather than gigabytes of window, filterbank or FFT plan.
fn check_frames(fe: &FrontEnd) -> Result<()> {
    if fe.sample_rate == 0 {
        return Err(invalid(
            "sample_rate is 0: set it to the model's rate in Hz".into(),
        ));
    }
    if fe.n_fft < 2 || !fe.n_fft.is_multiple_of(2) {
        return Err(invalid(format!(
            "n_fft is {}: it must be even and at least 2 (frame counts assume an even n_fft)",
            fe.n_fft
        )));
    }
    if fe.win_length == 0 || fe.win_length > fe.n_fft {
        return Err(invalid(format!(
            "win_length is {} while n_fft is {}: set 1 <= win_length <= n_fft",
            fe.win_length, fe.n_fft
        )));
    }
    if fe.hop_length == 0 {
        return Err(invalid(
            "hop_length is 0: set it to at least 1 sample".into(),
        ));
    }
    if fe.sample_rate > MAX_SAMPLE_RATE_HZ {
        return Err(invalid(format!(
            "sample_rate is {} Hz: it must be at most {MAX_SAMPLE_RATE_HZ} Hz",
            fe.sample_rate
        )));
    }
    if fe.n_fft > MAX_N_FFT {
        return Err(invalid(format!(
            "n_fft is {}: it must be at most {MAX_N_FFT}",
            fe.n_fft
        )));
    }
    if fe.n_mels > MAX_N_MELS {
        return Err(invalid(format!(
            "n_mels is {}: it must be at most {MAX_N_MELS}",
            fe.n_mels
        )));
    }
    if fe.multiscale_win_lengths.len() >= MAX_CHANNELS {
        return Err(invalid(format!(
            "multiscale_win_lengths has {} entries: at most {} (channels, the base window included, are at most {MAX_CHANNELS})",
            fe.multiscale_win_lengths.len(),
            MAX_CHANNELS - 1
        )));
    }
    if fe.window != "hann" {
        return Err(invalid(format!(
            "unknown window {:?}: the only window is \"hann\"",
            fe.window
        )));
    }
    Ok(())
}

fn pad_mode(fe: &FrontEnd) -> Result<PadMode> {
    Ok(match fe.pad_mode.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        other => {
            return Err(invalid(format!(
                "unknown pad_mode {other:?}: use \"constant\" or \"reflect\""
            )))
        }
    })
}

fn power(fe: &FrontEnd) -> Result<Power> {
    if !(fe.power.is_finite() && fe.power > 0.0) {
        Err(invalid(format!(
            "power is {}: use 2 (power) or 1 (magnitude)",
            fe.power
        )))
    } else if fe.power == 2.0 {
        Ok(Power::Two)
    } else if fe.power == 1.0 {
        Ok(Power::One)
    } else {
        Ok(Power::Other(fe.power))
    }
}

/// The mel bands' count and range, within the Nyquist frequency: `(fmin, fmax)` in Hz.
fn check_bands(fe: &FrontEnd) -> Result<(f64, f64)> {
    if fe.n_mels == 0 {
        return Err(invalid("n_mels is 0: set the number of mel bands".into()));
    }
    let nyquist = fe.sample_rate as f64 / 2.0;
    let (fmin, fmax) = (fe.fmin as f64, fe.fmax as f64);
    if !(fmin.is_finite() && fmin >= 0.0) {
        return Err(invalid(format!("fmin is {} Hz: it must be >= 0", fe.fmin)));
    }
    if !(fmax.is_finite() && fmax > fmin) {
        return Err(invalid(format!(
            "fmax is {} Hz while fmin is {} Hz: fmax must be above fmin",
            fe.fmax, fe.fmin
        )));
    }
    if fmax > nyquist {
        return Err(invalid(format!(
            "fmax is {} Hz, above the Nyquist frequency {} Hz of sample_rate {}: set fmax <= sample_rate / 2",
            fe.fmax, nyquist, fe.sample_rate
        )));
    }
    Ok((fmin, fmax))
}

fn mel_scale_is_htk(fe: &FrontEnd) -> Result<bool> {
    Ok(match fe.mel_scale.as_str() {
        "slaney" => false,
        "htk" => true,
        other => {
            return Err(invalid(format!(
                "unknown mel_scale {other:?}: use \"slaney\" or \"htk\""
            )))
        }
    })
}

fn mel_norm(fe: &FrontEnd) -> Result<MelNorm> {
    Ok(match fe.mel_norm.as_str() {
        "slaney" => MelNorm::Slaney,
        "l1" => MelNorm::L1,
        "none" => MelNorm::None,
        other => {
            return Err(invalid(format!(
                "unknown mel_norm {other:?}: use \"slaney\", \"l1\" or \"none\""
            )))
        }
    })
}

/// The log and its floor and divisor.
fn log_kind(fe: &FrontEnd) -> Result<LogKind> {
    let log = match (fe.log.as_str(), fe.log_multiplier) {
        ("db", None) => LogKind::Db,
        ("ln", None) => LogKind::Ln,
        ("log10_1p", Some(m)) if m.is_finite() && m > 0.0 => {
            LogKind::Log10OnePlus { multiplier: m }
        }
        ("log10_1p", Some(m)) => {
            return Err(invalid(format!(
                "log_multiplier is {m}: it must be a finite number > 0 (aiSFX: 10000)"
            )))
        }
        ("log10_1p", None) => {
            return Err(invalid(
                "log is \"log10_1p\" without log_multiplier: set the m of log10(1 + m x) (aiSFX: 10000)".into(),
            ))
        }
        (log @ ("db" | "ln"), Some(m)) => {
            return Err(invalid(format!(
                "log_multiplier is {m} while log is {log:?}: it applies to \"log10_1p\" only, remove it"
            )))
        }
        (other, _) => {
            return Err(invalid(format!(
                "unknown log {other:?}: use \"db\", \"ln\" or \"log10_1p\""
            )))
        }
    };
    if !(fe.log_floor.is_finite() && fe.log_floor > 0.0) {
        return Err(invalid(format!(
            "log_floor is {}: it must be > 0 (e.g. 1e-10), or silence gives -inf",
            fe.log_floor
        )));
    }
    if let Some(d) = fe.log_divisor {
        if !(d.is_finite() && d != 0.0) {
            return Err(invalid(format!(
                "log_divisor is {d}: it must be a finite, nonzero number, or be left out"
            )));
        }
    }
    Ok(log)
}

fn peak_normalize(fe: &FrontEnd) -> Result<bool> {
    Ok(match fe.peak_normalize.as_deref() {
        None => false,
        Some("window") => true,
        Some(other) => {
            return Err(invalid(format!(
                "unknown peak_normalize {other:?}: use \"window\", or leave it out"
            )))
        }
    })
}

fn input_gain(fe: &FrontEnd) -> Result<Option<f32>> {
    Ok(match fe.input_gain_db {
        None => None,
        Some(db) if db.is_finite() && db.abs() <= MAX_INPUT_GAIN_DB => {
            Some(10f64.powf(db as f64 / 20.0) as f32)
        }
        Some(db) => {
            return Err(invalid(format!(
                "input_gain_db is {db}: it must be a number of dB from -{MAX_INPUT_GAIN_DB} to {MAX_INPUT_GAIN_DB}, or be left out"
            )))
        }
    })
}

/// Bins kept under `lowpass_hz` (all `n_bins` without it).
fn kept_bins(fe: &FrontEnd, n_bins: usize) -> Result<usize> {
    Ok(match fe.lowpass_hz {
        None => n_bins,
        Some(hz) if hz.is_finite() && hz > 0.0 => {
            lowpass_kept_bins(fe.sample_rate, fe.n_fft, hz as f64)
        }
        Some(hz) => {
            return Err(invalid(format!(
                "lowpass_hz is {hz}: it must be a finite frequency > 0 Hz, or be left out"
            )))
        }
    })
}

fn check_window_lengths(fe: &FrontEnd) -> Result<()> {
    for (i, &length) in fe.multiscale_win_lengths.iter().enumerate() {
        if length == 0 || length > fe.n_fft {
            return Err(invalid(format!(
                "multiscale_win_lengths[{i}] is {length} while n_fft is {}: set every entry to 1 <= length <= n_fft, or remove it",
                fe.n_fft
            )));
        }
    }
    Ok(())
}

/// Each mel filter's nonzero span of the dense filterbank (`n_bins` per row), and the spans'
/// weights end to end.
fn sparse_filters(dense: &[f32], n_bins: usize, n_mels: usize) -> (Vec<SparseFilter>, Vec<f32>) {
    let mut filters = Vec::with_capacity(n_mels);
    let mut weights = Vec::new();
    for row in dense.chunks(n_bins) {
        let first = row.iter().position(|&w| w != 0.0);
        let last = row.iter().rposition(|&w| w != 0.0);
        let (first_bin, len) = match (first, last) {
            (Some(a), Some(b)) => (a, b + 1 - a),
            _ => (0, 0), // an empty filter (librosa only warns): its band is always silent
        };
        filters.push(SparseFilter {
            first_bin,
            offset: weights.len(),
            len,
        });
        weights.extend_from_slice(&row[first_bin..first_bin + len]);
    }
    (filters, weights)
}

/// The index that numpy's `reflect` padding reads for position `i` of a signal of `n >= 2`
/// samples: the signal mirrored about its first and last samples, repeated with period 2(n-1).
fn reflect_index(i: i64, n: usize) -> usize {
    let period = 2 * (n as i64 - 1);
    let m = i.rem_euclid(period);
    if m >= n as i64 {
        (period - m) as usize
    } else {
        m as usize
    }
}

/// The periodic Hann window of `win_length` samples, zero-padded to `n_fft` with the window
/// centred (left pad `(n_fft - win_length) / 2`, as librosa's `util.pad_center`), in f32.
fn padded_hann(n_fft: usize, win_length: usize) -> Vec<f32> {
    let mut window = vec![0f32; n_fft];
    let lpad = (n_fft - win_length) / 2;
    for (w, h) in window[lpad..lpad + win_length]
        .iter_mut()
        .zip(hann_periodic(win_length))
    {
        *w = h as f32;
    }
    window
}

/// `numpy.linspace(start, stop, num)` (same operation order: `i * step + start`, last = stop).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// The periodic Hann window of `n` samples, as scipy's `get_window('hann', n, fftbins=True)`:
/// the symmetric window of `n + 1` points, `0.5 + 0.5 * cos(linspace(-pi, pi, n + 1))`,
/// without its last point.
pub fn hann_periodic(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![1.0]; // scipy returns [1.] for a one-point window
    }
    let fac = linspace(-std::f64::consts::PI, std::f64::consts::PI, n + 1);
    fac[..n].iter().map(|&x| 0.5 + 0.5 * x.cos()).collect()
}

const SLANEY_F_SP: f64 = 200.0 / 3.0;
const SLANEY_MIN_LOG_HZ: f64 = 1000.0;
const SLANEY_MIN_LOG_MEL: f64 = SLANEY_MIN_LOG_HZ / SLANEY_F_SP;

fn slaney_logstep() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hz to mel: Slaney's Auditory Toolbox scale (linear below 1 kHz, logarithmic above;
/// librosa's default) or HTK's `2595 * log10(1 + f / 700)`.
pub fn hz_to_mel(hz: f64, htk: bool) -> f64 {
    if htk {
        return 2595.0 * (1.0 + hz / 700.0).log10();
    }
    let mel = (hz - 0.0) / SLANEY_F_SP;
    if hz >= SLANEY_MIN_LOG_HZ {
        SLANEY_MIN_LOG_MEL + (hz / SLANEY_MIN_LOG_HZ).ln() / slaney_logstep()
    } else {
        mel
    }
}

/// The inverse of `hz_to_mel`.
pub fn mel_to_hz(mel: f64, htk: bool) -> f64 {
    if htk {
        return 700.0 * (10f64.powf(mel / 2595.0) - 1.0);
    }
    if mel >= SLANEY_MIN_LOG_MEL {
        SLANEY_MIN_LOG_HZ * (slaney_logstep() * (mel - SLANEY_MIN_LOG_MEL)).exp()
    } else {
        0.0 + SLANEY_F_SP * mel
    }
}

/// The number of spectrum bins a low-pass at `lowpass_hz` keeps: bins `k` whose frequency
/// `k * sample_rate / n_fft` (f64) is at most `lowpass_hz`, i.e. bins `0..kept`.
fn lowpass_kept_bins(sample_rate: u32, n_fft: usize, lowpass_hz: f64) -> usize {
    (0..n_fft / 2 + 1)
        .take_while(|&k| k as f64 * sample_rate as f64 / n_fft as f64 <= lowpass_hz)
        .count()
}

/// The mel filterbank, `n_mels x (n_fft / 2 + 1)` row-major, as `librosa.filters.mel(sr, n_fft,
/// n_mels, fmin, fmax, htk, norm, dtype=float32)`: triangles between mel-spaced edges, computed
/// in f64, stored in f32, then normalised with librosa's rounding:
/// - `Slaney` (`norm='slaney'`): multiplied by `2 / (upper - lower)` after that first
///   rounding, as librosa's in-place float32 update does;
/// - `L1` (`norm=1`, `util.normalize(weights, norm=1, axis=-1)`): each f32 weight, as f64,
///   divided by the f64 sum of its row's weights (numpy's pairwise summation), rounded to f32;
///   a row whose sum is below float32's smallest normal number (`util.tiny`) is left as it is
///   (normalize's `fill=None`), so an empty filter stays zero.
pub fn mel_filterbank(
    sample_rate: u32,
    n_fft: usize,
    n_mels: usize,
    fmin: f64,
    fmax: f64,
    htk: bool,
    norm: MelNorm,
) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    // np.fft.rfftfreq(n_fft, d=1/sr): k * (1 / (n_fft * d))
    let bin_hz = 1.0 / (n_fft as f64 * (1.0 / sample_rate as f64));
    let fft_freqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * bin_hz).collect();
    let mels = linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2);
    let edges: Vec<f64> = mels.iter().map(|&m| mel_to_hz(m, htk)).collect();
    let mut weights = vec![0f32; n_mels * n_bins];
    for i in 0..n_mels {
        let (fdiff_lo, fdiff_hi) = (edges[i + 1] - edges[i], edges[i + 2] - edges[i + 1]);
        let enorm = 2.0 / (edges[i + 2] - edges[i]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = -(edges[i] - f) / fdiff_lo;
            let upper = (edges[i + 2] - f) / fdiff_hi;
            let w = lower.min(upper).max(0.0) as f32;
            weights[i * n_bins + k] = if norm == MelNorm::Slaney {
                (w as f64 * enorm) as f32
            } else {
                w
            };
        }
    }
    if norm == MelNorm::L1 {
        let mut row64 = vec![0f64; n_bins];
        for row in weights.chunks_mut(n_bins) {
            for (a, &w) in row64.iter_mut().zip(row.iter()) {
                *a = (w as f64).abs();
            }
            let length = numpy_pairwise_sum(&row64);
            if length >= f32::MIN_POSITIVE as f64 {
                for w in row.iter_mut() {
                    *w = (*w as f64 / length) as f32;
                }
            }
        }
    }
    weights
}

/// `numpy.sum` of a contiguous f64 array: numpy's pairwise summation (`pairwise_sum` in
/// numpy/_core/src/umath/loops_utils.h.src: 8 running sums over blocks of at most 128
/// values, halves split at a multiple of 8), so that a sum rounds as numpy's does.
fn numpy_pairwise_sum(x: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0, |acc, &v| acc + v)
    } else if n <= BLOCK {
        let mut r = [0f64; 8];
        r.copy_from_slice(&x[..8]);
        let whole = n - n % 8;
        for chunk in x[8..whole].chunks_exact(8) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        x[whole..].iter().fold(res, |acc, &v| acc + v)
    } else {
        let half = n / 2;
        let half = half - half % 8;
        numpy_pairwise_sum(&x[..half]) + numpy_pairwise_sum(&x[half..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(sr: u32, n_fft: usize, n_mels: usize, fmin: f32, fmax: f32) -> FrontEnd {
        FrontEnd {
            sample_rate: sr,
            n_fft,
            win_length: n_fft,
            hop_length: n_fft / 4,
            window: "hann".into(),
            center: true,
            pad_mode: "constant".into(),
            power: 2.0,
            n_mels,
            fmin,
            fmax,
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

    #[test]
    fn slaney_scale_by_hand() {
        // Linear below 1 kHz at 200/3 Hz per mel: 1 kHz is mel 15.
        assert!((hz_to_mel(1000.0, false) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(200.0, false) - 3.0).abs() < 1e-12);
        // Above, 27 mels per factor 6.4: 6.4 kHz is mel 42.
        assert!((hz_to_mel(6400.0, false) - 42.0).abs() < 1e-12);
        assert!((mel_to_hz(42.0, false) - 6400.0).abs() < 1e-9);
        // HTK: 700 Hz is 2595 * log10(2).
        assert!((hz_to_mel(700.0, true) - 2595.0 * 2f64.log10()).abs() < 1e-9);
        for &f in &[0.0, 50.0, 999.0, 1000.0, 4321.0, 16000.0] {
            for htk in [false, true] {
                assert!((mel_to_hz(hz_to_mel(f, htk), htk) - f).abs() < 1e-8);
            }
        }
    }

    #[test]
    fn filterbank_by_hand() {
        // sr 2000, n_fft 8: bins at 0, 250, 500, 750, 1000 Hz. 0..1000 Hz is mel 0..15 (linear
        // part), so 3 filters have edges at mels 0, 3.75, 7.5, 11.25, 15 = 0, 250, ..., 1000 Hz:
        // filter i peaks (weight 1) on bin i+1 and is 0 on the other bins; the area norm is
        // 2 / (500 Hz) = 0.004.
        let w = mel_filterbank(2000, 8, 3, 0.0, 1000.0, false, MelNorm::Slaney);
        let want = [
            [0.0, 0.004, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.004, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.004, 0.0],
        ];
        for (row, want) in w.chunks(5).zip(want) {
            for (a, b) in row.iter().zip(want) {
                assert!((a - b).abs() < 1e-9, "{row:?}");
            }
        }
        // One filter with edges 0, 500, 1000 Hz: half weight on bins 250 and 750 Hz; no norm.
        let w = mel_filterbank(2000, 8, 1, 0.0, 1000.0, false, MelNorm::None);
        assert_eq!(w, vec![0.0, 0.5, 1.0, 0.5, 0.0]);
        let w = mel_filterbank(2000, 8, 1, 0.0, 1000.0, false, MelNorm::Slaney);
        for (a, b) in w.iter().zip([0.0, 0.001, 0.002, 0.001, 0.0]) {
            assert!((a - b).abs() < 1e-9, "{w:?}");
        }
    }

    #[test]
    fn sparse_filterbank_round_trips() {
        let fe = FrontEnd::panns_32k();
        let mel = MelExtractor::new(&fe).unwrap();
        let dense = mel_filterbank(32000, 1024, 64, 50.0, 14000.0, false, MelNorm::Slaney);
        assert_eq!(mel.filterbank(), dense);
        assert!(mel.filters.iter().all(|f| f.len > 0));
        // Sparse: far fewer weights than the dense matrix.
        assert!(
            mel.weights.len() < dense.len() / 10,
            "{} weights",
            mel.weights.len()
        );
    }

    #[test]
    fn hann_is_periodic() {
        let w = hann_periodic(8);
        let want = [
            0.0,
            0.1464466094067262,
            0.5,
            0.8535533905932737,
            1.0,
            0.8535533905932737,
            0.5,
            0.1464466094067262,
        ];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        // Periodic: w[k] == w[n-k], and the last point is not repeated (no trailing zero).
        let w = hann_periodic(1024);
        assert_eq!(w[0], 0.0);
        assert!((w[512] - 1.0).abs() < 1e-15);
        for k in 1..512 {
            assert!((w[k] - w[1024 - k]).abs() < 1e-12);
        }
    }

    #[test]
    fn short_window_is_centred() {
        let mut fe = tiny(16000, 16, 4, 0.0, 8000.0);
        fe.win_length = 8;
        let mel = MelExtractor::new(&fe).unwrap();
        let w = mel.window();
        assert!(w[..4].iter().all(|&x| x == 0.0) && w[12..].iter().all(|&x| x == 0.0));
        assert_eq!(w[8], 1.0);
    }

    #[test]
    fn sine_energy_lands_in_its_band() {
        let fe = FrontEnd::panns_32k();
        let mel = MelExtractor::new(&fe).unwrap();
        let hz = 1000.0f64;
        let x: Vec<f32> = (0..32000)
            .map(|i| (2.0 * std::f64::consts::PI * hz * i as f64 / 32000.0).sin() as f32)
            .collect();
        let out = mel.compute(&x);
        assert_eq!(out.frames, fe.frames(x.len()));
        // The band whose centre is nearest 1 kHz is the loudest in a middle frame.
        let mels = linspace(hz_to_mel(50.0, false), hz_to_mel(14000.0, false), 66);
        let centres: Vec<f64> = mels[1..65].iter().map(|&m| mel_to_hz(m, false)).collect();
        let nearest = (0..64)
            .min_by(|&a, &b| (centres[a] - hz).abs().total_cmp(&(centres[b] - hz).abs()))
            .unwrap();
        let row = out.frame(50);
        let loudest = (0..64).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert!(
            (loudest as i64 - nearest as i64).abs() <= 1,
            "loudest {loudest}, nearest {nearest}"
        );
        // Power of a unit sine through a periodic Hann window: (N/4)^2 per side-bin pair peak,
        // far above bands an octave away.
        assert!(
            row[loudest] > 20.0 && row[loudest] - row[(loudest + 16).min(63)] > 60.0,
            "{row:?}"
        );
    }

    #[test]
    fn frame_counts_match_front_end() {
        for center in [true, false] {
            for pad in ["constant", "reflect"] {
                let mut fe = tiny(8000, 64, 8, 0.0, 4000.0);
                fe.center = center;
                fe.pad_mode = pad.into();
                let mel = MelExtractor::new(&fe).unwrap();
                for n in [0usize, 1, 2, 15, 16, 17, 31, 32, 63, 64, 65, 100, 1000] {
                    let x: Vec<f32> = (0..n)
                        .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
                        .collect();
                    let out = mel.compute(&x);
                    assert_eq!(out.frames, fe.frames(n), "center {center} n {n}");
                    assert_eq!(out.data.len(), out.frames * 8);
                    assert!(out.data.iter().all(|v| v.is_finite()));
                }
            }
        }
    }

    #[test]
    fn empty_and_silence_give_the_floor() {
        let fe = tiny(8000, 64, 8, 0.0, 4000.0);
        let mel = MelExtractor::new(&fe).unwrap();
        let out = mel.compute(&[]);
        assert_eq!(out.frames, 1);
        assert!(out.data.iter().all(|&v| v == -100.0));
        let mut fe = fe;
        fe.log = "ln".into();
        fe.log_floor = 1e-6;
        let out = MelExtractor::new(&fe).unwrap().compute(&[0.0; 100]);
        assert!(out.data.iter().all(|&v| (v - 1e-6f32.ln()).abs() < 1e-6));
    }

    #[test]
    fn reflect_padding_follows_numpy() {
        // np.pad([1, 2, 3], 5, mode='reflect') = [2 1 2 3 2 | 1 2 3 | 2 1 2 3 2]
        let fe = FrontEnd {
            pad_mode: "reflect".into(),
            ..tiny(8000, 10, 2, 0.0, 4000.0)
        };
        let mel = MelExtractor::new(&fe).unwrap();
        let mut out = Vec::new();
        mel.pad(&[1.0, 2.0, 3.0], &mut out);
        assert_eq!(
            out,
            vec![2., 1., 2., 3., 2., 1., 2., 3., 2., 1., 2., 3., 2.]
        );
        mel.pad(&[4.0], &mut out);
        assert_eq!(out, vec![4.0; 11]);
        mel.pad(&[], &mut out);
        assert_eq!(out, vec![0.0; 10]);
        // Reflect differs from constant only near the edges.
        let x: Vec<f32> = (0..400).map(|i| (i as f32 * 0.3).sin()).collect();
        let a = mel.compute(&x);
        let b = MelExtractor::new(&tiny(8000, 10, 2, 0.0, 4000.0))
            .unwrap()
            .compute(&x);
        assert_ne!(a.frame(0), b.frame(0));
        assert_eq!(a.frame(50), b.frame(50));
    }

    #[test]
    fn compute_with_own_scratch_matches() {
        let fe = FrontEnd::panns_32k();
        let mel = MelExtractor::new(&fe).unwrap();
        let x: Vec<f32> = (0..20000)
            .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let mut scratch = MelScratch::default();
        assert_eq!(mel.compute(&x), mel.compute_with(&x, &mut scratch));
        // Reusing a scratch sized for a longer signal changes nothing.
        assert_eq!(
            mel.compute(&x[..5000]),
            mel.compute_with(&x[..5000], &mut scratch)
        );
    }

    #[test]
    fn multiscale_channel_zero_is_the_single_window_front_end() {
        for (pad, center) in [("reflect", true), ("constant", true), ("constant", false)] {
            let single = FrontEnd {
                pad_mode: pad.into(),
                center,
                ..FrontEnd::panns_32k()
            };
            let multi = FrontEnd {
                multiscale_win_lengths: vec![512, 256, 1024, 1],
                ..single.clone()
            };
            assert_eq!(multi.channels(), 5);
            let one = MelExtractor::new(&single).unwrap();
            let many = MelExtractor::new(&multi).unwrap();
            assert_eq!((many.n_mels(), many.channels()), (64, 5));
            assert_eq!(many.values_per_frame(), 320);
            let x: Vec<f32> = (0..16_000)
                .map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5 + (i as f32 * 0.05).sin())
                .collect();
            for len in [0usize, 1, 700, 1024, 16_000] {
                let a = one.compute(&x[..len]);
                let b = many.compute(&x[..len]);
                assert_eq!(b.frames, a.frames);
                assert_eq!(b.n_mels, 5 * 64);
                assert_eq!(b.data.len(), b.frames * 320);
                for t in 0..a.frames {
                    // Bit for bit: the same operations in the same order.
                    assert_eq!(
                        b.channel(t, 0, 64),
                        a.frame(t),
                        "{pad} {center} {len} t {t}"
                    );
                }
                // Each further channel is a single-window extractor with that win_length.
                for (c, &w) in multi.multiscale_win_lengths.iter().enumerate() {
                    let alone = MelExtractor::new(&FrontEnd {
                        win_length: w,
                        ..single.clone()
                    })
                    .unwrap()
                    .compute(&x[..len]);
                    for t in 0..a.frames {
                        assert_eq!(b.channel(t, c + 1, 64), alone.frame(t), "channel {}", c + 1);
                    }
                }
            }
            // Channels with different windows differ.
            let b = many.compute(&x);
            assert_ne!(b.channel(10, 0, 64), b.channel(10, 1, 64));
        }
    }

    #[test]
    fn multiscale_windows_are_centred_hann() {
        let fe = FrontEnd {
            multiscale_win_lengths: vec![8, 5],
            ..tiny(16000, 16, 4, 0.0, 8000.0)
        };
        let mel = MelExtractor::new(&fe).unwrap();
        assert_eq!(mel.window(), mel.channel_window(0).unwrap());
        let w = mel.channel_window(1).unwrap();
        assert!(w[..4].iter().all(|&x| x == 0.0) && w[12..].iter().all(|&x| x == 0.0));
        assert_eq!(w[8], 1.0);
        // Odd length: left pad (16 - 5) / 2 = 5, as librosa's pad_center.
        let w = mel.channel_window(2).unwrap();
        let hann5: Vec<f32> = hann_periodic(5).into_iter().map(|h| h as f32).collect();
        assert_eq!(&w[5..10], hann5.as_slice());
        assert!(w[..5].iter().chain(&w[10..]).all(|&x| x == 0.0));
        assert!(mel.channel_window(3).is_none());
    }

    #[test]
    fn multiscale_keys_serialise_only_when_set() {
        let fe = FrontEnd::panns_32k();
        let json = serde_json::to_value(&fe).unwrap();
        assert!(json.get("multiscale_win_lengths").is_none());
        // A manifest written before the key existed reads as one channel.
        let back: FrontEnd = serde_json::from_value(json).unwrap();
        assert_eq!(back, fe);
        assert_eq!(back.channels(), 1);
        let multi = FrontEnd {
            multiscale_win_lengths: vec![512, 256],
            ..fe
        };
        let json = serde_json::to_value(&multi).unwrap();
        assert_eq!(
            json["multiscale_win_lengths"],
            serde_json::json!([512, 256])
        );
        assert_eq!(serde_json::from_value::<FrontEnd>(json).unwrap(), multi);
        assert_eq!(multi.win_lengths(), vec![1024, 512, 256]);
    }

    #[test]
    fn invalid_settings_are_refused() {
        let base = FrontEnd::panns_32k();
        let cases: Vec<(FrontEnd, &str)> = vec![
            (
                FrontEnd {
                    window: "hamming".into(),
                    ..base.clone()
                },
                "unknown window",
            ),
            (
                FrontEnd {
                    pad_mode: "wrap".into(),
                    ..base.clone()
                },
                "unknown pad_mode",
            ),
            (
                FrontEnd {
                    mel_scale: "bark".into(),
                    ..base.clone()
                },
                "unknown mel_scale",
            ),
            (
                FrontEnd {
                    mel_norm: "l2".into(),
                    ..base.clone()
                },
                "unknown mel_norm",
            ),
            (
                FrontEnd {
                    log: "log10".into(),
                    ..base.clone()
                },
                "unknown log",
            ),
            (
                FrontEnd {
                    win_length: 2048,
                    ..base.clone()
                },
                "win_length is 2048 while n_fft is 1024",
            ),
            (
                FrontEnd {
                    multiscale_win_lengths: vec![512, 2048],
                    ..base.clone()
                },
                "multiscale_win_lengths[1] is 2048 while n_fft is 1024",
            ),
            (
                FrontEnd {
                    multiscale_win_lengths: vec![0],
                    ..base.clone()
                },
                "multiscale_win_lengths[0] is 0",
            ),
            (
                FrontEnd {
                    fmax: 16001.0,
                    ..base.clone()
                },
                "above the Nyquist",
            ),
            (
                FrontEnd {
                    fmin: 14000.0,
                    ..base.clone()
                },
                "fmax must be above fmin",
            ),
            (
                FrontEnd {
                    n_fft: 1023,
                    win_length: 1000,
                    ..base.clone()
                },
                "must be even",
            ),
            (
                FrontEnd {
                    hop_length: 0,
                    ..base.clone()
                },
                "hop_length is 0",
            ),
            (
                FrontEnd {
                    n_mels: 0,
                    ..base.clone()
                },
                "n_mels is 0",
            ),
            (
                FrontEnd {
                    power: 0.0,
                    ..base.clone()
                },
                "power is 0",
            ),
            (
                FrontEnd {
                    log_floor: 0.0,
                    ..base.clone()
                },
                "log_floor is 0",
            ),
            (
                FrontEnd {
                    sample_rate: 0,
                    ..base.clone()
                },
                "sample_rate is 0",
            ),
        ];
        assert_refused(cases);
    }

    /// A signal with energy all over the band, at the aiSFX rate.
    fn busy_signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f64 / 44_100.0;
                (0.4 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                    + 0.2 * (2.0 * std::f64::consts::PI * 9_000.0 * t * (1.0 + t)).sin()
                    + 0.05 * (((i * 7919) % 1000) as f64 / 1000.0 - 0.5)) as f32
            })
            .collect()
    }

    /// Each front-end is refused with an error that contains its message, in the house style.
    fn assert_refused(cases: Vec<(FrontEnd, &str)>) {
        for (fe, want) in cases {
            let err = MelExtractor::new(&fe).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
            assert!(
                err.starts_with("audio front-end: ") && !err.ends_with('.'),
                "{err}"
            );
        }
    }

    /// aiSFX's front-end without one of its sample-scaling steps, for comparisons.
    fn aisfx_without_peak() -> FrontEnd {
        FrontEnd {
            peak_normalize: None,
            ..FrontEnd::aisfx()
        }
    }

    #[test]
    fn numpy_pairwise_sum_rounds_as_numpy() {
        // np.sum(1 / np.sqrt(np.arange(n) + 1)) with numpy 2.4; a left-to-right sum differs in
        // the last bits for n = 100 (8 running sums) and n = 1025 (halves).
        for (n, bits) in [
            (7usize, 0x4010125007492efdu64),
            (100, 0x403296f046b90b62),
            (1025, 0x404f4b128fe95cc1),
        ] {
            let x: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0).sqrt()).collect();
            assert_eq!(numpy_pairwise_sum(&x).to_bits(), bits, "n {n}");
        }
        let x: Vec<f64> = (0..1025).map(|i| 1.0 / (i as f64 + 1.0).sqrt()).collect();
        assert_ne!(x.iter().sum::<f64>().to_bits(), 0x404f4b128fe95cc1);
        assert_eq!(numpy_pairwise_sum(&[]), 0.0);
    }

    #[test]
    fn l1_filterbank_by_hand() {
        // The triangles of filterbank_by_hand, each divided by the sum of its weights (as
        // librosa.filters.mel(norm=1); test_logmel.py checks these values against librosa).
        let w = mel_filterbank(2000, 8, 1, 0.0, 1000.0, false, MelNorm::L1);
        assert_eq!(w, vec![0.0, 0.25, 0.5, 0.25, 0.0]);
        let w = mel_filterbank(2000, 8, 3, 0.0, 1000.0, false, MelNorm::L1);
        let want = [
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0, 0.0],
        ];
        assert_eq!(w, want.concat());
        // Too many bands for 5 bins: an empty filter stays empty (normalize leaves rows whose
        // sum is below float32's tiny as they are), the others sum to 1.
        let w = mel_filterbank(2000, 8, 6, 0.0, 1000.0, true, MelNorm::L1);
        assert!(w[..5].iter().all(|&x| x == 0.0), "{w:?}");
        for row in w.chunks(5).skip(1) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "{row:?}");
        }
        // aiSFX's bank: every band non-empty and of unit sum; the same triangles as `none`.
        let l1 = mel_filterbank(44_100, 2048, 96, 0.0, 22_050.0, true, MelNorm::L1);
        let none = mel_filterbank(44_100, 2048, 96, 0.0, 22_050.0, true, MelNorm::None);
        for (a, b) in l1.chunks(1025).zip(none.chunks(1025)) {
            let sum: f64 = b.iter().map(|&x| x as f64).sum();
            assert!(sum > 0.0);
            for (x, y) in a.iter().zip(b) {
                assert_eq!(*x, (*y as f64 / sum) as f32);
            }
        }
    }

    #[test]
    fn lowpass_keeps_bins_up_to_the_cut_off() {
        // sr 16 kHz, n_fft 16: bins every 1 kHz, 0..=8 kHz.
        assert_eq!(lowpass_kept_bins(16_000, 16, 3000.0), 4); // 3 kHz itself stays
        assert_eq!(lowpass_kept_bins(16_000, 16, 2999.9), 3);
        assert_eq!(lowpass_kept_bins(16_000, 16, 0.5), 1); // DC only
        assert_eq!(lowpass_kept_bins(16_000, 16, 8000.0), 9);
        assert_eq!(lowpass_kept_bins(16_000, 16, 1e9), 9);
        // 44.1 kHz, n_fft 2048: 8 kHz lies between bins 371 (7989.3 Hz) and 372 (8010.8 Hz).
        assert_eq!(lowpass_kept_bins(44_100, 2048, 8000.0), 372);
        let fe = FrontEnd {
            lowpass_hz: Some(8000.0),
            ..FrontEnd::aisfx()
        };
        assert_eq!(MelExtractor::new(&fe).unwrap().kept_bins, 372);
        assert_eq!(
            MelExtractor::new(&FrontEnd::aisfx()).unwrap().kept_bins,
            1025
        );
    }

    #[test]
    fn lowpass_silences_bands_above_and_keeps_bands_below() {
        let x = busy_signal(44_100);
        for log in ["db", "log10_1p"] {
            let base = FrontEnd {
                log: log.into(),
                log_multiplier: (log == "log10_1p").then_some(10_000.0),
                ..FrontEnd::aisfx()
            };
            let full = MelExtractor::new(&base).unwrap();
            let cut = MelExtractor::new(&FrontEnd {
                lowpass_hz: Some(8000.0),
                ..base.clone()
            })
            .unwrap();
            let (a, b) = (full.compute(&x), cut.compute(&x));
            let (mut below, mut above) = (0, 0);
            for (m, f) in cut.filters.iter().enumerate() {
                for t in 0..a.frames {
                    if f.first_bin + f.len <= cut.kept_bins {
                        // Bit for bit: the same bins and weights.
                        assert_eq!(b.frame(t)[m], a.frame(t)[m], "band {m}");
                        below += 1;
                    } else if f.first_bin >= cut.kept_bins {
                        assert_eq!(b.frame(t)[m], base.silence_value(), "band {m}");
                        above += 1;
                    } else {
                        // Straddling the cut-off: less energy than without the low-pass.
                        assert!(b.frame(t)[m] <= a.frame(t)[m], "band {m}");
                    }
                }
            }
            assert!(below > 0 && above > 0, "{below} {above}");
        }
    }

    #[test]
    fn peak_normalisation_divides_each_call_by_its_peak() {
        let x = busy_signal(30_000);
        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let normalised: Vec<f32> = x.iter().map(|v| v / peak).collect();
        for pad in ["constant", "reflect"] {
            for center in [true, false] {
                let plain = FrontEnd {
                    pad_mode: pad.into(),
                    center,
                    ..aisfx_without_peak()
                };
                let fe = FrontEnd {
                    peak_normalize: Some("window".into()),
                    ..plain.clone()
                };
                let mel = MelExtractor::new(&fe).unwrap();
                let want = MelExtractor::new(&plain).unwrap().compute(&normalised);
                assert_eq!(mel.compute(&x), want, "{pad} {center}");
                // Powers of two scale exactly: the same log-mel bit for bit at any level.
                for k in [-100i32, -20, 7, 60] {
                    let scaled: Vec<f32> = x.iter().map(|v| v * 2f32.powi(k)).collect();
                    assert_eq!(mel.compute(&scaled), want, "2^{k}");
                }
                // Other levels within float32 rounding.
                let scaled: Vec<f32> = x.iter().map(|v| v * 37.3).collect();
                for (a, b) in mel.compute(&scaled).data.iter().zip(&want.data) {
                    assert!((a - b).abs() < 1e-5, "{a} {b}");
                }
            }
        }
    }

    #[test]
    fn gain_multiplies_after_peak_normalisation() {
        let x = busy_signal(20_000);
        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let plain = MelExtractor::new(&aisfx_without_peak()).unwrap();
        let gain = 0.1f32; // 10^(-20 / 20), rounded to f32
        let fe = FrontEnd {
            input_gain_db: Some(-20.0),
            ..FrontEnd::aisfx()
        };
        let want = plain.compute(&x.iter().map(|v| v / peak * gain).collect::<Vec<_>>());
        assert_eq!(MelExtractor::new(&fe).unwrap().compute(&x), want);
        // Gain alone, without peak normalisation.
        let fe = FrontEnd {
            input_gain_db: Some(-20.0),
            ..aisfx_without_peak()
        };
        let want = plain.compute(&x.iter().map(|v| v * gain).collect::<Vec<_>>());
        assert_eq!(MelExtractor::new(&fe).unwrap().compute(&x), want);
        // +6.0206 dB doubles: in the power domain, x4.
        let fe = FrontEnd {
            input_gain_db: Some(20.0 * 2f32.log10()),
            log: "db".into(),
            log_multiplier: None,
            log_divisor: None,
            ..aisfx_without_peak()
        };
        let db = MelExtractor::new(&fe).unwrap().compute(&x);
        let unity = MelExtractor::new(&FrontEnd {
            input_gain_db: None,
            ..fe.clone()
        })
        .unwrap()
        .compute(&x);
        for (a, b) in db.data.iter().zip(&unity.data) {
            if *b > -60.0 {
                assert!((a - b - 20.0 * 2f32.log10()).abs() < 1e-3, "{a} {b}");
            }
        }
    }

    #[test]
    fn log10_1p_and_divisor_by_hand() {
        // The same mel values through `ln` with a negligible floor, then by hand.
        let x = busy_signal(20_000);
        let ln = FrontEnd {
            log: "ln".into(),
            log_floor: 1e-30,
            log_multiplier: None,
            log_divisor: None,
            ..FrontEnd::aisfx()
        };
        let mel: Vec<f64> = MelExtractor::new(&ln)
            .unwrap()
            .compute(&x)
            .data
            .iter()
            .map(|&v| (v as f64).exp())
            .collect();
        let out = MelExtractor::new(&FrontEnd::aisfx()).unwrap().compute(&x);
        let divisor = 9.457798957824707f64;
        let mut largest = 0f32;
        for (&got, &m) in out.data.iter().zip(&mel) {
            let want = (10_000.0 * m + 1.0).log10() / divisor;
            assert!(
                (got as f64 - want).abs() < 1e-5 * want.max(1.0),
                "{got} {want}"
            );
            largest = largest.max(got);
        }
        // The divisor brings aiSFX's values to about [0, 1].
        assert!(largest > 0.5 && largest < 1.2, "{largest}");
        // A divisor applies to `db` and `ln` too.
        let db = FrontEnd::panns_32k();
        let x = &busy_signal(32_000);
        let a = MelExtractor::new(&db).unwrap().compute(x);
        let b = MelExtractor::new(&FrontEnd {
            log_divisor: Some(-4.0),
            ..db.clone()
        })
        .unwrap()
        .compute(x);
        for (a, b) in a.data.iter().zip(&b.data) {
            assert_eq!(*b, a / -4.0);
        }
    }

    #[test]
    fn silence_is_the_silence_value_and_finite() {
        let variants = [
            FrontEnd::aisfx(),
            FrontEnd {
                input_gain_db: Some(-20.0),
                lowpass_hz: Some(8000.0),
                ..FrontEnd::aisfx()
            },
            FrontEnd {
                log_divisor: Some(3.0),
                ..FrontEnd::panns_32k()
            },
            FrontEnd {
                peak_normalize: Some("window".into()),
                log: "ln".into(),
                log_floor: 1e-6,
                ..FrontEnd::panns_32k()
            },
        ];
        for fe in &variants {
            let mel = MelExtractor::new(fe).unwrap();
            for n in [0usize, 1, 5, 2048, 10_000] {
                let out = mel.compute(&vec![0f32; n]);
                assert_eq!(out.frames, fe.frames(n));
                assert!(
                    out.data.iter().all(|&v| v == fe.silence_value()),
                    "{fe:?} {n}: {:?}",
                    &out.data[..4]
                );
            }
        }
        assert_eq!(FrontEnd::aisfx().silence_value(), 0.0);
        assert_eq!(FrontEnd::panns_32k().silence_value(), -100.0);
    }

    #[test]
    fn aisfx_output_is_finite_at_any_level() {
        let mel = MelExtractor::new(&FrontEnd {
            input_gain_db: Some(MAX_INPUT_GAIN_DB),
            ..FrontEnd::aisfx()
        })
        .unwrap();
        let quiet = MelExtractor::new(&FrontEnd {
            input_gain_db: Some(-MAX_INPUT_GAIN_DB),
            ..FrontEnd::aisfx()
        })
        .unwrap();
        let x = busy_signal(12_000);
        for scale in [1e-38f32, 1e-30, 1e-3, 1.0, 1e6, 1e30] {
            for n in [1usize, 2, 1000, 12_000] {
                let y: Vec<f32> = x[..n].iter().map(|v| v * scale).collect();
                for m in [&mel, &quiet] {
                    let out = m.compute(&y);
                    assert!(out.data.iter().all(|v| v.is_finite()), "{scale} {n}");
                }
            }
        }
        // One non-zero subnormal sample: divided by itself, not multiplied by 1 / it (inf).
        let out = MelExtractor::new(&FrontEnd::aisfx())
            .unwrap()
            .compute(&[0.0, 1e-45, 0.0]);
        assert!(out.data.iter().all(|v| v.is_finite()));
        assert!(out.data.iter().any(|&v| v > 0.0));
    }

    #[test]
    fn multiscale_channels_get_the_aisfx_treatment() {
        let single = FrontEnd {
            input_gain_db: Some(-20.0),
            lowpass_hz: Some(8000.0),
            ..FrontEnd::aisfx()
        };
        let multi = FrontEnd {
            multiscale_win_lengths: vec![1024, 333],
            ..single.clone()
        };
        let many = MelExtractor::new(&multi).unwrap();
        let x: Vec<f32> = busy_signal(30_000).iter().map(|v| v * 0.01).collect();
        let b = many.compute(&x);
        for (c, w) in multi.win_lengths().into_iter().enumerate() {
            let alone = MelExtractor::new(&FrontEnd {
                win_length: w,
                ..single.clone()
            })
            .unwrap()
            .compute(&x);
            for t in 0..b.frames {
                assert_eq!(b.channel(t, c, 96), alone.frame(t), "channel {c} t {t}");
            }
        }
    }

    #[test]
    fn aisfx_invalid_settings_are_refused() {
        let base = FrontEnd::aisfx();
        let cases: Vec<(FrontEnd, &str)> = vec![
            (
                FrontEnd {
                    log_multiplier: None,
                    ..base.clone()
                },
                "without log_multiplier",
            ),
            (
                FrontEnd {
                    log_multiplier: Some(0.0),
                    ..base.clone()
                },
                "log_multiplier is 0",
            ),
            (
                FrontEnd {
                    log_multiplier: Some(f32::INFINITY),
                    ..base.clone()
                },
                "log_multiplier is inf",
            ),
            (
                FrontEnd {
                    log: "db".into(),
                    ..base.clone()
                },
                "applies to \"log10_1p\" only",
            ),
            (
                FrontEnd {
                    log: "log2".into(),
                    ..base.clone()
                },
                "unknown log \"log2\": use \"db\", \"ln\" or \"log10_1p\"",
            ),
            (
                FrontEnd {
                    log_divisor: Some(0.0),
                    ..base.clone()
                },
                "log_divisor is 0",
            ),
            (
                FrontEnd {
                    log_divisor: Some(f32::NAN),
                    ..base.clone()
                },
                "log_divisor is NaN",
            ),
            (
                FrontEnd {
                    peak_normalize: Some("file".into()),
                    ..base.clone()
                },
                "unknown peak_normalize \"file\"",
            ),
            (
                FrontEnd {
                    input_gain_db: Some(f32::NEG_INFINITY),
                    ..base.clone()
                },
                "input_gain_db is -inf",
            ),
            (
                FrontEnd {
                    input_gain_db: Some(201.0),
                    ..base.clone()
                },
                "input_gain_db is 201: it must be a number of dB from -200 to 200",
            ),
            (
                FrontEnd {
                    lowpass_hz: Some(0.0),
                    ..base.clone()
                },
                "lowpass_hz is 0",
            ),
            (
                FrontEnd {
                    lowpass_hz: Some(f32::NAN),
                    ..base.clone()
                },
                "lowpass_hz is NaN",
            ),
            (
                FrontEnd {
                    mel_norm: "l2".into(),
                    ..base.clone()
                },
                "use \"slaney\", \"l1\" or \"none\"",
            ),
        ];
        assert_refused(cases);
        // Allowed: a low-pass at or above Nyquist (keeps every bin), a negative divisor.
        for fe in [
            FrontEnd {
                lowpass_hz: Some(30_000.0),
                ..base.clone()
            },
            FrontEnd {
                log_divisor: Some(-2.0),
                ..base.clone()
            },
        ] {
            MelExtractor::new(&fe).unwrap();
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore = "timing, run with --release -- --ignored --nocapture"]
    fn bench_compute() {
        let aisfx_all_steps = FrontEnd {
            input_gain_db: Some(-20.0),
            lowpass_hz: Some(8000.0),
            ..FrontEnd::aisfx()
        };
        for (name, fe) in [
            ("panns_32k", FrontEnd::panns_32k()),
            ("aisfx", FrontEnd::aisfx()),
            ("aisfx + gain + lowpass", aisfx_all_steps),
        ] {
            let mel = MelExtractor::new(&fe).unwrap();
            let x: Vec<f32> = (0..fe.sample_rate as usize * 5)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let mut scratch = MelScratch::default();
            mel.compute_with(&x, &mut scratch);
            let t = std::time::Instant::now();
            let mut frames = 0;
            for _ in 0..100 {
                frames += mel.compute_with(&x, &mut scratch).frames;
            }
            let e = t.elapsed();
            println!(
                "{name}: {frames} frames in {e:?}: {:.2} us/frame",
                e.as_secs_f64() * 1e6 / frames as f64
            );
        }
    }
}
