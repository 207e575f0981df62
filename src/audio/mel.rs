//! Log-mel spectrogram: a port of librosa 0.11's `feature.melspectrogram` followed by the
//! manifest's log (`power_to_db(ref=1, top_db=None)` or a natural log). Pure: slices in, a Vec out.
//!
//! Ported from librosa 0.11.0 (`librosa/core/spectrum.py` `stft`/`_spectrogram`,
//! `librosa/filters.py` `mel`, `librosa/core/convert.py` `hz_to_mel`/`mel_to_hz`/
//! `mel_frequencies`) and scipy's `get_window('hann', n, fftbins=True)`. The filterbank and the
//! window are computed in f64 with numpy's operation order, then stored as f32; the FFT, the
//! power spectrum and the mel projection run in f32 (tolerance: tests/python/test_logmel.py).
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

fn invalid(msg: String) -> Error {
    Error::Other(format!("audio front-end: {msg}"))
}

impl MelExtractor {
    /// Validates the settings and precomputes the window, the FFT plan and the filterbank.
    pub fn new(fe: &FrontEnd) -> Result<MelExtractor> {
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
        if fe.window != "hann" {
            return Err(invalid(format!(
                "unknown window {:?}: the only window is \"hann\"",
                fe.window
            )));
        }
        let pad_mode = match fe.pad_mode.as_str() {
            "constant" => PadMode::Constant,
            "reflect" => PadMode::Reflect,
            other => {
                return Err(invalid(format!(
                    "unknown pad_mode {other:?}: use \"constant\" or \"reflect\""
                )))
            }
        };
        let power = if !(fe.power.is_finite() && fe.power > 0.0) {
            return Err(invalid(format!(
                "power is {}: use 2 (power) or 1 (magnitude)",
                fe.power
            )));
        } else if fe.power == 2.0 {
            Power::Two
        } else if fe.power == 1.0 {
            Power::One
        } else {
            Power::Other(fe.power)
        };
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
        let htk = match fe.mel_scale.as_str() {
            "slaney" => false,
            "htk" => true,
            other => {
                return Err(invalid(format!(
                    "unknown mel_scale {other:?}: use \"slaney\" or \"htk\""
                )))
            }
        };
        let slaney_norm = match fe.mel_norm.as_str() {
            "slaney" => true,
            "none" => false,
            other => {
                return Err(invalid(format!(
                    "unknown mel_norm {other:?}: use \"slaney\" or \"none\""
                )))
            }
        };
        let log = match fe.log.as_str() {
            "db" => LogKind::Db,
            "ln" => LogKind::Ln,
            other => {
                return Err(invalid(format!(
                    "unknown log {other:?}: use \"db\" or \"ln\""
                )))
            }
        };
        if !(fe.log_floor.is_finite() && fe.log_floor > 0.0) {
            return Err(invalid(format!(
                "log_floor is {}: it must be > 0 (e.g. 1e-10), or silence gives -inf",
                fe.log_floor
            )));
        }

        for (i, &length) in fe.multiscale_win_lengths.iter().enumerate() {
            if length == 0 || length > fe.n_fft {
                return Err(invalid(format!(
                    "multiscale_win_lengths[{i}] is {length} while n_fft is {}: set every entry to 1 <= length <= n_fft, or remove it",
                    fe.n_fft
                )));
            }
        }
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
            slaney_norm,
        );
        let n_bins = fe.n_fft / 2 + 1;
        let mut filters = Vec::with_capacity(fe.n_mels);
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

        let signal: &[f32] = if self.center {
            self.pad(samples, padded);
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

    /// One channel of one frame: `segment` (n_fft samples) times `window`, FFT, power, mel
    /// projection and log into `row` (n_mels values).
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
        match self.power {
            Power::Two => {
                for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                    *p = c.re * c.re + c.im * c.im;
                }
            }
            Power::One => {
                for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                    *p = (c.re * c.re + c.im * c.im).sqrt();
                }
            }
            Power::Other(e) => {
                for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                    *p = (c.re * c.re + c.im * c.im).powf(e / 2.0);
                }
            }
        }
        for (out, f) in row.iter_mut().zip(&self.filters) {
            let bins = &power[f.first_bin..f.first_bin + f.len];
            let weights = &self.weights[f.offset..f.offset + f.len];
            let mel: f32 = bins.iter().zip(weights).map(|(p, w)| p * w).sum();
            *out = match self.log {
                LogKind::Db => 10.0 * mel.max(self.log_floor).log10(),
                LogKind::Ln => (mel + self.log_floor).ln(),
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

/// The mel filterbank, `n_mels x (n_fft / 2 + 1)` row-major, as `librosa.filters.mel(sr, n_fft,
/// n_mels, fmin, fmax, htk, norm='slaney' or None, dtype=float32)`: triangles between mel-spaced
/// edges, computed in f64, stored in f32 (and, with the area normalisation, multiplied by
/// `2 / (upper - lower)` after that first rounding, as librosa's in-place float32 update does).
pub fn mel_filterbank(
    sample_rate: u32,
    n_fft: usize,
    n_mels: usize,
    fmin: f64,
    fmax: f64,
    htk: bool,
    slaney_norm: bool,
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
            weights[i * n_bins + k] = if slaney_norm {
                (w as f64 * enorm) as f32
            } else {
                w
            };
        }
    }
    weights
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
        let w = mel_filterbank(2000, 8, 3, 0.0, 1000.0, false, true);
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
        let w = mel_filterbank(2000, 8, 1, 0.0, 1000.0, false, false);
        assert_eq!(w, vec![0.0, 0.5, 1.0, 0.5, 0.0]);
        let w = mel_filterbank(2000, 8, 1, 0.0, 1000.0, false, true);
        for (a, b) in w.iter().zip([0.0, 0.001, 0.002, 0.001, 0.0]) {
            assert!((a - b).abs() < 1e-9, "{w:?}");
        }
    }

    #[test]
    fn sparse_filterbank_round_trips() {
        let fe = FrontEnd::panns_32k();
        let mel = MelExtractor::new(&fe).unwrap();
        let dense = mel_filterbank(32000, 1024, 64, 50.0, 14000.0, false, true);
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
        for (fe, want) in cases {
            let err = MelExtractor::new(&fe).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
            assert!(
                err.starts_with("audio front-end: ") && !err.ends_with('.'),
                "{err}"
            );
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore = "timing, run with --release -- --ignored --nocapture"]
    fn bench_compute() {
        let mel = MelExtractor::new(&FrontEnd::panns_32k()).unwrap();
        let x: Vec<f32> = (0..160_000)
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
            "{frames} frames in {e:?}: {:.2} us/frame",
            e.as_secs_f64() * 1e6 / frames as f64
        );
    }
}
