//! Streaming mono resampling with rubato, from any rate to the model's rate. Pure: slices in,
//! samples out.
//!
//! Output is aligned with the input: the resampler's delay is trimmed, so output sample `j` is
//! the signal at time `j / out_rate`, and a stream of `n` input samples gives exactly
//! `round(n * out_rate / in_rate)` output samples (the tail is flushed with zeros).
//! Equal rates are the identity: samples are passed through unchanged.
//!
//! Engine: rubato's `FftFixedIn` (FFT convolution with a BlackmanHarris2-windowed sinc as long as
//! one FFT chunk, >= 2048 input samples here). It is synchronous (exact rational ratio) and its
//! delay is a whole number of output samples, trimmed exactly. Measured against `SincFixedIn`
//! (256 taps, 256x oversampled, cubic, BlackmanHarris2) on 60 s of audio, release build
//! (`tests::speed_and_rejection_fft_vs_sinc`, ignored by default): 44.1 kHz -> 32 kHz 0.15 s vs
//! 1.06 s, 48 kHz -> 32 kHz 0.14 s vs 0.71 s, 16 kHz -> 32 kHz 0.04 s vs 0.68 s, with the same
//! stop band (a tone at 1.1x the output's Nyquist comes out at -140 dB) and a flat pass band.
//! Its FFT sizes follow the rates' greatest common divisor, so for rate pairs whose reduced
//! ratio is huge (44101 Hz -> 32 kHz still uses 88202-point FFTs, 1000003 Hz would not fit)
//! `SincFixedIn` with those settings takes over; its alignment is then within half an output
//! sample (see `StreamResampler::with_engine`).

