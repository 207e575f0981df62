//! Audio embedding: log-mel windows from the shared front-end, `audio.onnx` over batches of
//! windows, mean pooling of a file's windows, L2 normalisation.
//!
//! Memory: `embed` streams, whatever the file's length: it holds one batch of windows
//! (`MAX_BATCH_WINDOWS`) and a running sum of their embeddings, and ONNX Runtime sees batches
//! no larger than a ten-second file's, so its buffers do not grow with the file either.
//! `features` collects a whole file's windows, for callers that batch many short files
//! (`audio_embed_files`); `features_at_most` refuses to collect more than a given number.
//!
//! Cancellation: the long loops take `cancelled: &dyn Fn() -> bool`, called between windows
//! and between encoder runs; when it returns true they stop with `Error::Interrupted`. The
//! SQL layer passes a `sqlite3_interrupt` probe; the audio code knows nothing of SQL.
//!
//! Inputs: the log-mel (`input.name`, layout `input.layout`) and, when the manifest names one
//! (`input.waveform`), each window's resampled samples as float32 `[batch, frames *
//! hop_length]` (see `crate::audio::stream::window_waveform`), for Wavegram-Logmel encoders.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::Tensor;

use crate::audio::{AudioSource, DecodeOptions, LogMel, LogMelWindows, MelExtractor, WindowPlan};
use crate::model::manifest::AudioSection;
use crate::model::runtime::{embeddings_output, Runtime, SessionPlacement};
use crate::{Error, Result};

/// Windows per encoder run at most. Each run's buffers in ONNX Runtime grow with the batch
/// (the default encoder: about 9 MB per window), so a run is kept to what a ten-second file
/// needs (8 windows of 2.3 s every 1.16 s). Measured on a 10 min file (docs/hardening.md): 16
/// was 3% faster for 70 MB more peak memory; the former 32, 10% faster for 240 MB more.
pub const MAX_BATCH_WINDOWS: usize = 8;

/// A cancellation check that never cancels.
pub fn never_cancelled() -> bool {
    false
}

/// Input layouts `audio.onnx` may declare, as the manifest spells them. The first two hold
/// one channel; the third any number (multiscale log-mel), fed from the same row-major data.
pub const LAYOUT_CHANNEL_FIRST: &str = "batch,1,frames,mels";
pub const LAYOUT_PLAIN: &str = "batch,frames,mels";
pub const LAYOUT_FRAMES_CHANNELS: &str = "batch,frames,channels,mels";

/// A loaded audio encoder. Shared by every connection of the process.
pub struct AudioEncoder {
    pub section: AudioSection,
    /// Built once (window, FFT plan, filterbank) and shared by every file and thread.
    mel: Arc<MelExtractor>,
    session: Mutex<Session>,
    pub embedding_dim: usize,
    pub placement: SessionPlacement,
}

/// The features of one file: its windows, their waveforms when the encoder takes them, and
/// its duration at the model's rate.
pub struct FileFeatures {
    pub windows: Vec<LogMel>,
    /// One per window (`window_waveform`) when the bundle has a waveform input; else empty.
    pub waveforms: Vec<Vec<f32>>,
    pub duration_seconds: f64,
}

/// The embedding of a whole file and the length of audio it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEmbedding {
    pub embedding: Vec<f32>,
    /// Samples decoded at the model's rate, in seconds (as `FileFeatures::duration_seconds`).
    pub duration_seconds: f64,
}

impl AudioEncoder {
    pub fn load(
        bundle_dir: &Path,
        section: &AudioSection,
        embedding_dim: usize,
        runtime: &Runtime,
    ) -> Result<Self> {
        check_layout(section)?;
        // Also validates the front-end settings before any file is read.
        let mel = Arc::new(MelExtractor::new(&section.front_end)?);
        let (session, placement) = runtime.session(&bundle_dir.join(&section.onnx))?;
        let has_input = |name: &str| session.inputs().iter().any(|input| input.name() == name);
        if !has_input(&section.input.name) {
            return Err(Error::Bundle(format!(
                "{} has no input named '{}' (manifest audio section); re-export the bundle",
                section.onnx, section.input.name
            )));
        }
        if let Some(waveform) = &section.input.waveform {
            if !has_input(waveform) {
                return Err(Error::Bundle(format!(
                    "{} has no input named '{waveform}' (manifest audio.input.waveform); re-export the bundle, or remove input.waveform if the encoder takes no waveform",
                    section.onnx
                )));
            }
        }
        Ok(AudioEncoder {
            section: section.clone(),
            mel,
            session: Mutex::new(session),
            embedding_dim,
            placement,
        })
    }

    /// Whether the encoder takes each window's waveform besides its log-mel
    /// (`input.waveform`).
    pub fn needs_waveform(&self) -> bool {
        self.section.input.waveform.is_some()
    }

    /// The front-end this encoder computes features with (window, FFT plan, filterbank).
    pub fn mel(&self) -> &Arc<MelExtractor> {
        &self.mel
    }

    /// Decodes and windows one file; pure CPU work, safe to run on many threads at once.
    /// Keeps each window's waveform when the encoder takes one. Holds every window of the file:
    /// for long files, `embed` streams instead.
    pub fn features(&self, source: &AudioSource<'_>) -> Result<FileFeatures> {
        self.features_at_most(
            source,
            DecodeOptions::default(),
            usize::MAX,
            &never_cancelled,
        )?
        .ok_or_else(|| Error::Other("internal error: unbounded features stopped".into()))
    }

