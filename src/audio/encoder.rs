//! Audio embedding: log-mel windows from the shared front-end, `audio.onnx` over batches of
//! windows, mean pooling of a file's windows, L2 normalisation.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::Tensor;

use crate::audio::{AudioSource, LogMel, LogMelWindows, MelExtractor};
use crate::model::manifest::AudioSection;
use crate::model::runtime::{embeddings_output, Runtime, SessionPlacement};
use crate::{Error, Result};

/// Input layouts `audio.onnx` may declare, as the manifest spells them.
const LAYOUT_CHANNEL_FIRST: &str = "batch,1,frames,mels";
const LAYOUT_PLAIN: &str = "batch,frames,mels";

/// A loaded audio encoder. Shared by every connection of the process.
pub struct AudioEncoder {
    pub section: AudioSection,
    /// Built once (window, FFT plan, filterbank) and shared by every file and thread.
    mel: Arc<MelExtractor>,
    session: Mutex<Session>,
    pub embedding_dim: usize,
    pub placement: SessionPlacement,
}

/// The features of one file: its windows and its duration at the model's rate.
pub struct FileFeatures {
    pub windows: Vec<LogMel>,
    pub duration_seconds: f64,
}

impl AudioEncoder {
    pub fn load(
        bundle_dir: &Path,
        section: &AudioSection,
        embedding_dim: usize,
        runtime: &Runtime,
    ) -> Result<Self> {
        if section.input.layout != LAYOUT_CHANNEL_FIRST && section.input.layout != LAYOUT_PLAIN {
            return Err(Error::Bundle(format!(
                "audio input layout '{}' is not supported; use '{LAYOUT_CHANNEL_FIRST}' or '{LAYOUT_PLAIN}'",
                section.input.layout
            )));
        }
        // Also validates the front-end settings before any file is read.
        let mel = Arc::new(MelExtractor::new(&section.front_end)?);
        let (session, placement) = runtime.session(&bundle_dir.join(&section.onnx))?;
        if !session
            .inputs()
            .iter()
            .any(|input| input.name() == section.input.name)
        {
            return Err(Error::Bundle(format!(
                "{} has no input named '{}' (manifest audio section); re-export the bundle",
                section.onnx, section.input.name
            )));
        }
        Ok(AudioEncoder {
            section: section.clone(),
            mel,
            session: Mutex::new(session),
            embedding_dim,
            placement,
        })
    }

    /// Decodes and windows one file; pure CPU work, safe to run on many threads at once.
    pub fn features(&self, source: &AudioSource<'_>) -> Result<FileFeatures> {
        let mut stream = LogMelWindows::new(source, self.mel.clone(), &self.section.windowing)?;
        let windows = stream.by_ref().collect::<Result<Vec<LogMel>>>()?;
        if windows.is_empty() {
            return Err(Error::Audio(format!(
                "{} contains no audio samples",
                source.describe()
            )));
        }
        let duration_seconds =
            stream.samples() as f64 / f64::from(self.section.front_end.sample_rate);
        Ok(FileFeatures {
            windows,
            duration_seconds,
        })
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

    /// The log-mel value of silence: the log of the floor, as the front-end computes it.
    fn silence_value(&self) -> f32 {
        let floor = self.section.front_end.log_floor;
        if self.section.front_end.log == "db" {
            10.0 * floor.log10()
        } else {
            floor.ln()
        }
    }

    /// Embeds windows in batches of equal length; returns one embedding per window, in order.
    /// A window shorter than the encoder's minimum is padded at the end with silence.
    pub fn embed_windows(&self, windows: &[&LogMel]) -> Result<Vec<Vec<f32>>> {
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
        let windows = windows.as_slice();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; windows.len()];
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&i| windows[i].frames);
        for group in order.chunk_by(|&a, &b| windows[a].frames == windows[b].frames) {
            for batch in group.chunks(self.max_batch()) {
                let embeddings = self.run(
                    batch
                        .iter()
                        .map(|&i| windows[i])
                        .collect::<Vec<_>>()
                        .as_slice(),
                )?;
                for (&i, embedding) in batch.iter().zip(embeddings) {
                    out[i] = Some(embedding);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|e| e.expect("every window embedded"))
            .collect())
    }

    /// The embedding of a whole file: its windows' embeddings averaged, then L2-normalised.
    pub fn embed(&self, source: &AudioSource<'_>) -> Result<Vec<f32>> {
        let features = self.features(source)?;
        let refs: Vec<&LogMel> = features.windows.iter().collect();
        Ok(pool(&self.embed_windows(&refs)?))
    }

    /// Windows per encoder run: large enough to amortise the call, small enough for memory.
    fn max_batch(&self) -> usize {
        32
    }

    fn run(&self, batch: &[&LogMel]) -> Result<Vec<Vec<f32>>> {
        let frames = batch[0].frames;
        let mels = batch[0].n_mels;
        let mut data = Vec::with_capacity(batch.len() * frames * mels);
        for window in batch {
            data.extend_from_slice(&window.data);
        }
        let shape: Vec<i64> = if self.section.input.layout == LAYOUT_CHANNEL_FIRST {
            vec![batch.len() as i64, 1, frames as i64, mels as i64]
        } else {
            vec![batch.len() as i64, frames as i64, mels as i64]
        };
        let inputs =
            ort::inputs![self.section.input.name.as_str() => Tensor::from_array((shape, data))?];
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

/// Mean of the window embeddings, L2-normalised (the manifest's `windowing.pooling = "mean"`).
pub fn pool(embeddings: &[Vec<f32>]) -> Vec<f32> {
    let dim = embeddings.first().map_or(0, Vec::len);
    let mut mean = vec![0f32; dim];
    for embedding in embeddings {
        for (m, x) in mean.iter_mut().zip(embedding) {
            *m += x;
        }
    }
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    mean.iter_mut().for_each(|m| *m /= norm);
    mean
}

#[cfg(test)]
mod tests {
    use super::pool;

    #[test]
    fn pooling_averages_then_normalises() {
        let pooled = pool(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        let expected = std::f32::consts::FRAC_1_SQRT_2;
        assert!((pooled[0] - expected).abs() < 1e-7 && (pooled[1] - expected).abs() < 1e-7);
        assert_eq!(pool(&[vec![0.0, 3.0]]), vec![0.0, 1.0]);
    }
}
