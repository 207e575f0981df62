//! A run folder (what `fit` writes, `eval` and `export` read), the compute device, ONNX Runtime
//! lookup, and embedding clips with a trained encoder.
//!
//! Run folder:
//! - `config.json`: [`RunConfig`], everything needed to rebuild the model and its inputs;
//! - `metrics.jsonl`: one JSON object per epoch;
//! - `loss.png`, `metrics.png`: plots of the above;
//! - `checkpoints/`: `last.model.bpk` + `last.optim.bpk` + `last.json` (resume point),
//!   `best.model.bpk` + `best.json` (best validation mAP@10), and `epoch-NNN.model.bpk` for
//!   the most recent epochs. `.bpk` files are burn records (burnpack).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cache::Features;
use audiotext_core::audio::{FrontEnd, Windowing};
use audiotext_core::audio_encoder::{equal_length_batches, MeanPool};
use audiotext_core::model::runtime::{self, Runtime};

use crate::model::{input_tensor, to_vec, waveform_tensor, Contrastive, ContrastiveConfig};

pub const CONFIG_FILE: &str = "config.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// Training hyper-parameters (flags of `fit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Learning rate at the end of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Linear warm-up length in epochs (may be fractional).
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Longest training crop in frames (longer clips are cropped at random).
    pub max_frames: usize,
    pub specaug: crate::specaug::SpecAugment,
    /// Gradient norm clipping (0 = off).
    pub clip_grad_norm: f64,
    /// Number of epoch checkpoints to keep besides `last` and `best`.
    pub keep_checkpoints: usize,
    /// The contrastive loss (see `loss.rs`); runs made before it existed used InfoNCE.
    #[serde(default)]
    pub loss: crate::loss::LossSpec,
    /// Mixing two clips with joined captions (off in runs written before it existed).
    #[serde(default)]
    pub mix: crate::mix::MixOptions,
    /// Validate after every N-th epoch and after the last (1 in runs written before it existed).
    #[serde(default = "every_epoch")]
    pub validate_every: usize,
}

fn every_epoch() -> usize {
    1
}

/// Where the data came from and how it was split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub root: PathBuf,
    /// `generic`, `clotho:<split>` or `audiocaps:<split>` (`Layout::describe`).
    pub layout: String,
    /// Clotho: the split used for validation; generic: none (split by recording).
    pub validation_split: Option<String>,
    pub validation_fraction: f64,
    /// Cross-validation: fold `index` of `count` (folds of recordings, class-balanced) is the
    /// validation set instead of `validation_fraction` of the recordings.
    #[serde(default)]
    pub fold: Option<Fold>,
    pub split_seed: u64,
    pub train_clips: usize,
    pub validation_files: Vec<String>,
    /// Licence of the data, read from the dataset's LICENSE file when present.
    pub license: Option<String>,
    /// The share of files that may be undecodable and skipped before the run fails.
    #[serde(default = "default_max_bad_share")]
    pub max_bad_share: f64,
    /// Files that could not be decoded and were left out, with the error of each.
    #[serde(default)]
    pub skipped_files: Vec<SkippedFile>,
}

/// `--max-bad-share` unless a run says otherwise: a bad file in fifty.
pub const DEFAULT_MAX_BAD_SHARE: f64 = 0.02;

fn default_max_bad_share() -> f64 {
    DEFAULT_MAX_BAD_SHARE
}

/// Names the files that cannot be decoded (`bad`: indices into `paths`, with their errors),
/// counts them, and fails when they are more than `max_share` of the data: a run does not
/// lose minutes of work to one bad file, nor train on a folder that is mostly broken.
pub fn check_bad_files(
    bad: &[(usize, String)],
    paths: &[&Path],
    max_share: f64,
) -> Result<Vec<SkippedFile>> {
    if bad.is_empty() {
        return Ok(Vec::new());
    }
    for (i, error) in bad.iter().take(20) {
        eprintln!("skipped: {}: {error}", paths[*i].display());
    }
    if bad.len() > 20 {
        eprintln!("skipped: ... and {} more", bad.len() - 20);
    }
    let share = bad.len() as f64 / paths.len().max(1) as f64;
    println!(
        "skipped: {} of {} files cannot be decoded ({:.1}%)",
        bad.len(),
        paths.len(),
        100.0 * share
    );
    if share > max_share {
        bail!(
            "{} of {} files ({:.1}%) cannot be decoded, more than --max-bad-share {max_share}: \
             fix or remove them (the first: {}: {})",
            bad.len(),
            paths.len(),
            100.0 * share,
            paths[bad[0].0].display(),
            bad[0].1
        );
    }
    Ok(bad
        .iter()
        .map(|(i, error)| SkippedFile {
            file: paths[*i].display().to_string(),
            error: error.clone(),
        })
        .collect())
}