use rubato::{
    FftFixedIn, Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use crate::error::{Error, Result};

/// Input samples per FFT chunk we aim for (rounded up to a multiple the rate ratio allows).
const FFT_CHUNK_TARGET_SAMPLES: usize = 2048;
/// Above this many input samples per chunk (huge reduced ratios), use the sinc engine.
const FFT_CHUNK_MAX_SAMPLES: usize = 1 << 17;
/// Input samples per call of the sinc engine.
const SINC_CHUNK_SAMPLES: usize = 4096;
const SINC_LEN: usize = 256;

enum Engine {
    Identity,
    Fft(Box<FftFixedIn<f32>>),
    Sinc(Box<SincFixedIn<f32>>),
}

/// A mono resampler fed chunk by chunk: `process` any number of times, then `finish` once.
pub struct StreamResampler {
    in_rate: u32,
    out_rate: u32,
    engine: Engine,
    /// Input samples the engine takes per call.
    chunk: usize,
    /// Input samples received so far.
    n_in: u64,
    /// Output samples handed out so far.
    n_out: u64,
    /// Leading output samples still to drop (the engine's delay).
    skip: usize,
    /// Input not yet making a full chunk.
    pending: Vec<f32>,
    /// Trimmed output not yet handed out (never more than `round(n_in * ratio)` leaves).
    held: Vec<f32>,
    out_buf: Vec<Vec<f32>>,
    finished: bool,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `round(n * out_rate / in_rate)`, the length of `n` samples resampled (halves round up).
pub fn resampled_len(n: u64, in_rate: u32, out_rate: u32) -> u64 {
    let (n, i, o) = (n as u128, in_rate as u128, out_rate as u128);
    ((n * o * 2 + i) / (i * 2)) as u64
}

fn rubato_error(e: impl std::fmt::Display) -> Error {
    Error::Audio(format!("resampler failed: {e}"))
}

impl StreamResampler {
    pub fn new(in_rate: u32, out_rate: u32) -> Result<StreamResampler> {
        Self::with_engine(in_rate, out_rate, false)
    }

    fn with_engine(in_rate: u32, out_rate: u32, force_sinc: bool) -> Result<StreamResampler> {
        if in_rate == 0 || out_rate == 0 {
            return Err(Error::Audio(format!(
                "cannot resample from {in_rate} Hz to {out_rate} Hz: both rates must be above 0"
            )));
        }
        let g = gcd(in_rate as u64, out_rate as u64) as usize;
        let (unit_in, unit_out) = (in_rate as usize / g, out_rate as usize / g);
        // An even number of units per FFT chunk makes the delay (half the filter, which is one
        // chunk long) a whole number of output samples.
        let two_units = 2 * unit_in;
        let chunk_fft = two_units * FFT_CHUNK_TARGET_SAMPLES.div_ceil(two_units);
        let fft_fits = chunk_fft.max(chunk_fft / unit_in * unit_out) <= FFT_CHUNK_MAX_SAMPLES;
        let mut pending = Vec::new();
        let (engine, chunk, skip) = if in_rate == out_rate {
            (Engine::Identity, 0, 0)
        } else if fft_fits && !force_sinc {
            let r = FftFixedIn::<f32>::new(in_rate as usize, out_rate as usize, chunk_fft, 1, 1)
                .map_err(rubato_error)?;
            let delay = r.output_delay();
            (Engine::Fft(Box::new(r)), chunk_fft, delay)
        } else {
            let params = SincInterpolationParameters {
                sinc_len: SINC_LEN,
                f_cutoff: rubato::calculate_cutoff(SINC_LEN, WindowFunction::BlackmanHarris2),
                interpolation: SincInterpolationType::Cubic,
                oversampling_factor: 256,
                window: WindowFunction::BlackmanHarris2,
            };
            let ratio = out_rate as f64 / in_rate as f64;
            let r = SincFixedIn::<f32>::new(ratio, 1.0, params, SINC_CHUNK_SAMPLES, 1)
                .map_err(rubato_error)?;
            // rubato 0.16's SincFixedIn centres its first output already; measured, output k is
            // the input at time (k + 1) / ratio - 1 (in input samples), a lag of ratio - 1 output
            // samples (its `output_delay` does not describe this). When downsampling that lag is
            // negative: leading zeros make it >= 0, then the nearest whole lag is trimmed, which
            // leaves at most half an output sample of misalignment.
            let zeros = if ratio < 1.0 {
                ((1.0 - ratio) / ratio).ceil() as usize
            } else {
                0
            };
            let lag = ratio - 1.0 + zeros as f64 * ratio;
            pending.resize(zeros, 0.0);
            (
                Engine::Sinc(Box::new(r)),
                SINC_CHUNK_SAMPLES,
                lag.round() as usize,
            )
        };
        let out_buf = match &engine {
            Engine::Identity => Vec::new(),
            Engine::Fft(r) => r.output_buffer_allocate(true),
            Engine::Sinc(r) => r.output_buffer_allocate(true),
        };
        pending.reserve(chunk);
        Ok(StreamResampler {
            in_rate,
            out_rate,
            engine,
            chunk,
            n_in: 0,
            n_out: 0,
            skip,
            pending,
            held: Vec::new(),
            out_buf,
            finished: false,
        })
    }

    pub fn is_identity(&self) -> bool {
        matches!(self.engine, Engine::Identity)
    }

    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// Resamples `input` and appends what is ready to `out` (the rest comes with later calls).
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<()> {
        if self.finished {
            return Err(Error::Audio(
                "resampler fed after finish: create a new one".into(),
            ));
        }
        self.n_in += input.len() as u64;
        if self.is_identity() {
            out.extend_from_slice(input);
            self.n_out += input.len() as u64;
            return Ok(());
        }
        let mut rest = input;
        while !rest.is_empty() {
            let take = self
                .chunk
                .saturating_sub(self.pending.len())
                .min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.run_full_chunks()?;
        }
        // Never hand out more than the input so far accounts for (it cannot be taken back).
        let bound = (self.n_in as u128 * self.out_rate as u128 / self.in_rate as u128) as u64;
        self.release(bound, out);
        Ok(())
    }

    /// Flushes the end of the stream into `out`: afterwards exactly
    /// `round(n * out_rate / in_rate)` samples have been handed out for `n` samples in.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if self.is_identity() {
            return Ok(());
        }
        let total = resampled_len(self.n_in, self.in_rate, self.out_rate);
        self.run_full_chunks()?;
        while self.n_out + (self.held.len() as u64) < total {
            self.pending.resize(self.chunk, 0.0);
            self.run_full_chunks()?;
        }
        self.release(total, out);
        self.held = Vec::new();
        Ok(())
    }

    /// Runs the engine on each full chunk at the front of `pending`.
    fn run_full_chunks(&mut self) -> Result<()> {
        let mut start = 0;
        while self.pending.len() - start >= self.chunk {
            self.run_chunk(start)?;
            start += self.chunk;
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn run_chunk(&mut self, start: usize) -> Result<()> {
        let input = [&self.pending[start..start + self.chunk]];
        let (_, produced) = match &mut self.engine {
            Engine::Identity => unreachable!("the identity keeps no chunks"),
            Engine::Fft(r) => r.process_into_buffer(&input, &mut self.out_buf, None),
            Engine::Sinc(r) => r.process_into_buffer(&input, &mut self.out_buf, None),
        }
        .map_err(rubato_error)?;
        let produced = &self.out_buf[0][..produced];
        let dropped = self.skip.min(produced.len());
        self.skip -= dropped;
        self.held.extend_from_slice(&produced[dropped..]);
        Ok(())
    }

    fn release(&mut self, bound: u64, out: &mut Vec<f32>) {
        let n = (bound.saturating_sub(self.n_out) as usize).min(self.held.len());
        out.extend_from_slice(&self.held[..n]);
        self.held.drain(..n);
        self.n_out += n as u64;
    }
}

/// Resamples a whole signal (see `StreamResampler` for alignment and length).
pub fn resample(samples: &[f32], in_rate: u32, out_rate: u32) -> Result<Vec<f32>> {
    let mut r = StreamResampler::new(in_rate, out_rate)?;
    let mut out =
        Vec::with_capacity(resampled_len(samples.len() as u64, in_rate, out_rate) as usize);
    r.process(samples, &mut out)?;
    r.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin() as f32)
            .collect()
    }

    /// The frequency of the strongest peak (DFT magnitude over a fine grid, Hann-weighted).
    fn peak_hz(x: &[f32], rate: u32, lo: f64, hi: f64) -> f64 {
        let n = x.len();
        let mut best = (0.0, lo);
        let mut f = lo;
        while f <= hi {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (i, &v) in x.iter().enumerate() {
                let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos();
                let ph = 2.0 * std::f64::consts::PI * f * i as f64 / rate as f64;
                re += w * v as f64 * ph.cos();
                im -= w * v as f64 * ph.sin();
            }
            let m = re * re + im * im;
            if m > best.0 {
                best = (m, f);
            }
            f += 1.0;
        }
        best.1
    }

    #[test]
    fn identity_is_exact() {
        let x: Vec<f32> = (0..10_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut r = StreamResampler::new(32000, 32000).unwrap();
        assert!(r.is_identity());
        let mut out = Vec::new();
        for c in x.chunks(777) {
            r.process(c, &mut out).unwrap();
        }
        r.finish(&mut out).unwrap();
        assert_eq!(out, x);
    }

    #[test]
    fn sine_keeps_frequency_and_length() {
        let x = sine(1000.0, 44100, 44100);
        let y = resample(&x, 44100, 32000).unwrap();
        assert_eq!(y.len(), 32000);
        let f = peak_hz(&y[4000..12000], 32000, 900.0, 1100.0);
        assert!((f - 1000.0).abs() <= 1.0, "peak at {f} Hz");
        // Amplitude kept (passband gain ~1) and the ends are not cut short.
        let rms = |s: &[f32]| {
            (s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
        };
        assert!((rms(&y[1000..31000]) - 0.5f64.sqrt()).abs() < 1e-3);
        assert!(rms(&y[31800..]) > 0.6, "tail {}", rms(&y[31800..]));
    }

    /// Output sample j must be the input at time j / out_rate: compare with the exact sine.
    fn check_alignment(in_rate: u32, out_rate: u32, chunk: usize) {
        let n = in_rate as usize; // one second
        let hz = 440.0;
        let x = sine(hz, in_rate, n);
        let mut r = StreamResampler::new(in_rate, out_rate).unwrap();
        let mut y = Vec::new();
        for c in x.chunks(chunk) {
            r.process(c, &mut y).unwrap();
        }
        r.finish(&mut y).unwrap();
        assert_eq!(y.len() as u64, resampled_len(n as u64, in_rate, out_rate));
        let want = sine(hz, out_rate, y.len());
        let m = y.len();
        let err = y[m / 4..3 * m / 4]
            .iter()
            .zip(&want[m / 4..3 * m / 4])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 2e-3, "{in_rate} -> {out_rate}: max error {err}");
    }

    #[test]
    fn output_is_aligned_with_input() {
        for &(i, o) in &[
            (44100, 32000),
            (48000, 32000),
            (8000, 32000),
            (22050, 32000),
            (192000, 32000),
            (32000, 16000),
            (44101, 32000),
            (11025, 44100),
        ] {
            check_alignment(i, o, 1000);
        }
    }

    /// The lag of `y` (a 440 Hz sine resampled to `rate`) behind the exact sine, in samples.
    fn lag_samples(y: &[f32], rate: u32) -> f64 {
        let w = 2.0 * std::f64::consts::PI * 440.0 / rate as f64;
        let m = y.len();
        let (mut re, mut im) = (0f64, 0f64);
        for (k, &v) in y.iter().enumerate().take(3 * m / 4).skip(m / 4) {
            re += v as f64 * (w * k as f64).cos();
            im += v as f64 * (w * k as f64).sin();
        }
        (-re).atan2(im) / w
    }

    #[test]
    fn sinc_engine_is_aligned_within_half_a_sample() {
        // 1000003 Hz is prime: the FFT engine would need million-point FFTs.
        let r = StreamResampler::new(1_000_003, 32000).unwrap();
        assert!(matches!(r.engine, Engine::Sinc(_)));
        for &(i, o) in &[
            (1_000_003u32, 32000u32),
            (44100, 32000),
            (48000, 32000),
            (16000, 32000),
            (8000, 32000),
        ] {
            let x = sine(440.0, i, i as usize);
            let mut r = StreamResampler::with_engine(i, o, true).unwrap();
            let mut y = Vec::new();
            for c in x.chunks(5000) {
                r.process(c, &mut y).unwrap();
            }
            r.finish(&mut y).unwrap();
            assert_eq!(y.len() as u64, resampled_len(i as u64, i, o));
            let lag = lag_samples(&y, o);
            assert!(lag.abs() <= 0.5 + 1e-3, "{i} -> {o}: lag {lag}");
        }
        // The FFT engine's alignment is exact.
        let y = resample(&sine(440.0, 44100, 44100), 44100, 32000).unwrap();
        assert!(lag_samples(&y, 32000).abs() < 1e-3);
    }

    #[test]
    fn chunking_does_not_change_output() {
        let x: Vec<f32> = (0..30_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let whole = resample(&x, 48000, 32000).unwrap();
        for chunk in [1, 100, 4097] {
            let mut r = StreamResampler::new(48000, 32000).unwrap();
            let mut out = Vec::new();
            for c in x.chunks(chunk) {
                r.process(c, &mut out).unwrap();
            }
            r.finish(&mut out).unwrap();
            assert_eq!(out, whole);
        }
    }

    #[test]
    fn short_and_empty_inputs() {
        assert_eq!(resample(&[], 44100, 32000).unwrap(), Vec::<f32>::new());
        assert_eq!(resample(&[0.5], 44100, 32000).unwrap().len(), 1);
        assert_eq!(resample(&[0.5; 3], 8000, 32000).unwrap().len(), 12);
        assert!(StreamResampler::new(0, 32000).is_err());
    }

    #[test]
    #[ignore = "timing, run with --release -- --ignored --nocapture"]
    fn speed_and_rejection_fft_vs_sinc() {
        let rms = |s: &[f32]| {
            (s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
        };
        for &(i, o) in &[(44100u32, 32000u32), (48000, 32000), (16000, 32000)] {
            for sinc in [false, true] {
                let engine = if sinc { "sinc" } else { "fft" };
                let x = sine(1000.0, i, i as usize * 60);
                let t = std::time::Instant::now();
                let mut r = StreamResampler::with_engine(i, o, sinc).unwrap();
                let mut y = Vec::new();
                for c in x.chunks(4096) {
                    r.process(c, &mut y).unwrap();
                }
                r.finish(&mut y).unwrap();
                let secs = t.elapsed().as_secs_f64();
                // Stop band (downsampling): a tone above the output's Nyquist must vanish, or it
                // would alias.
                let rms_db = |y: &[f32]| {
                    let m = y.len();
                    20.0 * (rms(&y[m / 4..3 * m / 4]) * 2f64.sqrt()).log10()
                };
                let stop = 0.5 * o as f64 * 1.1;
                let stop_db = if o < i {
                    format!(
                        "{:.1} dB",
                        rms_db(&resample_with(&sine(stop, i, i as usize), i, o, sinc))
                    )
                } else {
                    "n/a".to_string()
                };
                // Pass band: a tone at 85% of the lower Nyquist keeps its level.
                let pass = 0.5 * o.min(i) as f64 * 0.85;
                let pass_db = rms_db(&resample_with(&sine(pass, i, i as usize), i, o, sinc));
                println!(
                    "{i} -> {o} {engine:4}: 60 s in {secs:.3} s ({:.0}x real time); {stop:.0} Hz at {stop_db}, {pass:.0} Hz at {pass_db:.3} dB",
                    60.0 / secs
                );
            }
        }
    }

    fn resample_with(x: &[f32], i: u32, o: u32, sinc: bool) -> Vec<f32> {
        let mut r = StreamResampler::with_engine(i, o, sinc).unwrap();
        let mut y = Vec::new();
        r.process(x, &mut y).unwrap();
        r.finish(&mut y).unwrap();
        y
    }
}
