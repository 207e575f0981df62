//! From a file to model input: decode -> mono -> resample -> log-mel, whole or by windows.
//!
//! Windows (`Windowing`, lengths in samples at the model's rate, `round(seconds * rate)` with
//! halves rounded up): window `k` starts at `k * hop` and ends at `min(start + clip, total)`;
//! windows stop after the first one that reaches the end of the signal (or when the next start
//! is past it, when hop > clip leaves gaps). The last window, when shorter than the clip and
//! shorter than `min_seconds`, is dropped unless it is the only one; a signal shorter than one
//! clip is one window of its own length, not padded. Each window's log-mel is computed on that
//! slice alone, with its own centre padding, as librosa would on `y[start:end]`.
//! `window_bounds` states this as a pure function for independent implementations.
//!
//! `log_mel_windows` streams: it holds at most one window of resampled samples plus one decoded
//! packet (after resampling), whatever the file's length (`LogMelWindows::max_buffered_samples`).
//!
//! Waveforms (for encoders with a waveform input, e.g. Wavegram-Logmel): the waveform of a
//! window that starts at sample `s` and whose log-mel has `T` frames is `x[s .. s + T *
//! hop_length]` of the resampled mono signal `x`, zero-filled past the end of the file
//! (`window_waveform`). With centred frames `T * hop_length` exceeds the window's length by up
//! to one hop, so a stream asked for waveforms (`LogMelWindows::with_waveforms`) reads up to
//! one hop past each window before returning it.

use std::sync::Arc;

use crate::audio::config::{FrontEnd, Windowing};
use crate::audio::decode::{AudioInfo, AudioSource, DecodeOptions, Decoder};
use crate::audio::mel::{LogMel, MelExtractor};
use crate::audio::resample::{resampled_len, StreamResampler};
use crate::error::{Error, Result};

/// Samples the whole-file decoder reserves up front at most (the header's length is a hint).
const MAX_RESERVE_SAMPLES: u64 = 1 << 24;

/// Decodes a whole file to mono f32 at `target_rate` (for short clips and training data).
pub fn decode_mono(source: &AudioSource, target_rate: u32) -> Result<Vec<f32>> {
    let mut decoder = Decoder::open(*source)?;
    let info = decoder.info().clone();
    let mut resampler = StreamResampler::new(info.sample_rate, target_rate)?;
    let reserve = info
        .frames
        .map(|n| resampled_len(n, info.sample_rate, target_rate))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(reserve.min(MAX_RESERVE_SAMPLES) as usize);
    while let Some(chunk) = decoder.next_mono_chunk()? {
        resampler.process(&chunk, &mut out)?;
    }
    resampler.finish(&mut out)?;
    Ok(out)
}

/// Window lengths in samples at one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlan {
    pub clip_samples: usize,
    pub hop_samples: usize,
    pub min_samples: usize,
}

/// The longest window, hop or minimum length: a window is held whole in memory (60 s at the
/// highest model rate is 184 MB of f32).
pub const MAX_WINDOW_SECONDS: f32 = 60.0;

fn seconds_to_samples(seconds: f32, rate: u32) -> usize {
    (seconds as f64 * rate as f64 + 0.5).floor() as usize
}

impl WindowPlan {
    /// Converts `windowing` to samples at `sample_rate`, refusing lengths that make no window.
    pub fn new(windowing: &Windowing, sample_rate: u32) -> Result<WindowPlan> {
        let check = |key: &str, v: f32, allow_zero: bool| {
            let ok =
                v.is_finite() && (v > 0.0 || (allow_zero && v == 0.0)) && v <= MAX_WINDOW_SECONDS;
            if ok {
                Ok(())
            } else {
                Err(Error::Other(format!(
                    "windowing: {key} is {v}: it must be a number of seconds {}, at most {MAX_WINDOW_SECONDS}",
                    if allow_zero { ">= 0" } else { "> 0" }
                )))
            }
        };
        check("clip_seconds", windowing.clip_seconds, false)?;
        check("hop_seconds", windowing.hop_seconds, false)?;
        check("min_seconds", windowing.min_seconds, true)?;
        let plan = WindowPlan {
            clip_samples: seconds_to_samples(windowing.clip_seconds, sample_rate),
            hop_samples: seconds_to_samples(windowing.hop_seconds, sample_rate),
            min_samples: seconds_to_samples(windowing.min_seconds, sample_rate),
        };
        if plan.clip_samples == 0 || plan.hop_samples == 0 {
            return Err(Error::Other(format!(
                "windowing: clip_seconds {} and hop_seconds {} must each be at least one sample at {sample_rate} Hz",
                windowing.clip_seconds, windowing.hop_seconds
            )));
        }
        Ok(plan)
    }