/// A dataset file training left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub file: String,
    pub error: String,
}

/// One fold of a cross-validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    pub index: usize,
    pub count: usize,
}

/// `config.json` of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub format_version: u32,
    pub model: ContrastiveConfig,
    pub train: TrainOptions,
    pub front_end: FrontEnd,
    pub windowing: Windowing,
    pub data: Option<DataInfo>,
    /// The text bundle whose embeddings were the targets.
    pub text_bundle: Option<PathBuf>,
    /// Key of its text encoder (see `crate::cache::text_encoder_key`).
    pub text_key: Option<String>,
    /// The text bundle's name (e.g. all-MiniLM-L6-v2).
    pub text_model: Option<String>,
    /// Pretrained weights the encoder started from (`fit --pretrained`); none for runs that
    /// started from random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<crate::pretrained::PretrainedInfo>,
    /// A `fit-head` run: only the head is in the run folder; the backbone is `pretrained`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadRun>,
}

pub const RUN_FORMAT_VERSION: u32 = 1;

impl RunConfig {
    /// The vector a fit-head run's queries are moved off (`fit-head --text-centre`), if any.
    pub fn query_centre(&self) -> Option<&[f32]> {
        let centre = self.head.as_ref()?.text_centre.as_ref()?;
        Some(&centre.vector)
    }

    pub fn read(run_dir: &Path) -> Result<RunConfig> {
        let path = run_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; is {} a run folder written by `audiotext-train fit`?",
                path.display(),
                run_dir.display()
            )
        })?;
        let config: RunConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid run config", path.display()))?;
        if config.format_version != RUN_FORMAT_VERSION {
            bail!(
                "{} has format_version {}, this build reads {RUN_FORMAT_VERSION}",
                path.display(),
                config.format_version
            );
        }
        Ok(config)
    }

    pub fn write(&self, run_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let path = run_dir.join(CONFIG_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Progress of a run, saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Epochs completed (1-based count).
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: usize,
    pub best_epoch: Option<usize>,
    pub best_map10: Option<f64>,
}

/// Which checkpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Best,
    Last,
}

impl Which {
    pub fn file_stem(self) -> &'static str {
        match self {
            Which::Best => "best",
            Which::Last => "last",
        }
    }
}

pub fn checkpoint_path(run_dir: &Path, stem: &str, kind: &str) -> PathBuf {
    run_dir
        .join(CHECKPOINT_DIR)
        .join(format!("{stem}.{kind}.bpk"))
}

/// What one epoch did; one line of `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub steps: usize,
    pub train_loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t2a_r1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t2a_r5: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t2a_r10: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t2a_map10: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2t_r1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2t_r5: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2t_r10: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2t_map10: Option<f64>,
    /// Text-to-audio class precision at 10 (datasets with labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_p10: Option<f64>,
    /// Class precision at 1 and class mAP@10 (`fit-head`: every clip of the query's class is
    /// relevant; held-out queries when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_p1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_map10: Option<f64>,
    /// Open-world validation (`fit-head` on ESC-50 and other sources together): the reference
    /// (ESC-50) queries over its clips alone, and over the whole gallery with the other sources'
    /// clips as distractors; the other sources' own queries over the whole gallery; their clips'
    /// captions as DCASE queries over the whole gallery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world: Option<OpenWorldMetrics>,
    pub temperature: f64,
    pub lr: f64,
    pub seconds: f64,
    pub seconds_per_step: f64,
    pub validation_seconds: f64,
}

/// See [`EpochLog::open_world`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenWorldMetrics {
    pub reference_alone_p1: f64,
    pub reference_alone_map10: f64,
    pub reference_with_distractors_p1: f64,
    pub reference_with_distractors_map10: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_p1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_map10: Option<f64>,
    pub others_caption_r1: f64,
    pub others_caption_r10: f64,
    pub others_caption_map10: f64,
    pub gallery_clips: usize,
    pub reference_clips: usize,
}

/// What `fit-head` adds to a run's config: the run holds only the head; the backbone comes from
/// the recorded checkpoint (`RunConfig::pretrained`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadRun {
    /// The head's weights, in the run folder.
    pub head_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_on: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<PathBuf>,
    /// Further query files (`--queries` given more than once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_queries: Vec<PathBuf>,
    /// Mixes in the pool (drawn from the training clips).
    pub mixes: usize,
    /// How training rows are drawn (defaults: every clip once an epoch, one caption a step).
    #[serde(default, skip_serializing_if = "Sampling::is_default")]
    pub sampling: Sampling,
    /// The centre that queries are moved off at search time (`fit-head --text-centre`); the
    /// export writes it into the bundle's text section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_centre: Option<TextCentre>,
}