    /// Same as `features`, but `None` as soon as the file has more than `max_windows` windows
    /// (the caller then streams it with `embed`), so that no more than that is ever held.
    /// Checks `cancelled` between windows.
    pub fn features_at_most(
        &self,
        source: &AudioSource<'_>,
        options: DecodeOptions,
        max_windows: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<FileFeatures>> {
        let mut stream = self.windows(source, options, None)?;
        let mut windows = Vec::new();
        let mut waveforms = Vec::new();
        loop {
            if cancelled() {
                return Err(self.interrupted(&stream));
            }
            let Some(window) = stream.next() else { break };
            if windows.len() == max_windows {
                return Ok(None);
            }
            windows.push(window?);
            if let Some(waveform) = stream.take_waveform() {
                waveforms.push(waveform);
            }
        }
        if windows.is_empty() {
            return Err(no_samples(source));
        }
        Ok(Some(FileFeatures {
            windows,
            waveforms,
            duration_seconds: self.seconds(&stream),
        }))
    }

    /// Bytes of features one full window holds in `FileFeatures` (log-mel, and waveform when
    /// the encoder takes one): what `features_at_most` callers budget with.
    pub fn window_feature_bytes(&self) -> usize {
        let clip = WindowPlan::new(&self.section.windowing, self.mel.sample_rate())
            .map_or(0, |plan| plan.clip_samples);
        let frames = self.mel.frames(clip);
        let waveform = if self.needs_waveform() {
            frames * self.mel.hop_length()
        } else {
            0
        };
        (frames * self.mel.values_per_frame() + waveform) * std::mem::size_of::<f32>()
    }

    /// The window stream of `source` with this encoder's front-end (and waveforms if it takes
    /// them); `hop_seconds` replaces the manifest's hop (the window's length is the model's).
    fn windows<'a>(
        &self,
        source: &AudioSource<'a>,
        options: DecodeOptions,
        hop_seconds: Option<f32>,
    ) -> Result<LogMelWindows<'a>> {
        let mut windowing = self.section.windowing.clone();
        if let Some(hop) = hop_seconds {
            windowing.hop_seconds = hop;
        }
        let stream = LogMelWindows::with_options(source, options, self.mel.clone(), &windowing)?;
        Ok(if self.needs_waveform() {
            stream.with_waveforms()
        } else {
            stream
        })
    }

    /// The length of the model's analysis window, in seconds.
    pub fn window_seconds(&self) -> f32 {
        self.section.windowing.clip_seconds
    }

    /// The model's hop between windows, in seconds.
    pub fn hop_seconds(&self) -> f32 {
        self.section.windowing.hop_seconds
    }

    /// Seconds of audio `stream` has decoded, at the model's rate.
    fn seconds(&self, stream: &LogMelWindows<'_>) -> f64 {
        stream.samples() as f64 / f64::from(self.section.front_end.sample_rate)
    }

    fn interrupted(&self, stream: &LogMelWindows<'_>) -> Error {
        Error::Interrupted {
            seconds_done: self.seconds(stream),
            seconds_total: stream.info().duration_seconds,
        }
    }

    /// Frames the encoder needs at least (its poolings shrink time 2^k-fold), from the
    /// manifest's `encoder.min_frames`; 1 when it does not say.
    fn min_frames(&self) -> usize {
        let declared = self
            .section
            .encoder
            .as_ref()
            .and_then(|e| e.get("min_frames"))
            .and_then(|v| v.as_u64());
        declared.map_or(1, |n| n.max(1) as usize)
    }

    /// The log-mel value of silence, as the front-end computes it (`FrontEnd::silence_value`).
    fn silence_value(&self) -> f32 {
        self.section.front_end.silence_value()
    }

    /// Embeds windows in batches of equal length; returns one embedding per window, in order.
    /// A window shorter than the encoder's minimum is padded at the end with silence.
    ///
    /// For encoders without a waveform input. An encoder that takes waveforms
    /// (`needs_waveform`) returns an error here: use `embed_windows_with_waveforms` or
    /// `embed_features`.
    pub fn embed_windows(&self, windows: &[&LogMel]) -> Result<Vec<Vec<f32>>> {
        self.embed_impl(windows, None, &never_cancelled)
    }

    /// Same as `embed_windows`, with each window's waveform (`window_waveform`: `frames *
    /// hop_length` samples from the window's start, zero-filled past the end of the file).
    /// `waveforms` has one entry per window; it is ignored when the encoder takes no waveform.
    /// A window padded to the encoder's minimum frames has its waveform zero-padded to match.
    pub fn embed_windows_with_waveforms(
        &self,
        windows: &[&LogMel],
        waveforms: &[&[f32]],
    ) -> Result<Vec<Vec<f32>>> {
        self.embed_impl(windows, Some(waveforms), &never_cancelled)
    }

    /// The embeddings of every window of `files`, file by file, in order (what `features`
    /// computed, waveforms included when the encoder takes them).
    pub fn embed_features(&self, files: &[&FileFeatures]) -> Result<Vec<Vec<f32>>> {
        self.embed_features_cancellable(files, &never_cancelled)
    }

    /// Same as `embed_features`, checking `cancelled` before each encoder run
    /// (`Error::Interrupted` with `seconds_done` 0: the caller counts its own progress).
    pub fn embed_features_cancellable(
        &self,
        files: &[&FileFeatures],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Vec<f32>>> {
        let windows: Vec<&LogMel> = files.iter().flat_map(|f| f.windows.iter()).collect();
        if !self.needs_waveform() {
            return self.embed_impl(&windows, None, cancelled);
        }
        let waveforms: Vec<&[f32]> = files
            .iter()
            .flat_map(|f| f.waveforms.iter().map(Vec::as_slice))
            .collect();
        self.embed_impl(&windows, Some(&waveforms), cancelled)
    }

    fn embed_impl(
        &self,
        windows: &[&LogMel],
        waveforms: Option<&[&[f32]]>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Vec<f32>>> {
        let hop = self.mel.hop_length();
        let waveforms = match (&self.section.input.waveform, waveforms) {
            (None, _) => None,
            (Some(name), None) => {
                return Err(Error::Other(format!(
                    "{} takes each window's waveform (input '{name}', manifest audio.input.waveform), and only log-mels were given; embed files, or pass each window's samples (embed_windows_with_waveforms)",
                    self.section.onnx
                )))
            }
            (Some(_), Some(w)) if w.len() != windows.len() => {
                return Err(Error::Other(format!(
                    "{} windows and {} waveforms were given: pass one waveform per window",
                    windows.len(),
                    w.len()
                )))
            }
            (Some(_), Some(w)) => Some(w),
        };
        let row = self.mel.values_per_frame();
        for (i, w) in windows.iter().enumerate() {
            if w.n_mels != row || w.data.len() != w.frames * w.n_mels {
                return Err(Error::Other(format!(
                    "window {i} has {} values per frame ({} values for {} frames), while this encoder's front-end gives {row} ({} channels x {} mel bands); compute the log-mel with the bundle's audio settings",
                    w.n_mels,
                    w.data.len(),
                    w.frames,
                    self.mel.channels(),
                    self.mel.n_mels()
                )));
            }
            if let Some(waveforms) = waveforms {
                if waveforms[i].len() != w.frames * hop {
                    return Err(Error::Other(format!(
                        "window {i} has {} frames, so its waveform must hold {} samples (frames x hop_length {hop}), and it holds {}",
                        w.frames,
                        w.frames * hop,
                        waveforms[i].len()
                    )));
                }
            }
        }
        let min_frames = self.min_frames();
        let padded: Vec<Option<LogMel>> = windows
            .iter()
            .map(|w| {
                (w.frames < min_frames).then(|| pad_frames(w, min_frames, self.silence_value()))
            })
            .collect();
        let windows: Vec<&LogMel> = windows
            .iter()
            .zip(&padded)
            .map(|(w, p)| p.as_ref().unwrap_or(w))
            .collect();
        let padded_waves: Vec<Option<Vec<f32>>> = match waveforms {
            Some(waveforms) => waveforms
                .iter()
                .zip(&windows)
                .map(|(wave, w)| {
                    (wave.len() < w.frames * hop).then(|| {
                        let mut v = wave.to_vec();
                        v.resize(w.frames * hop, 0.0);
                        v
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        let waveforms: Option<Vec<&[f32]>> = waveforms.map(|waveforms| {
            waveforms
                .iter()
                .zip(&padded_waves)
                .map(|(&wave, p)| p.as_deref().unwrap_or(wave))
                .collect()
        });
        let windows = windows.as_slice();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; windows.len()];
        let frames: Vec<usize> = windows.iter().map(|w| w.frames).collect();
        for batch in equal_length_batches(&frames, MAX_BATCH_WINDOWS) {
            if cancelled() {
                return Err(Error::Interrupted {
                    seconds_done: 0.0,
                    seconds_total: None,
                });
            }
            let batch = batch.as_slice();
            let mels: Vec<&LogMel> = batch.iter().map(|&i| windows[i]).collect();
            let waves: Option<Vec<&[f32]>> = waveforms
                .as_ref()
                .map(|w| batch.iter().map(|&i| w[i]).collect());
            let embeddings = self.run(&mels, waves.as_deref())?;
            for (&i, embedding) in batch.iter().zip(embeddings) {
                out[i] = Some(embedding);
            }
        }
        out.into_iter()
            .map(|e| {
                e.ok_or_else(|| Error::Other("internal error: a window was not embedded".into()))
            })
            .collect()
    }

    /// The embedding of a whole file: its windows' embeddings averaged, then L2-normalised.
    pub fn embed(&self, source: &AudioSource<'_>) -> Result<Vec<f32>> {
        Ok(self
            .embed_cancellable(source, DecodeOptions::default(), &never_cancelled)?
            .embedding)
    }

    /// Same as `embed`, streaming: windows go through the encoder a batch at a time
    /// (`MAX_BATCH_WINDOWS`) and their embeddings are summed as they come, in file order, so the
    /// result is `pool` of all of them and memory does not depend on the file's length. Checks
    /// `cancelled` before each window.
    pub fn embed_cancellable(
        &self,
        source: &AudioSource<'_>,
        options: DecodeOptions,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<FileEmbedding> {
        let mut sum = MeanPool::default();
        let duration_seconds =
            self.for_each_window(source, options, None, cancelled, &mut |window| {
                sum.add(&window.embedding);
                Ok(())
            })?;
        Ok(FileEmbedding {
            embedding: sum.finish(),
            duration_seconds,
        })
    }

    /// Every analysis window of `source` with its raw embedding and its place in the file, in
    /// file order, handed to `on_window` a batch at a time as the encoder produces them: memory
    /// does not depend on the file's length. `hop_seconds` replaces the manifest's hop (the
    /// window's length is the model's). Checks `cancelled` before each window; returns the
    /// seconds of audio read, or the "no audio samples" error when there was no window at all.
    pub fn for_each_window(
        &self,
        source: &AudioSource<'_>,
        options: DecodeOptions,
        hop_seconds: Option<f32>,
        cancelled: &dyn Fn() -> bool,
        on_window: &mut dyn FnMut(WindowEmbedding) -> Result<()>,
    ) -> Result<f64> {
        let mut stream = self.windows(source, options, hop_seconds)?;
        let mut any = false;
        let rate = f64::from(self.section.front_end.sample_rate);
        let mut windows: Vec<LogMel> = Vec::with_capacity(MAX_BATCH_WINDOWS);
        let mut bounds: Vec<(f64, f64)> = Vec::with_capacity(MAX_BATCH_WINDOWS);
        let mut waveforms: Vec<Vec<f32>> = Vec::new();
        loop {
            if cancelled() {
                return Err(self.interrupted(&stream));
            }
            let window = stream.next().transpose()?;
            let end = window.is_none();
            if let Some(window) = window {
                any = true;
                windows.push(window);
                let (start, stop) = stream.last_bounds().unwrap_or((0, 0));
                bounds.push((start as f64 / rate, stop as f64 / rate));
                waveforms.extend(stream.take_waveform());
            }
            if windows.len() == MAX_BATCH_WINDOWS || (end && !windows.is_empty()) {
                let mels: Vec<&LogMel> = windows.iter().collect();
                let waves: Vec<&[f32]> = waveforms.iter().map(Vec::as_slice).collect();
                let waves = self.needs_waveform().then_some(waves.as_slice());
                // An interruption between encoder runs says how far the file got, like one
                // between windows.
                let embeddings = match self.embed_impl(&mels, waves, cancelled) {
                    Err(Error::Interrupted { .. }) => return Err(self.interrupted(&stream)),
                    other => other?,
                };
                for (embedding, (start, end)) in embeddings.into_iter().zip(bounds.drain(..)) {
                    on_window(WindowEmbedding {
                        start,
                        end,
                        embedding,
                    })?;
                }
                windows.clear();
                waveforms.clear();
            }
            if end {
                break;
            }
        }
        if !any {
            return Err(no_samples(source));
        }
        Ok(self.seconds(&stream))
    }

    /// One encoder run over windows of equal frame count (and their waveforms, of equal length).
    fn run(&self, batch: &[&LogMel], waveforms: Option<&[&[f32]]>) -> Result<Vec<Vec<f32>>> {
        let frames = batch[0].frames;
        let row = batch[0].n_mels;
        let mut data = Vec::with_capacity(batch.len() * frames * row);
        for window in batch {
            data.extend_from_slice(&window.data);
        }
        let (b, t) = (batch.len() as i64, frames as i64);
        let (channels, bands) = (self.mel.channels() as i64, self.mel.n_mels() as i64);
        let shape: Vec<i64> = match self.section.input.layout.as_str() {
            LAYOUT_CHANNEL_FIRST => vec![b, 1, t, row as i64],
            LAYOUT_FRAMES_CHANNELS => vec![b, t, channels, bands],
            _ => vec![b, t, row as i64],
        };
        let mut inputs =
            ort::inputs![self.section.input.name.as_str() => Tensor::from_array((shape, data))?];
        if let (Some(name), Some(waveforms)) = (&self.section.input.waveform, waveforms) {
            let samples = waveforms[0].len();
            let mut wave = Vec::with_capacity(batch.len() * samples);
            for w in waveforms {
                wave.extend_from_slice(w);
            }
            inputs.push((
                name.as_str().into(),
                Tensor::from_array((vec![b, samples as i64], wave))?.into(),
            ));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(inputs)?;
        embeddings_output(
            &outputs,
            &self.section.onnx,
            &self.section.output,
            batch.len(),
            self.embedding_dim,
        )
    }
}

/// Refuses layouts this build cannot feed, and one-channel layouts for a multiscale front-end.
fn check_layout(section: &AudioSection) -> Result<()> {
    let layout = section.input.layout.as_str();
    let channels = section.front_end.channels();
    match layout {
        LAYOUT_FRAMES_CHANNELS => Ok(()),
        LAYOUT_CHANNEL_FIRST | LAYOUT_PLAIN if channels > 1 => Err(Error::Bundle(format!(
            "audio input layout '{layout}' holds one channel, while the front-end has {channels} (win_length and {} multiscale_win_lengths); declare input.layout '{LAYOUT_FRAMES_CHANNELS}' (re-export the bundle), or remove multiscale_win_lengths",
            channels - 1
        ))),
        LAYOUT_CHANNEL_FIRST | LAYOUT_PLAIN => Ok(()),
        other => Err(Error::Bundle(format!(
            "audio input layout '{other}' is not supported; use '{LAYOUT_CHANNEL_FIRST}', '{LAYOUT_PLAIN}' or '{LAYOUT_FRAMES_CHANNELS}'"
        ))),
    }
}

/// `window` extended to `frames` frames with `value` in every new cell.
fn pad_frames(window: &LogMel, frames: usize, value: f32) -> LogMel {
    let mut data = window.data.clone();
    data.resize(frames * window.n_mels, value);
    LogMel {
        frames,
        n_mels: window.n_mels,
        data,
    }
}

fn no_samples(source: &AudioSource<'_>) -> Error {
    Error::Audio(format!("{} contains no audio samples", source.describe()))
}

/// One analysis window's embedding (as the encoder gives it, before any normalisation) and its
/// place in the file, in seconds.
pub struct WindowEmbedding {
    pub start: f64,
    pub end: f64,
    pub embedding: Vec<f32>,
}

/// The indices of windows of `frames[i]` frames, in batches of one length (a graph's batch is
/// one tensor) of at most `max_batch`: shortest first, and in the given order within a length.
pub fn equal_length_batches(frames: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.sort_by_key(|&i| frames[i]);
    order
        .chunk_by(|&a, &b| frames[a] == frames[b])
        .flat_map(|group| group.chunks(max_batch.max(1)))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Mean of the window embeddings, L2-normalised (the manifest's `windowing.pooling = "mean"`).
pub fn pool(embeddings: &[Vec<f32>]) -> Vec<f32> {
    let mut sum = MeanPool::default();
    embeddings.iter().for_each(|e| sum.add(e));
    sum.finish()
}

/// `pool` one embedding at a time: the same sums in the same order, so the same bits.
/// (The mean's 1/n cancels in the L2 normalisation: only the sum is kept.)
#[derive(Debug, Default)]
pub struct MeanPool {
    sum: Vec<f32>,
    count: usize,
}

impl MeanPool {
    pub fn add(&mut self, embedding: &[f32]) {
        if self.count == 0 {
            self.sum = vec![0f32; embedding.len()];
        }
        for (m, x) in self.sum.iter_mut().zip(embedding) {
            *m += x;
        }
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The sum, L2-normalised.
    pub fn finish(mut self) -> Vec<f32> {
        let norm = self
            .sum
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(1e-12);
        self.sum.iter_mut().for_each(|m| *m /= norm);
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::{equal_length_batches, pool};

    #[test]
    fn batches_share_one_length_and_keep_order_within_it() {
        let frames = [5, 3, 5, 5, 3, 9];
        assert_eq!(
            equal_length_batches(&frames, 2),
            vec![vec![1, 4], vec![0, 2], vec![3], vec![5]]
        );
        assert_eq!(equal_length_batches(&[], 4), Vec::<Vec<usize>>::new());
        // A zero limit still makes progress, one window a batch.
        assert_eq!(equal_length_batches(&[1, 1], 0), vec![vec![0], vec![1]]);
    }

    #[test]
    fn pooling_averages_then_normalises() {
        let pooled = pool(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        let expected = std::f32::consts::FRAC_1_SQRT_2;
        assert!((pooled[0] - expected).abs() < 1e-7 && (pooled[1] - expected).abs() < 1e-7);
        assert_eq!(pool(&[vec![0.0, 3.0]]), vec![0.0, 1.0]);
    }
}

/// Encoders with a waveform input and multiscale layouts, run for real: small ONNX graphs built
/// with the crate's own writer, whose "embedding" is a few reductions of the inputs, compared
/// with the same reductions computed here from the decoded samples.
#[cfg(test)]
mod input_tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::audio::config::{FrontEnd, Windowing};
    use crate::audio::stream::{decode_mono, window_bounds, window_waveform};
    use crate::model::manifest::AudioInput;
    use crate::model::runtime::{loaded_runtime, runtime_from};
    use audiotext_onnx::{AttributeProto, DataType, Dim, GraphBuilder, ModelInfo, TensorProto};

    const OPSET: i64 = 17;

    /// The process's ONNX Runtime: the one loaded, else dist/libonnxruntime.so; `None` (the
    /// test skips, saying so) when neither exists.
    fn runtime() -> Option<&'static Runtime> {
        if let Some(rt) = loaded_runtime() {
            return Some(rt);
        }
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join("dist/libonnxruntime.so");
        if !path.is_file() {
            eprintln!(
                "SKIPPED: {} is absent (scripts/build.sh fetches it)",
                path.display()
            );
            return None;
        }
        Some(runtime_from(&path).expect("dist/libonnxruntime.so loads"))
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("audiotext-encoder-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn front_end() -> FrontEnd {
        FrontEnd {
            sample_rate: 8000,
            n_fft: 256,
            win_length: 256,
            hop_length: 80,
            n_mels: 16,
            fmin: 0.0,
            fmax: 4000.0,
            ..FrontEnd::panns_32k()
        }
    }

    fn section(front_end: FrontEnd, layout: &str, waveform: Option<&str>) -> AudioSection {
        AudioSection {
            onnx: "audio.onnx".into(),
            front_end,
            windowing: Windowing {
                clip_seconds: 1.0,
                hop_seconds: 1.0,
                min_seconds: 0.25,
                pooling: "mean".into(),
            },
            input: AudioInput {
                name: "log_mel".into(),
                layout: layout.into(),
                waveform: waveform.map(str::to_string),
            },
            output: "embedding".into(),
            encoder: Some(serde_json::json!({ "min_frames": 64 })),
            quantization: None,
        }
    }

    /// `[batch] -> [batch, 1]`.
    fn column(g: &mut GraphBuilder, x: &str) -> String {
        g.unsqueeze(x, &[1])
    }

    /// A graph with input `log_mel` (rank 4) and, when `waveform` is set, that input
    /// `[batch, samples]`; its embedding is [mean of log_mel, mean of log_mel's channel 1 on
    /// axis 2 (multiscale layout only), sum of the waveform, max |waveform|, samples].
    fn write_model(dir: &Path, layout: &str, waveform: Option<&str>) {
        let mut g = GraphBuilder::new("probe", OPSET);
        let dims4: Vec<Dim> = layout.split(',').map(Dim::from).collect();
        let dims4: Vec<Dim> = dims4
            .into_iter()
            .map(|d| match d {
                Dim::Symbolic(s) if s == "1" => Dim::Fixed(1),
                d => d,
            })
            .collect();
        let x = g.input("log_mel", DataType::Float, &dims4);
        let rank = dims4.len() as i64;
        let all: Vec<i64> = (1..rank).collect();
        let mean = g.reduce("ReduceMean", &x, &all, false);
        let mut columns = vec![column(&mut g, &mean)];
        if layout == LAYOUT_FRAMES_CHANNELS {
            let one = g.initializer(TensorProto::from_i64("one", &[], &[1]));
            let ch1 = g.node("Gather", &[&x, &one], vec![AttributeProto::int("axis", 2)]);
            let m1 = g.reduce("ReduceMean", &ch1, &[1, 2], false);
            columns.push(column(&mut g, &m1));
        }
        if let Some(name) = waveform {
            let w = g.input(
                name,
                DataType::Float,
                &[Dim::from("batch"), Dim::from("samples")],
            );
            let sum = g.reduce("ReduceSum", &w, &[1], false);
            let abs = g.node("Abs", &[&w], vec![]);
            let max = g.reduce("ReduceMax", &abs, &[1], false);
            let zero = g.scalar_f32("zero", 0.0);
            let one = g.scalar_f32("one", 1.0);
            let zeros = g.node("Mul", &[&w, &zero], vec![]);
            let ones = g.node("Add", &[&zeros, &one], vec![]);
            let count = g.reduce("ReduceSum", &ones, &[1], false);
            for v in [sum, max, count] {
                columns.push(column(&mut g, &v));
            }
        }
        let refs: Vec<&str> = columns.iter().map(String::as_str).collect();
        g.node_to(
            "Concat",
            &refs,
            vec![AttributeProto::int("axis", 1)],
            &["embedding"],
        );
        g.output(
            "embedding",
            DataType::Float,
            &[Dim::from("batch"), Dim::Fixed(columns.len() as i64)],
        );
        let model = g.finish(ModelInfo::default());
        std::fs::write(dir.join("audio.onnx"), model.to_bytes()).unwrap();
    }

    /// A mono IEEE-float WAV: decoded exactly, at the model's rate (no resampling).
    fn float_wav(samples: &[f32], rate: u32) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&((4 + 8 + 16 + 8 + data.len()) as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&3u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 4).to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&32u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    fn signal(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let noise = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                0.3 * noise + 0.5 * (i as f32 * 0.07).sin() + 0.1
            })
            .collect()
    }

    fn close(a: f32, b: f64, tol: f64, what: &str) {
        assert!(
            (a as f64 - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: ONNX {a}, expected {b}"
        );
    }

    #[test]
    fn waveform_input_gets_each_windows_samples() {
        let Some(rt) = runtime() else { return };
        let dir = TempDir::new("waveform");
        write_model(&dir.0, LAYOUT_CHANNEL_FIRST, Some("waveform"));
        let section = section(front_end(), LAYOUT_CHANNEL_FIRST, Some("waveform"));
        let encoder = AudioEncoder::load(&dir.0, &section, 4, rt).unwrap();
        assert!(encoder.needs_waveform());
        let mel = MelExtractor::new(&section.front_end).unwrap();
        let hop = 80;
        // Three full windows (the waveform of each runs one hop into the next window), a short
        // last one (38 frames: padded to min_frames 64, its waveform zero-filled past the end),
        // and a file shorter than min_frames on its own.
        for (n, seed) in [(3 * 8000 + 3000, 1u64), (1000, 2), (16_000, 3)] {
            let x = signal(n, seed);
            let wav = float_wav(&x, 8000);
            let source = AudioSource::Bytes(&wav);
            assert_eq!(decode_mono(&source, 8000).unwrap(), x);
            let features = encoder.features(&source).unwrap();
            let bounds = window_bounds(n, 8000, &section.windowing).unwrap();
            assert_eq!(features.windows.len(), bounds.len());
            assert_eq!(features.waveforms.len(), bounds.len());
            let refs: Vec<&FileFeatures> = vec![&features];
            let embeddings = encoder.embed_features(&refs).unwrap();
            for (k, &(s, e)) in bounds.iter().enumerate() {
                let lm = mel.compute(&x[s..e]);
                assert_eq!(features.windows[k], lm, "window {k} of {n}");
                let want = window_waveform(&x, s, lm.frames, hop);
                assert_eq!(features.waveforms[k], want, "waveform {k} of {n}");
                // The contract, restated: x[s .. s + T*hop], zero past the end of the file.
                let end = s + lm.frames * hop;
                assert_eq!(&want[..end.min(n) - s], &x[s..end.min(n)]);
                assert!(want[end.min(n) - s..].iter().all(|&v| v == 0.0));

                let t = lm.frames.max(64);
                let mean = padded_mean(&lm);
                let sum: f64 = want.iter().map(|&v| v as f64).sum();
                let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let got = &embeddings[k];
                close(got[0], mean, 1e-5, "mean log-mel");
                close(got[1], sum, 1e-4, "waveform sum");
                assert_eq!(got[2], max, "max |waveform|");
                assert_eq!(got[3], (t * hop) as f32, "waveform length");
            }
            if n == 1000 {
                assert_eq!(features.windows[0].frames, 13);
                assert_eq!(embeddings[0][3], (64 * hop) as f32);
            }
            if n == 3 * 8000 + 3000 {
                assert_eq!(bounds.len(), 4);
                assert_eq!(features.windows[3].frames, 38);
                // A full window's waveform holds 80 samples of the next window.
                assert_eq!(features.waveforms[0].len(), 8080);
                assert_eq!(&features.waveforms[0][8000..], &x[8000..8080]);
            }
            // Whole-file embedding: the windows' embeddings pooled.
            assert_eq!(encoder.embed(&source).unwrap(), pool(&embeddings));
            // The same through the explicit-waveform path.
            let mels: Vec<&LogMel> = features.windows.iter().collect();
            let waves: Vec<&[f32]> = features.waveforms.iter().map(Vec::as_slice).collect();
            assert_eq!(
                encoder.embed_windows_with_waveforms(&mels, &waves).unwrap(),
                embeddings
            );
        }

        // Log-mel alone, a missing waveform, a wrong length: errors, not panics.
        let x = signal(4000, 4);
        let lm = mel.compute(&x);
        let err = encoder.embed_windows(&[&lm]).unwrap_err().to_string();
        assert!(err.contains("takes each window's waveform"), "{err}");
        let err = encoder
            .embed_windows_with_waveforms(&[&lm, &lm], &[&x])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 windows and 1 waveforms"), "{err}");
        let err = encoder
            .embed_windows_with_waveforms(&[&lm], &[&x])
            .unwrap_err()
            .to_string();
        assert!(err.contains("must hold 4080 samples"), "{err}");
        let narrow = LogMel {
            frames: 2,
            n_mels: 8,
            data: vec![0.0; 16],
        };
        let err = encoder
            .embed_windows_with_waveforms(&[&narrow], &[&[0.0; 160]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 8 values per frame"), "{err}");
    }

    #[test]
    fn waveform_bounds_follow_the_stream_with_overlap_and_gaps() {
        let fe = front_end();
        let mel = std::sync::Arc::new(MelExtractor::new(&fe).unwrap());
        let x = signal(8000 * 4 + 1234, 5);
        let wav = float_wav(&x, 8000);
        for (clip, hop, min) in [
            (1.0, 0.5, 0.25),
            (0.5, 0.8, 0.1),
            (1.0, 1.0, 0.0),
            (0.3, 0.3, 0.3),
        ] {
            let windowing = Windowing {
                clip_seconds: clip,
                hop_seconds: hop,
                min_seconds: min,
                pooling: "mean".into(),
            };
            let bounds = window_bounds(x.len(), 8000, &windowing).unwrap();
            let mut stream = LogMelWindows::new(&AudioSource::Bytes(&wav), mel.clone(), &windowing)
                .unwrap()
                .with_waveforms();
            let mut plain =
                LogMelWindows::new(&AudioSource::Bytes(&wav), mel.clone(), &windowing).unwrap();
            let mut k = 0;
            while let Some(lm) = stream.next() {
                let lm = lm.unwrap();
                let (s, e) = bounds[k];
                assert_eq!(stream.last_bounds(), Some((s as u64, e as u64)));
                // Reading ahead changes no window.
                assert_eq!(plain.next().unwrap().unwrap(), lm);
                assert_eq!(lm, mel.compute(&x[s..e]));
                let wave = stream.take_waveform().unwrap();
                assert_eq!(
                    wave,
                    window_waveform(&x, s, lm.frames, 80),
                    "{clip} {hop} {k}"
                );
                assert!(stream.take_waveform().is_none());
                k += 1;
            }
            assert!(plain.next().is_none());
            assert_eq!(k, bounds.len(), "{clip} {hop}");
            assert!(stream.max_buffered_samples() <= (clip * 8000.0) as usize + 80 + 8000);
        }
    }

    #[test]
    fn multiscale_layout_feeds_channels_in_order() {
        let Some(rt) = runtime() else { return };
        let dir = TempDir::new("multiscale");
        write_model(&dir.0, LAYOUT_FRAMES_CHANNELS, None);
        let fe = FrontEnd {
            multiscale_win_lengths: vec![128, 64],
            ..front_end()
        };
        let section = section(fe.clone(), LAYOUT_FRAMES_CHANNELS, None);
        let encoder = AudioEncoder::load(&dir.0, &section, 2, rt).unwrap();
        let x = signal(8000 + 2500, 6);
        let wav = float_wav(&x, 8000);
        let features = encoder.features(&AudioSource::Bytes(&wav)).unwrap();
        assert!(features.waveforms.is_empty());
        let refs: Vec<&LogMel> = features.windows.iter().collect();
        let embeddings = encoder.embed_windows(&refs).unwrap();
        let single = MelExtractor::new(&FrontEnd {
            win_length: 128,
            ..front_end()
        })
        .unwrap();
        for (k, (s, e)) in [(0usize, 8000usize), (8000, 10_500)]
            .into_iter()
            .enumerate()
        {
            let lm = &features.windows[k];
            assert_eq!(lm.n_mels, 48);
            let mean = padded_mean(lm);
            // Channel 1 (win_length 128), from a single-window extractor.
            let ch1 = single.compute(&x[s..e]);
            let mean1 = padded_mean(&ch1);
            close(embeddings[k][0], mean, 1e-5, "mean");
            close(embeddings[k][1], mean1, 1e-5, "channel 1 mean");
        }
        // The one-channel layouts refuse a multiscale front-end, before loading anything.
        for layout in [LAYOUT_CHANNEL_FIRST, LAYOUT_PLAIN] {
            let err = AudioEncoder::load(&dir.0, &section_with(&fe, layout), 2, rt)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("holds one channel, while the front-end has 3")
                    && err.contains(LAYOUT_FRAMES_CHANNELS),
                "{err}"
            );
        }
    }

    /// The mean of a log-mel padded with silence (-100 dB) to min_frames 64, as the encoder
    /// feeds it.
    fn padded_mean(lm: &LogMel) -> f64 {
        let t = lm.frames.max(64);
        let sum = lm.data.iter().map(|&v| v as f64).sum::<f64>();
        (sum - 100.0 * ((t - lm.frames) * lm.n_mels) as f64) / (t * lm.n_mels) as f64
    }

    fn section_with(fe: &FrontEnd, layout: &str) -> AudioSection {
        section(fe.clone(), layout, None)
    }

    #[test]
    fn missing_waveform_input_fails_at_load() {
        let Some(rt) = runtime() else { return };
        let dir = TempDir::new("missing");
        write_model(&dir.0, LAYOUT_CHANNEL_FIRST, None);
        let err = AudioEncoder::load(
            &dir.0,
            &section(front_end(), LAYOUT_CHANNEL_FIRST, Some("waveform")),
            1,
            rt,
        )
        .err()
        .unwrap();
        assert!(matches!(err, Error::Bundle(_)), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("no input named 'waveform'") && err.contains("input.waveform"),
            "{err}"
        );
        // The same graph without a waveform key loads and embeds log-mel alone.
        let encoder = AudioEncoder::load(
            &dir.0,
            &section(front_end(), LAYOUT_CHANNEL_FIRST, None),
            1,
            rt,
        )
        .unwrap();
        let lm = MelExtractor::new(&front_end())
            .unwrap()
            .compute(&signal(9000, 7));
        let out = encoder.embed_windows(&[&lm]).unwrap();
        close(out[0][0], padded_mean(&lm), 1e-5, "mean");
        // Waveforms given to an encoder without a waveform input are ignored.
        assert_eq!(
            encoder
                .embed_windows_with_waveforms(&[&lm], &[&[1.0; 3]])
                .unwrap(),
            out
        );
    }

    /// Many batches: the streamed embedding is `pool` of every window's, bit for bit; a
    /// cancellation stops it partway and says where; `features_at_most` stops at its limit.
    #[test]
    fn streaming_embed_pools_every_batch_and_stops_when_cancelled() {
        let Some(rt) = runtime() else { return };
        let dir = TempDir::new("streaming");
        write_model(&dir.0, LAYOUT_CHANNEL_FIRST, None);
        let encoder = AudioEncoder::load(
            &dir.0,
            &section(front_end(), LAYOUT_CHANNEL_FIRST, None),
            1,
            rt,
        )
        .unwrap();
        let n = 8000 * (3 * MAX_BATCH_WINDOWS) + 3000;
        let wav = float_wav(&signal(n, 8), 8000);
        let source = AudioSource::Bytes(&wav);
        let features = encoder.features(&source).unwrap();
        assert_eq!(features.windows.len(), 3 * MAX_BATCH_WINDOWS + 1);
        let all: Vec<&LogMel> = features.windows.iter().collect();
        let expected = pool(&encoder.embed_windows(&all).unwrap());
        let streamed = encoder
            .embed_cancellable(&source, DecodeOptions::default(), &never_cancelled)
            .unwrap();
        assert_eq!(streamed.embedding, expected);
        assert_eq!(streamed.duration_seconds, n as f64 / 8000.0);

        let calls = std::cell::Cell::new(0);
        let after_ten = || {
            calls.set(calls.get() + 1);
            calls.get() > 10
        };
        match encoder.embed_cancellable(&source, DecodeOptions::default(), &after_ten) {
            Err(Error::Interrupted {
                seconds_done,
                seconds_total,
            }) => {
                assert!(seconds_done >= 9.0 && seconds_done < 12.0, "{seconds_done}");
                assert_eq!(seconds_total, Some(n as f64 / 8000.0));
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
        // The first check that says stop is the encoder run's, after a full batch of windows:
        // the error still says how far the file got and how long it is.
        let calls = std::cell::Cell::new(0);
        let at_first_run = || {
            calls.set(calls.get() + 1);
            calls.get() > MAX_BATCH_WINDOWS
        };
        match encoder.embed_cancellable(&source, DecodeOptions::default(), &at_first_run) {
            Err(Error::Interrupted {
                seconds_done,
                seconds_total,
            }) => {
                assert!(
                    seconds_done >= MAX_BATCH_WINDOWS as f64 - 1.0,
                    "{seconds_done}"
                );
                assert_eq!(seconds_total, Some(n as f64 / 8000.0));
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
        let windows = features.windows.len();
        assert!(encoder
            .features_at_most(
                &source,
                DecodeOptions::default(),
                windows - 1,
                &never_cancelled
            )
            .unwrap()
            .is_none());
        let at_most = encoder
            .features_at_most(&source, DecodeOptions::default(), windows, &never_cancelled)
            .unwrap()
            .unwrap();
        assert_eq!(at_most.windows, features.windows);
        // Log-mel of one full window (1 s: 101 frames of 16 bands), no waveform.
        assert_eq!(encoder.window_feature_bytes(), 101 * 16 * 4);
    }

    #[test]
    fn unknown_layout_is_refused() {
        let err = check_layout(&section(front_end(), "batch,mels,frames", None))
            .unwrap_err()
            .to_string();
        assert!(err.contains(LAYOUT_FRAMES_CHANNELS), "{err}");
        assert!(check_layout(&section(front_end(), LAYOUT_FRAMES_CHANNELS, None)).is_ok());
    }
}