    /// The `(start, end)` sample ranges of the windows of a signal of `total` samples.
    pub fn bounds(&self, total: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < total {
            let end = (start + self.clip_samples).min(total);
            let len = end - start;
            if len < self.clip_samples && len < self.min_samples && !out.is_empty() {
                break;
            }
            out.push((start, end));
            if end == total {
                break;
            }
            start += self.hop_samples;
        }
        out
    }
}

/// The windows of a signal of `total_samples` samples at `sample_rate` (see the module doc).
pub fn window_bounds(
    total_samples: usize,
    sample_rate: u32,
    windowing: &Windowing,
) -> Result<Vec<(usize, usize)>> {
    Ok(WindowPlan::new(windowing, sample_rate)?.bounds(total_samples))
}

/// The waveform of a window starting at sample `start` of `signal` whose log-mel has `frames`
/// frames: `signal[start .. start + frames * hop_length]`, zero-filled past the end of `signal`
/// (see the module doc). The trainer and the extension feed waveform inputs with this.
pub fn window_waveform(signal: &[f32], start: usize, frames: usize, hop_length: usize) -> Vec<f32> {
    let len = frames * hop_length;
    let mut out = vec![0f32; len];
    let from = start.min(signal.len());
    let to = (start + len).min(signal.len());
    out[..to - from].copy_from_slice(&signal[from..to]);
    out
}

/// Streams the log-mel of each window of a file (see `log_mel_windows`); `'a` is the lifetime
/// of a BLOB source's bytes, read in place.
pub struct LogMelWindows<'a> {
    decoder: Decoder<'a>,
    resampler: StreamResampler,
    mel: Arc<MelExtractor>,
    plan: WindowPlan,
    /// The current window's samples, from `start`.
    buf: Vec<f32>,
    /// Resampled samples not yet taken, from `pending_pos`.
    pending: Vec<f32>,
    pending_pos: usize,
    /// Samples to drop before the next window starts (hop > clip).
    skip: usize,
    start: u64,
    last_bounds: Option<(u64, u64)>,
    windows: usize,
    resampled: u64,
    eof: bool,
    done: bool,
    max_buffered: usize,
    /// Samples read past a full window before it is returned (waveforms only; 0 otherwise).
    lookahead: usize,
    /// Whether each window's waveform is kept (`with_waveforms`).
    keep_waveforms: bool,
    /// The waveform of the window last returned, until taken.
    waveform: Option<Vec<f32>>,
}

/// Opens `source` and streams the log-mel spectrogram of each of its windows.
pub fn log_mel_windows<'a>(
    source: &AudioSource<'a>,
    front_end: &FrontEnd,
    windowing: &Windowing,
) -> Result<LogMelWindows<'a>> {
    LogMelWindows::new(source, Arc::new(MelExtractor::new(front_end)?), windowing)
}