/// `strength` times the mean text-network embedding of the training captions, each distinct
/// caption once. Training fits the audio to the captions as the text network gives them; only
/// the queries (validation's and the extension's) are centred.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextCentre {
    pub strength: f32,
    /// Distinct training captions the mean is over.
    pub captions: usize,
    pub vector: Vec<f32>,
}

/// How `fit-head` draws its training rows: which clips train, how sources are weighted,
/// foreground-on-background mixes, captions per target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train_sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holdout_classes: Vec<String>,
    pub source_balance: f64,
    pub background_mixes: usize,
    pub background_prob: f64,
    pub captions_per_step: usize,
    #[serde(default)]
    pub class_keys: bool,
    /// Heads trained apart, one seed each, and joined into one head `ensemble` times as wide
    /// (`fit-head --ensemble`); the model's `fc_dim` is the joined width.
    #[serde(default = "one_head", skip_serializing_if = "is_one_head")]
    pub ensemble: usize,
}

fn one_head() -> usize {
    1
}

fn is_one_head(n: &usize) -> bool {
    *n == 1
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            train_sources: Vec::new(),
            holdout_classes: Vec::new(),
            source_balance: 1.0,
            background_mixes: 0,
            background_prob: 0.0,
            captions_per_step: 1,
            class_keys: false,
            ensemble: 1,
        }
    }
}

impl Sampling {
    fn is_default(&self) -> bool {
        *self == Sampling::default()
    }
}

/// The compute device for training and inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
pub enum DeviceKind {
    /// burn's pure-Rust CPU backend (multi-threaded, SIMD).
    #[default]
    Flex,
    /// NVIDIA GPU (build with `--features train-cuda`).
    Cuda,
    /// Any GPU through wgpu (build with `--features train-wgpu`).
    Wgpu,
}

pub fn device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Flex => Ok(Device::flex()),
        #[cfg(feature = "train-cuda")]
        DeviceKind::Cuda => Ok(Device::cuda(0)),
        #[cfg(not(feature = "train-cuda"))]
        DeviceKind::Cuda => bail!("this audiotext-train was built without CUDA; rebuild with `cargo build --release --features train-cuda`"),
        #[cfg(feature = "train-wgpu")]
        DeviceKind::Wgpu => Ok(Device::wgpu(Default::default())),
        #[cfg(not(feature = "train-wgpu"))]
        DeviceKind::Wgpu => bail!("this audiotext-train was built without wgpu; rebuild with `cargo build --release --features train-wgpu`"),
    }
}

/// Loads ONNX Runtime: `--ort PATH` when given; else `$AUDIOTEXT_ORT_DYLIB` / `$ORT_DYLIB_PATH`;
/// else `libonnxruntime.so` next to this executable, in `dist/` of an ancestor folder of the
/// executable (a cargo build tree), or in `dist/` of the working folder; else the system path.
pub fn ort_runtime(flag: Option<&Path>) -> Result<&'static Runtime> {
    match flag {
        Some(path) => Ok(runtime::runtime_from(path)?),
        None => Ok(runtime::runtime_searching(&trainer_dist_dirs())?),
    }
}

/// Where a built trainer's `dist/` may be: above its binary (tests run from target/*/deps)
/// and in the working folder.
fn trainer_dist_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        if let Some(dir) = exe.parent() {
            out.extend(dir.ancestors().skip(1).take(4).map(|a| a.join("dist")));
        }
    }
    out.push(PathBuf::from("dist"));
    out
}

/// Embeds clips given as their inference windows: windows of equal length are batched (at most
/// `batch_size`; shorter than `min_frames` padded with `pad`) and given to
/// `encode(values, batch, frames, mels, waveform)` (`waveform`: the windows' samples, empty
/// when the features carry none), which returns `batch` rows of `dim` values; window
/// embeddings are averaged per clip and L2-normalised (the manifest's `mean` pooling).
pub fn embed_windows(
    clips: &[Vec<Features>],
    min_frames: usize,
    pad: f32,
    dim: usize,
    batch_size: usize,
    mut encode: impl FnMut(Vec<f32>, usize, usize, usize, Vec<f32>) -> Result<Vec<f32>>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    // Every window with its clip, padded to the encoder's minimum.
    let windows: Vec<(usize, Features)> = clips
        .iter()
        .enumerate()
        .flat_map(|(i, windows)| windows.iter().map(move |w| (i, w)))
        .map(|(i, w)| match w.frames < min_frames {
            true => (i, pad_frames(w, min_frames, pad)),
            false => (i, w.clone()),
        })
        .collect();
    let frames: Vec<usize> = windows.iter().map(|(_, w)| w.frames).collect();
    let mut pools: Vec<MeanPool> = clips.iter().map(|_| MeanPool::default()).collect();
    for batch in equal_length_batches(&frames, batch_size) {
        let (frames, mels) = (frames[batch[0]], windows[batch[0]].1.n_mels);
        let mut values = Vec::with_capacity(batch.len() * frames * mels);
        let mut waveform = Vec::new();
        for &w in &batch {
            values.extend_from_slice(&windows[w].1.data);
            waveform.extend_from_slice(&windows[w].1.waveform);
        }
        let y = encode(values, batch.len(), frames, mels, waveform)?;
        if y.len() != batch.len() * dim {
            bail!(
                "the encoder returned {} values for {} windows of {dim} dims",
                y.len(),
                batch.len()
            );
        }
        for (&w, row) in batch.iter().zip(y.chunks(dim)) {
            pools[windows[w].0].add(row);
        }
        progress(batch.len());
    }
    // The extension's pooling (audio_embed's): the sum, L2-normalised.
    Ok(pools
        .into_iter()
        .map(|p| match p.is_empty() {
            true => vec![0f32; dim],
            false => p.finish(),
        })
        .collect())
}