impl<'a> LogMelWindows<'a> {
    /// Same as `log_mel_windows`, sharing an extractor built once for many files.
    pub fn new(
        source: &AudioSource<'a>,
        mel: Arc<MelExtractor>,
        windowing: &Windowing,
    ) -> Result<LogMelWindows<'a>> {
        LogMelWindows::with_options(source, DecodeOptions::default(), mel, windowing)
    }

    /// Same as `new`, decoding with `options`.
    pub fn with_options(
        source: &AudioSource<'a>,
        options: DecodeOptions,
        mel: Arc<MelExtractor>,
        windowing: &Windowing,
    ) -> Result<LogMelWindows<'a>> {
        let plan = WindowPlan::new(windowing, mel.sample_rate())?;
        let decoder = Decoder::open_with(*source, options)?;
        let resampler = StreamResampler::new(decoder.info().sample_rate, mel.sample_rate())?;
        Ok(LogMelWindows {
            decoder,
            resampler,
            mel,
            plan,
            buf: Vec::with_capacity(plan.clip_samples),
            pending: Vec::new(),
            pending_pos: 0,
            skip: 0,
            start: 0,
            last_bounds: None,
            windows: 0,
            resampled: 0,
            eof: false,
            done: false,
            max_buffered: 0,
            lookahead: 0,
            keep_waveforms: false,
            waveform: None,
        })
    }

    /// Also keeps each window's waveform (`window_waveform`: `frames * hop_length` samples from
    /// the window's start, zero-filled past the end of the file), to be read with
    /// `take_waveform` after each window. Reads up to one hop past a window before returning it.
    pub fn with_waveforms(mut self) -> LogMelWindows<'a> {
        let clip = self.plan.clip_samples;
        let needed = self.mel.frames(clip) * self.mel.hop_length();
        self.lookahead = needed.saturating_sub(clip);
        self.keep_waveforms = true;
        self
    }

    /// The waveform of the window last returned (`None` without `with_waveforms`, before the
    /// first window, or when already taken).
    pub fn take_waveform(&mut self) -> Option<Vec<f32>> {
        self.waveform.take()
    }

    /// The file's headers.
    pub fn info(&self) -> &AudioInfo {
        self.decoder.info()
    }

    pub fn plan(&self) -> WindowPlan {
        self.plan
    }

    /// Sample range (at the model's rate) of the window last returned.
    pub fn last_bounds(&self) -> Option<(u64, u64)> {
        self.last_bounds
    }

    /// Windows returned so far.
    pub fn windows(&self) -> usize {
        self.windows
    }

    /// Resampled samples decoded so far (the signal's length, once the iterator is done).
    pub fn samples(&self) -> u64 {
        self.resampled
    }

    /// The most samples held at once (current window + resampled chunk not yet taken): stays
    /// below one window plus one packet (plus one hop with waveforms), however long the file.
    pub fn max_buffered_samples(&self) -> usize {
        self.max_buffered
    }

    /// Decodes and resamples the next packet into `pending`; `false` at the end of the stream.
    fn refill(&mut self) -> Result<bool> {
        self.pending.clear();
        self.pending_pos = 0;
        if self.eof {
            return Ok(false);
        }
        match self.decoder.next_mono_chunk()? {
            Some(chunk) => self.resampler.process(&chunk, &mut self.pending)?,
            None => {
                self.resampler.finish(&mut self.pending)?;
                self.eof = true;
            }
        }
        self.resampled += self.pending.len() as u64;
        self.max_buffered = self.max_buffered.max(self.buf.len() + self.pending.len());
        Ok(true)
    }

    /// Returns the window of the first `len` samples of `buf` (and keeps its waveform).
    fn emit(&mut self, len: usize) -> LogMel {
        let end = self.start + len as u64;
        self.last_bounds = Some((self.start, end));
        self.windows += 1;
        let log_mel = self.mel.compute(&self.buf[..len]);
        if self.keep_waveforms {
            // `buf` holds the window and the lookahead, or everything up to the end of the file.
            self.waveform = Some(window_waveform(
                &self.buf,
                0,
                log_mel.frames,
                self.mel.hop_length(),
            ));
        }
        log_mel
    }

    fn step(&mut self) -> Result<Option<LogMel>> {
        let (clip, hop) = (self.plan.clip_samples, self.plan.hop_samples);
        let target = clip + self.lookahead;
        while self.buf.len() < target {
            if self.pending_pos == self.pending.len() {
                if !self.refill()? {
                    break;
                }
                continue;
            }
            let avail = self.pending.len() - self.pending_pos;
            if self.skip > 0 {
                let k = self.skip.min(avail);
                self.skip -= k;
                self.pending_pos += k;
                continue;
            }
            let take = (target - self.buf.len()).min(avail);
            self.buf
                .extend_from_slice(&self.pending[self.pending_pos..self.pending_pos + take]);
            self.pending_pos += take;
        }
        if self.buf.len() >= clip {
            let out = self.emit(clip);
            if hop <= self.buf.len() {
                self.buf.drain(..hop);
            } else {
                self.skip = hop - self.buf.len();
                self.buf.clear();
            }
            self.start += hop as u64;
            return Ok(Some(out));
        }
        // End of the stream with a partial window (or none).
        self.done = true;
        let len = self.buf.len();
        let end = self.start + len as u64;
        let covered = self.last_bounds.is_some_and(|(_, e)| e >= end);
        if len == 0 || covered || (self.windows > 0 && len < self.plan.min_samples) {
            return Ok(None);
        }
        Ok(Some(self.emit(len)))
    }
}

impl Iterator for LogMelWindows<'_> {
    type Item = Result<LogMel>;

    fn next(&mut self) -> Option<Result<LogMel>> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for LogMelWindows<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn windowing(clip: f32, hop: f32, min: f32) -> Windowing {
        Windowing {
            clip_seconds: clip,
            hop_seconds: hop,
            min_seconds: min,
            pooling: "mean".into(),
        }
    }

    #[test]
    fn bounds_without_overlap() {
        let w = windowing(10.0, 10.0, 1.0);
        // 25 s at 100 Hz: two full windows and a 5 s tail.
        assert_eq!(
            window_bounds(2500, 100, &w).unwrap(),
            vec![(0, 1000), (1000, 2000), (2000, 2500)]
        );
        // A 0.5 s tail is shorter than min_seconds: dropped.
        assert_eq!(
            window_bounds(2050, 100, &w).unwrap(),
            vec![(0, 1000), (1000, 2000)]
        );
        // Exactly two windows: no empty third one.
        assert_eq!(
            window_bounds(2000, 100, &w).unwrap(),
            vec![(0, 1000), (1000, 2000)]
        );
        // Shorter than a clip: one window of its own length, even below min_seconds.
        assert_eq!(window_bounds(30, 100, &w).unwrap(), vec![(0, 30)]);
        assert_eq!(window_bounds(1, 100, &w).unwrap(), vec![(0, 1)]);
        assert_eq!(window_bounds(0, 100, &w).unwrap(), vec![]);
        // A tail of exactly min_seconds is kept.
        assert_eq!(
            window_bounds(1100, 100, &w).unwrap(),
            vec![(0, 1000), (1000, 1100)]
        );
    }

    #[test]
    fn bounds_with_overlap_and_gaps() {
        let w = windowing(10.0, 5.0, 1.0);
        // The window reaching the end is the last one: (1500, 2000) would lie inside it.
        assert_eq!(
            window_bounds(2000, 100, &w).unwrap(),
            vec![(0, 1000), (500, 1500), (1000, 2000)]
        );
        assert_eq!(
            window_bounds(2300, 100, &w).unwrap(),
            vec![(0, 1000), (500, 1500), (1000, 2000), (1500, 2300)]
        );
        assert_eq!(
            window_bounds(1550, 100, &w).unwrap(),
            vec![(0, 1000), (500, 1500), (1000, 1550)]
        );
        // With a 9.5 s hop, the window after (0, 1000) starts at 950: 0.5 s < min, dropped.
        let w = windowing(10.0, 9.5, 1.0);
        assert_eq!(window_bounds(1000, 100, &w).unwrap(), vec![(0, 1000)]);
        assert_eq!(window_bounds(1001, 100, &w).unwrap(), vec![(0, 1000)]);
        assert_eq!(
            window_bounds(1050, 100, &w).unwrap(),
            vec![(0, 1000), (950, 1050)]
        );
        let w = windowing(2.0, 5.0, 1.0);
        assert_eq!(
            window_bounds(1100, 100, &w).unwrap(),
            vec![(0, 200), (500, 700), (1000, 1100)]
        );
        assert_eq!(
            window_bounds(1050, 100, &w).unwrap(),
            vec![(0, 200), (500, 700)]
        );
        assert_eq!(
            window_bounds(600, 100, &w).unwrap(),
            vec![(0, 200), (500, 600)]
        );
    }

    #[test]
    fn seconds_round_half_up() {
        let plan = WindowPlan::new(&windowing(0.015625, 0.5, 0.0), 32).unwrap();
        assert_eq!(
            plan,
            WindowPlan {
                clip_samples: 1,
                hop_samples: 16,
                min_samples: 0
            }
        );
        let plan = WindowPlan::new(&Windowing::ten_seconds(), 32000).unwrap();
        assert_eq!(
            plan,
            WindowPlan {
                clip_samples: 320_000,
                hop_samples: 320_000,
                min_samples: 32_000
            }
        );
    }

    #[test]
    fn invalid_windowing_is_refused() {
        for (w, want) in [
            (windowing(0.0, 1.0, 0.0), "clip_seconds is 0"),
            (windowing(1.0, -1.0, 0.0), "hop_seconds is -1"),
            (windowing(1.0, 1.0, f32::NAN), "min_seconds is NaN"),
            (windowing(1e-6, 1.0, 0.0), "at least one sample"),
        ] {
            let e = WindowPlan::new(&w, 16000).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