/// Embeds clips with a trained (validation-mode) model: each clip's spectrogram is cut into the
/// manifest's windows (see `features::clip_windows`).
pub fn embed_clips(
    model: &Contrastive,
    clips: &[&Features],
    config: &RunConfig,
    batch_size: usize,
    device: &Device,
    progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let windows = clips
        .iter()
        .map(|f| crate::features::clip_windows(f, &config.front_end, &config.windowing))
        .collect::<Result<Vec<_>>>()?;
    embed_windows(
        &windows,
        config.model.encoder.min_frames(),
        pad_value(&config.front_end),
        config.model.encoder.embedding_dim,
        batch_size,
        |values, b, frames, mels, waveform| {
            Ok(to_vec(model.audio.forward_with(
                input_tensor(
                    values,
                    b,
                    frames,
                    mels,
                    config.model.encoder.input_channels,
                    device,
                ),
                waveform_tensor(waveform, b, device),
            )))
        },
        progress,
    )
}

/// The value of silence in the front-end's log scale (padding value).
pub fn pad_value(fe: &FrontEnd) -> f32 {
    fe.silence_value()
}

/// Pads a clip with silence at the end up to `frames`.
pub fn pad_frames(f: &Features, frames: usize, value: f32) -> Features {
    let mut data = f.data.clone();
    data.resize(frames.max(f.frames) * f.n_mels, value);
    // The signal of the padded frames is silence.
    let mut waveform = f.waveform.clone();
    if !waveform.is_empty() {
        waveform.resize(frames.max(f.frames) * f.hop(), 0.0);
    }
    Features {
        samples: 0,
        frames: frames.max(f.frames),
        n_mels: f.n_mels,
        data,
        waveform,
    }
}

/// Text embeddings through the model's text head (identity when there is none).
pub fn embed_texts(model: &Contrastive, texts: &[Vec<f32>], device: &Device) -> Vec<Vec<f32>> {
    if texts.is_empty() {
        return Vec::new();
    }
    if model.text_head.is_none() {
        return texts.to_vec();
    }
    let dim = texts[0].len();
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(1024) {
        let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
        let t = Tensor::<2>::from_data(TensorData::new(flat, [chunk.len(), dim]), device);
        out.extend(to_vec(model.text(t)).chunks(dim).map(<[f32]>::to_vec));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_window_lengths() {
        let fe = FrontEnd::panns_32k();
        assert_eq!(pad_value(&fe), -100.0);
        let f = Features {
            waveform: Vec::new(),
            samples: 0,
            frames: 2,
            n_mels: 1,
            data: vec![0.0, 1.0],
        };
        assert_eq!(pad_frames(&f, 4, -1.0).data, vec![0.0, 1.0, -1.0, -1.0]);
        // Two clips, one of two windows of different lengths: means per clip, normalised.
        let w = |frames: usize, v: f32| Features {
            waveform: Vec::new(),
            samples: 0,
            frames,
            n_mels: 1,
            data: vec![v; frames],
        };
        let clips = vec![vec![w(4, 1.0), w(2, 3.0)], vec![w(4, -1.0)]];
        let mut calls = Vec::new();
        let out = embed_windows(
            &clips,
            3,
            0.0,
            2,
            8,
            |values, b, frames, _, _| {
                calls.push((b, frames));
                // "Embedding" = (first value, 1).
                Ok((0..b).flat_map(|i| [values[i * frames], 1.0]).collect())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(calls, [(1, 3), (2, 4)], "the 2-frame window is padded to 3");
        let n = (16.0f32 + 4.0).sqrt();
        assert!((out[0][0] - 4.0 / n).abs() < 1e-6 && (out[0][1] - 2.0 / n).abs() < 1e-6);
        let m = 2f32.sqrt();
        assert!((out[1][0] + 1.0 / m).abs() < 1e-6);
    }
}
