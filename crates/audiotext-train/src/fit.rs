//! `audiotext-train fit`: contrastive training of the audio encoder against frozen caption
//! embeddings.
//!
//! 1. The dataset is read and split by recording (or Clotho's own validation split is used).
//! 2. Log-mel features of every clip are computed once (in parallel, cached on disk), caption
//!    embeddings once through the text bundle (cached per text encoder).
//! 3. Each epoch shuffles the training clips; each step takes a batch, picks one caption per
//!    clip at random, crops clips longer than `--max-seconds` at random, applies SpecAugment,
//!    and takes one AdamW step on the contrastive loss of `--loss` (symmetric InfoNCE by
//!    default; see `loss.rs`).
//! 4. After each epoch: validation metrics, a line in `metrics.jsonl`, plots, checkpoints
//!    (last, best by text-to-audio mAP@10, recent epochs).
//!
//! All randomness derives from `--seed` and the epoch number, so `--resume` continues exactly
//! where the last completed epoch left off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar};
use serde::Serialize;

use crate::cache::{default_cache_dir, FeatureCache, Features};
use crate::data::{Dataset, Layout};
use crate::metrics::{self, RetrievalMetrics};
use crate::split::{fnv1a, fold_by_group, split_by_group, SplitMix64};
use audiotext_core::audio::{FrontEnd, Windowing};

use crate::embed::{bar_style, caption_embeddings};
use crate::encoders::pooling::PoolingKind;
use crate::encoders::Architecture;
use crate::loss::LossSpec;
use crate::mix::{draw_pool, mix_features, Mix, MixOptions};
use crate::model::{
    input_tensor, to_vec, waveform_tensor, Contrastive, ContrastiveConfig, EncoderConfig,
};
use crate::run::{
    checkpoint_path, device, embed_clips, embed_texts, pad_value, CheckpointState, DataInfo,
    DeviceKind, Fold, RunConfig, TrainOptions, CHECKPOINT_DIR, METRICS_FILE, RUN_FORMAT_VERSION,
};
use crate::specaug::{make_batch, SpecAugment};

pub use crate::run::{EpochLog, OpenWorldMetrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    /// `captions.csv` + `audio/` (+ optional `labels.csv`).
    Generic,
    /// `clotho_captions_<split>.csv` + `<split>/`.
    Clotho,
    /// AudioCaps: `<split>.csv` (`audiocap_id,youtube_id,start_time,caption`) + audio named by
    /// id in `audio/<split>/`, `audio/` or `<split>/`; clips without audio are skipped.
    #[value(name = "audiocaps")]
    AudioCaps,
}

#[derive(Debug, Args)]
pub struct FitArgs {
    /// Dataset folder (see --layout). Required unless --resume is given.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "generic")]
    pub layout: LayoutArg,
    /// Clotho, AudioCaps: the split to train on (AudioCaps: `development` means `train`).
    #[arg(long, default_value = "development")]
    pub split: String,
    /// Clotho, AudioCaps: the split to validate on (default `validation`, AudioCaps `val`, when
    /// present; otherwise a part of the training split is held out by recording, see
    /// --val-fraction).
    #[arg(long)]
    pub val_split: Option<String>,
    /// Fraction of recordings held out for validation when there is no validation split.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Chance that a training row is replaced by a mix of two clips with their captions
    /// joined by "while" (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub mix_prob: f64,
    /// Mixes drawn per training clip for the pool of mixes.
    #[arg(long, default_value_t = 2)]
    pub mix_per_clip: usize,
    /// Cross-validation: split the recordings into this many class-balanced folds and
    /// validate on fold --fold (overrides --val-fraction; generic layout only).
    /// Files that cannot be decoded are skipped, named and counted in the run's config; more
    /// than this share of them fails the run.
    #[arg(long, default_value_t = crate::run::DEFAULT_MAX_BAD_SHARE)]
    pub max_bad_share: f64,
    #[arg(long, requires = "fold")]
    pub folds: Option<usize>,
    /// Which fold validates (0-based), with --folds.
    #[arg(long, requires = "folds")]
    pub fold: Option<usize>,
    /// Text bundle whose sentence embeddings are the targets (all-MiniLM-L6-v2 by default).
    #[arg(long, value_name = "DIR", default_value = "models/default")]
    pub text_bundle: PathBuf,
    /// Run folder to create (config, metrics, plots, checkpoints).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint (optimizer state included); only
    /// --epochs, --device, --cache, --ort and --data may change.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Total number of epochs [default: 50].
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW), reached after the warm-up, then cosine decay.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of --lr.
    #[arg(long, default_value_t = 0.01)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup_epochs: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 1e-3)]
    pub weight_decay: f64,
    /// Per-parameter gradient norm clipping (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub clip_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Audio encoder: cnn6, cnn10, cnn14 (PANNs CNNs), resnet38, crnn (conv + BiGRU), tcn
    /// (dilated Conv1d stack), spec2vec (whole fixed-size spectrogram), wavegram-logmel (PANNs Wavegram-Logmel-CNN14: a learned 1-D conv front end on the waveform beside the log-mel).
    #[arg(long, default_value = "cnn10")]
    pub encoder: String,
    /// Encoder base width: channels w, 2w, 4w, ... (64 gives the published PANNs sizes).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Pooling over time: mean, max, mean-max, lstm-last, lstm-mean, netvlad, netrvlad.
    #[arg(long, default_value = "mean-max")]
    pub pooling: String,
    /// Hidden size of the CRNN's GRU (per direction) [default: 2 * width].
    #[arg(long)]
    pub gru_hidden: Option<usize>,
    /// Hidden size of the LSTM pooling [default: the backbone's output width].
    #[arg(long)]
    pub lstm_hidden: Option<usize>,
    /// Clusters of NetVLAD / NetRVLAD pooling.
    #[arg(long, default_value_t = 8)]
    pub clusters: usize,
    #[arg(long, default_value_t = 0.2)]
    pub block_dropout: f64,
    #[arg(long, default_value_t = 0.5)]
    pub head_dropout: f64,
    /// Train a linear head on the text side (initialised to the identity); `export` adds it
    /// to the bundle's text.onnx.
    #[arg(long)]
    pub text_head: bool,
    /// Softmax temperature (initial value when learned).
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// Keep the temperature fixed instead of learning it.
    #[arg(long)]
    pub fixed_temperature: bool,
    /// Contrastive loss: terms joined by `+`, each `[weight*]name[:key=value,...]`.
    /// Terms: infonce, ntxent (both use the temperature); triplet-sum, triplet-max
    /// (margin=0.2); triplet-weighted (margin=0.2, polynomial coefficients pos0..pos8 and
    /// neg0..neg8, default pos0=0.5,pos1=-0.7,pos2=0.2,neg0=0.03,neg1=-0.4,neg2=0.9);
    /// vicreg (sim=25,var=25,cov=1,gamma=1); cosine (margin=0). E.g. `infonce+0.1*vicreg`,
    /// `triplet-max:margin=0.3`.
    #[arg(long, value_name = "SPEC", default_value = "infonce")]
    pub loss: LossSpec,
    /// Multiscale mel: further STFT window lengths in samples (each at most the FFT size,
    /// 1024), each computed like the 1024-sample one and stacked as one more input channel,
    /// e.g. `256,512`. Exported bundles carry them in the manifest; the extension computes the
    /// same channels.
    #[arg(long, value_delimiter = ',', value_name = "SAMPLES")]
    pub multiscale: Vec<usize>,
    /// Training crop length in seconds (longer clips are cropped at random each step).
    #[arg(long, default_value_t = 10.0)]
    pub max_seconds: f32,
    #[arg(long, default_value_t = 2)]
    pub time_masks: usize,
    /// Widest time mask in frames.
    #[arg(long, default_value_t = 40)]
    pub time_mask_frames: usize,
    #[arg(long, default_value_t = 2)]
    pub freq_masks: usize,
    /// Widest frequency mask in mel bands.
    #[arg(long, default_value_t = 8)]
    pub freq_mask_bands: usize,
    /// Epoch checkpoints to keep besides `last` and `best`.
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Validate after every N-th epoch and after the last one only: for runs where only the
    /// final metrics matter (a cross-validated comparison); `best` is picked among validated
    /// epochs.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub validate_every: usize,
    /// Licence of the training data, written into exported manifests (default: read from the
    /// dataset's LICENSE file).
    #[arg(long)]
    pub data_license: Option<String>,
    /// Cache folder for features and caption embeddings [default: ~/.cache/audiotext-train].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Compute everything afresh and cache nothing.
    #[arg(long)]
    pub no_cache: bool,
    /// ONNX Runtime library [default: next to the executable, dist/, $AUDIOTEXT_ORT_DYLIB].
    #[arg(long, value_name = "FILE")]
    pub ort: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "flex")]
    pub device: DeviceKind,
    /// Start the encoder from PANNs' AudioSet weights (Cnn6/Cnn10/Cnn14 checkpoint, .pth or
    /// .safetensors) with the matching --encoder cnn6|cnn10|cnn14 and --width 64 (PANNs'
    /// sizes); `proj` starts afresh. Fresh runs only.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub pretrained: Option<PathBuf>,
    /// Stop after this many optimizer steps in total (for smoke tests and timing); the epoch
    /// in progress is then validated and saved as if it were complete.
    #[arg(long)]
    pub max_steps: Option<usize>,
}

/// One clip ready for training: features and caption embeddings.
#[derive(Debug, Clone)]
pub struct ClipData {
    /// File name in the dataset (for messages).
    #[allow(dead_code)]
    pub name: String,
    pub features: Arc<Features>,
    pub captions: Vec<Vec<f32>>,
    /// Equal for clips whose caption sets are equal (soft targets, see `loss.rs`).
    pub caption_key: u64,
    /// Class index, when the dataset has labels.
    pub class: Option<usize>,
}

/// The data of a run, in memory.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub clips: Vec<ClipData>,
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    /// Mixes of two training clips with joined captions (empty unless `--mix-prob`).
    pub mixes: Vec<Mix>,
}

pub fn run(args: FitArgs) -> Result<()> {
    let cache_root = (!args.no_cache).then(|| args.cache.clone().unwrap_or_else(default_cache_dir));
    let (run_dir, config, resume) = match &args.resume {
        Some(dir) => {
            let mut config = RunConfig::read(dir)?;
            if let Some(epochs) = args.epochs {
                config.train.epochs = epochs;
            }
            if let Some(data) = &args.data {
                if let Some(info) = &mut config.data {
                    info.root = data.clone();
                }
            }
            (dir.clone(), config, true)
        }
        None => {
            let Some(out) = &args.out else {
                bail!("pass --out RUN_DIR for a new run, or --resume RUN_DIR to continue one")
            };
            if out.join(crate::run::CONFIG_FILE).exists() {
                bail!(
                    "{} already holds a run; continue it with --resume {}, or pick another --out",
                    out.display(),
                    out.display()
                );
            }
            (out.clone(), new_config(&args)?, false)
        }
    };
    let data = config
        .data
        .clone()
        .context("the run config names no dataset")?;
    let text_bundle = config
        .text_bundle
        .clone()
        .unwrap_or_else(|| args.text_bundle.clone());
    let (prepared, config) = prepare(
        &config,
        &data,
        &text_bundle,
        cache_root.as_deref(),
        args.ort.as_deref(),
        args.val_split.as_deref(),
    )?;
    if !resume {
        config.write(&run_dir)?;
    }
    println!(
        "run {}: {} training clips, {} validation clips; encoder {} M parameters; {} epochs of {} steps",
        run_dir.display(),
        prepared.train.len(),
        prepared.validation.len(),
        format_millions(config.model.encoder.parameter_count()),
        config.train.epochs,
        steps_per_epoch(prepared.train.len(), config.train.batch_size)
    );
    train(
        &config,
        &prepared,
        &run_dir,
        resume,
        args.device,
        args.max_steps,
        true,
    )?;
    Ok(())
}

fn format_millions(n: usize) -> String {
    format!("{:.2}", n as f64 / 1e6)
}

fn new_config(args: &FitArgs) -> Result<RunConfig> {
    let data = args
        .data
        .clone()
        .context("pass --data DIR (the dataset folder)")?;
    let front_end = FrontEnd {
        multiscale_win_lengths: args.multiscale.clone(),
        ..FrontEnd::panns_32k()
    };
    // Checked before any feature is computed.
    audiotext_core::audio::MelExtractor::new(&front_end)
        .map_err(|e| anyhow::anyhow!("--multiscale: {e}"))?;
    let windowing = Windowing::ten_seconds();
    let text_manifest = audiotext_core::model::manifest::Manifest::read(&args.text_bundle)
        .with_context(|| {
            format!(
                "--text-bundle {} is not a bundle",
                args.text_bundle.display()
            )
        })?;
    let window_frames = front_end
        .frames((windowing.clip_seconds as f64 * front_end.sample_rate as f64).round() as usize);
    let architecture = Architecture::parse(
        &args.encoder,
        args.gru_hidden.unwrap_or(2 * args.width),
        window_frames,
        pad_value(&front_end),
    )
    .map_err(|e| anyhow::anyhow!("--encoder: {e}"))?;
    if architecture.needs_waveform()
        && (front_end.hop_length != crate::encoders::wavegram::WAVEGRAM_HOP
            || front_end.n_mels % 2 != 0)
    {
        bail!(
            "--encoder {}: the wavegram front end downsamples by {} samples per frame and folds into n_mels / 2 bands; use a front end with hop_length {} and an even n_mels",
            args.encoder,
            crate::encoders::wavegram::WAVEGRAM_HOP,
            crate::encoders::wavegram::WAVEGRAM_HOP
        );
    }
    let frame_dim = {
        let channels = architecture.channels(args.width);
        architecture.output_channels(&channels)
    };
    let pooling = PoolingKind::parse(
        &args.pooling,
        args.lstm_hidden.unwrap_or(frame_dim),
        args.clusters,
    )
    .map_err(|e| anyhow::anyhow!("--pooling: {e}"))?;
    let encoder = EncoderConfig {
        input_channels: front_end.channels(),
        block_dropout: args.block_dropout,
        head_dropout: args.head_dropout,
        ..EncoderConfig::new(
            architecture,
            pooling,
            front_end.n_mels,
            text_manifest.embedding_dim,
            args.width,
        )
    };
    if args.batch_size < 2 {
        bail!("--batch-size must be at least 2 (a contrastive loss needs negatives)");
    }
    // Checked now, before features are computed; imported in `train`.
    let pretrained = match &args.pretrained {
        Some(path) => Some(crate::pretrained::check(path, &encoder)?),
        None => None,
    };
    let hop_seconds = front_end.hop_length as f64 / front_end.sample_rate as f64;
    let layout = match args.layout {
        LayoutArg::Generic => Layout::Generic,
        LayoutArg::Clotho => Layout::Clotho {
            split: args.split.clone(),
        },
        LayoutArg::AudioCaps => Layout::audiocaps(&args.split),
    };
    let license = args.data_license.clone().or_else(|| read_license(&data));
    Ok(RunConfig {
        format_version: RUN_FORMAT_VERSION,
        model: ContrastiveConfig {
            encoder,
            text_head: args.text_head,
            temperature: args.temperature,
            // Only losses over a softmax (InfoNCE, NT-Xent) give the temperature a gradient.
            learn_temperature: !args.fixed_temperature && args.loss.uses_temperature(),
        },
        train: TrainOptions {
            epochs: args.epochs.unwrap_or(50),
            batch_size: args.batch_size,
            lr: args.lr,
            min_lr_ratio: args.min_lr_ratio,
            warmup_epochs: args.warmup_epochs,
            weight_decay: args.weight_decay,
            seed: args.seed,
            max_frames: (args.max_seconds as f64 / hop_seconds).round() as usize + 1,
            specaug: SpecAugment {
                time_masks: args.time_masks,
                time_mask_frames: args.time_mask_frames,
                freq_masks: args.freq_masks,
                freq_mask_bands: args.freq_mask_bands,
            },
            clip_grad_norm: args.clip_grad_norm,
            keep_checkpoints: args.keep_checkpoints,
            validate_every: args.validate_every,
            loss: args.loss.clone(),
            mix: MixOptions {
                probability: args.mix_prob,
                per_clip: args.mix_per_clip,
            },
        },
        front_end,
        windowing,
        data: Some(DataInfo {
            root: data.canonicalize().unwrap_or(data),
            layout: layout.describe(),
            validation_split: None,
            validation_fraction: args.val_fraction,
            fold: match (args.folds, args.fold) {
                (Some(count), Some(index)) if count >= 2 && index < count => {
                    Some(Fold { index, count })
                }
                (Some(count), Some(index)) => {
                    bail!("--fold {index} --folds {count}: need at least 2 folds and a fold below their number")
                }
                _ => None,
            },
            split_seed: args.seed,
            train_clips: 0,
            validation_files: Vec::new(),
            license,
            max_bad_share: args.max_bad_share,
            skipped_files: Vec::new(),
        }),
        text_bundle: Some(
            args.text_bundle
                .canonicalize()
                .unwrap_or(args.text_bundle.clone()),
        ),
        text_key: None,
        text_model: Some(text_manifest.name),
        pretrained,
        head: None,
    })
}

/// The licence named in a dataset's LICENSE file, if it names a Creative Commons licence.
pub fn read_license(root: &Path) -> Option<String> {
    let text = ["LICENSE.txt", "LICENSE", "LICENSE.md", "license.txt"]
        .iter()
        .find_map(|name| std::fs::read_to_string(root.join(name)).ok())?;
    detect_license(&text)
}

/// The first Creative Commons licence named in `text`, as `CC BY-NC 3.0` and the like.
pub fn detect_license(text: &str) -> Option<String> {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let kinds = ["BY-NC-SA", "BY-NC-ND", "BY-NC", "BY-SA", "BY-ND", "BY"];
    let versions = ["4.0", "3.0", "2.5", "2.0", "1.0"];
    let mut best: Option<(usize, String)> = None;
    for kind in kinds {
        for version in versions {
            let name = format!("CC {kind} {version}");
            if let Some(at) = flat.find(&name) {
                if best
                    .as_ref()
                    .is_none_or(|(b, n)| at < *b || (at == *b && name.len() > n.len()))
                {
                    best = Some((at, name));
                }
            }
        }
    }
    best.map(|(_, n)| n)
        .or_else(|| flat.contains("CC0").then(|| "CC0 1.0".to_string()))
}

/// Key of a clip's caption set: clips with the same set are positives of each other.
pub fn caption_set_key(captions: &[String]) -> u64 {
    let mut sorted = captions.to_vec();
    sorted.sort();
    fnv1a(sorted.join("\u{1f}").as_bytes())
}

/// Reads the dataset(s), splits, computes features and caption embeddings.
pub fn prepare(
    config: &RunConfig,
    data: &DataInfo,
    text_bundle: &Path,
    cache_root: Option<&Path>,
    ort: Option<&Path>,
    val_split_flag: Option<&str>,
) -> Result<(Prepared, RunConfig)> {
    let mut config = config.clone();
    let layout = parse_layout(&data.layout)?;
    let train_set = Dataset::open(&data.root, &layout)?;
    // Clotho, AudioCaps: a validation split of their own when there is one.
    let mut val_set = None;
    if layout.split().is_some() {
        let wanted = val_split_flag
            .map(String::from)
            .or(data.validation_split.clone())
            .map(|v| layout.with_split(&v))
            .or_else(|| layout.default_validation(&data.root));
        if let Some(v) = wanted {
            val_set = Some(Dataset::open(&data.root, &v)?);
            config.data.as_mut().expect("data").validation_split = v.split().map(String::from);
        }
    }
    // Every file is decoded before the split, so that one that cannot be is left out of both
    // sides (named, counted, and the run fails only above --max-bad-share), not found after
    // minutes of work.
    let start = Instant::now();
    let listed: Vec<&crate::data::Clip> = train_set
        .clips
        .iter()
        .chain(val_set.iter().flat_map(|v| v.clips.iter()))
        .collect();
    let listed_paths: Vec<&Path> = listed.iter().map(|c| c.path.as_path()).collect();
    let bar = ProgressBar::new(listed.len() as u64)
        .with_style(bar_style("clips"))
        .with_message("log-mel features");
    let (decoded, hits, bad) = crate::features::decodable_features(
        &listed_paths,
        &config.front_end,
        &FeatureCache::new(cache_root),
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    let skipped = crate::run::check_bad_files(&bad, &listed_paths, data.max_bad_share)?;
    let kept_train = (0..train_set.clips.len())
        .filter(|&i| decoded[i].is_some())
        .count();
    let (all, features): (Vec<&crate::data::Clip>, Vec<Arc<Features>>) = listed
        .into_iter()
        .zip(decoded)
        .filter_map(|(clip, f)| f.map(|f| (clip, f)))
        .unzip();
    let (train, validation) = match &val_set {
        Some(_) => (
            (0..kept_train).collect::<Vec<_>>(),
            (kept_train..all.len()).collect::<Vec<_>>(),
        ),
        None => {
            let groups: Vec<String> = all.iter().map(|c| c.recording.clone()).collect();
            let labels: Option<Vec<String>> = train_set.has_labels().then(|| {
                all.iter()
                    .map(|c| c.label.clone().unwrap_or_default())
                    .collect()
            });
            let s = match data.fold {
                Some(f) => fold_by_group(
                    &groups,
                    labels.as_deref(),
                    f.count,
                    f.index,
                    data.split_seed,
                ),
                None => split_by_group(
                    &groups,
                    labels.as_deref(),
                    data.validation_fraction,
                    data.split_seed,
                ),
            };
            (s.train, s.validation)
        }
    };
    // A resumed run must validate on the same clips.
    if !data.validation_files.is_empty() {
        let names: Vec<&str> = validation
            .iter()
            .map(|&i| all[i].file_name.as_str())
            .collect();
        if names
            != data
                .validation_files
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        {
            bail!("the dataset's validation split differs from the one the run was started with (files changed?)");
        }
    }
    {
        let info = config.data.as_mut().expect("data");
        info.skipped_files = skipped;
        info.train_clips = train.len();
        info.validation_files = validation
            .iter()
            .map(|&i| all[i].file_name.clone())
            .collect();
    }

    let paths: Vec<&Path> = all.iter().map(|c| c.path.as_path()).collect();
    let features = if config.model.encoder.architecture.needs_waveform() {
        crate::features::with_waveforms(features, &paths, &config.front_end)?
    } else {
        features
    };
    println!(
        "features: {} clips ({} from the cache) in {:.1} s",
        features.len(),
        hits,
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let texts: Vec<&str> = all
        .iter()
        .flat_map(|c| c.captions.iter().map(String::as_str))
        .collect();
    // The pool of mixes: their joined captions are embedded with the others.
    let mut mixes = if config.train.mix.probability > 0.0 {
        let keys: Vec<u64> = all.iter().map(|c| caption_set_key(&c.captions)).collect();
        draw_pool(
            &train,
            &|i| all[i].captions.clone(),
            &|i| keys[i],
            config.train.mix.per_clip,
            config.train.seed,
        )
    } else {
        Vec::new()
    };
    let mix_captions: Vec<String> = mixes.iter().map(|m| m.caption.clone()).collect();
    let texts: Vec<&str> = texts
        .into_iter()
        .chain(mix_captions.iter().map(String::as_str))
        .collect();
    let embeddings = caption_embeddings(text_bundle, &texts, cache_root, ort)?;
    for m in &mut mixes {
        m.embedding = embeddings.by_text[&m.caption].clone();
    }
    if !mixes.is_empty() {
        println!(
            "mixes: a pool of {} clip pairs with joined captions",
            mixes.len()
        );
    }
    if embeddings.dim != config.model.encoder.embedding_dim {
        bail!(
            "the text bundle {} gives {}-dim embeddings, while the run's encoder outputs {}",
            text_bundle.display(),
            embeddings.dim,
            config.model.encoder.embedding_dim
        );
    }
    if let Some(key) = &config.text_key {
        if key != &embeddings.key {
            bail!("the text bundle {} is not the one the run was started with (its text encoder changed)", text_bundle.display());
        }
    }
    config.text_key = Some(embeddings.key.clone());
    println!(
        "captions: {} texts embedded with {} in {:.1} s",
        texts.len(),
        embeddings.model,
        start.elapsed().as_secs_f64()
    );

    let mut classes: Vec<String> = all.iter().filter_map(|c| c.label.clone()).collect();
    classes.sort();
    classes.dedup();
    let clips = all
        .iter()
        .zip(features)
        .map(|(c, features)| ClipData {
            name: c.file_name.clone(),
            features,
            captions: c
                .captions
                .iter()
                .map(|t| embeddings.by_text[t].clone())
                .collect(),
            caption_key: caption_set_key(&c.captions),
            class: c.label.as_ref().and_then(|l| classes.binary_search(l).ok()),
        })
        .collect();
    Ok((
        Prepared {
            clips,
            train,
            validation,
            mixes,
        },
        config,
    ))
}

fn parse_layout(s: &str) -> Result<Layout> {
    Layout::parse(s)
}

pub fn steps_per_epoch(train: usize, batch_size: usize) -> usize {
    if train < 2 {
        0
    } else if train <= batch_size {
        1
    } else {
        // The last partial batch is kept when it has at least two clips.
        train / batch_size + usize::from(train % batch_size >= 2)
    }
}

/// Learning rate at `step` (0-based): linear warm-up, then cosine decay to `min_lr_ratio * lr`.
pub fn lr_at(step: usize, total: usize, warmup: usize, lr: f64, min_lr_ratio: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let min = lr * min_lr_ratio;
    min + (lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Summary of [`train`].
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct TrainSummary {
    pub epochs: Vec<EpochLog>,
    /// Loss of every optimizer step of this call, in order.
    pub step_losses: Vec<f64>,
}

fn optimizer(t: &TrainOptions) -> ModuleOptimizer {
    let mut c = AdamWConfig::new().with_weight_decay(t.weight_decay as f32);
    if t.clip_grad_norm > 0.0 {
        c = c.with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(
            t.clip_grad_norm as f32,
        )));
    }
    c.init()
}

fn save_record(model: &Contrastive, path: &Path) -> Result<()> {
    let tmp = path.with_extension("bpk.tmp");
    model
        .clone()
        .into_record()
        .save(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads `metrics.jsonl` (missing file: no epochs).
pub fn read_metrics(run_dir: &Path) -> Result<Vec<EpochLog>> {
    let path = run_dir.join(METRICS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: bad line {l:?}", path.display()))
        })
        .collect()
}

/// Trains for `config.train.epochs` epochs (from the last checkpoint when `resume`).
pub fn train(
    config: &RunConfig,
    data: &Prepared,
    run_dir: &Path,
    resume: bool,
    device_kind: DeviceKind,
    max_steps: Option<usize>,
    show_progress: bool,
) -> Result<TrainSummary> {
    let t = &config.train;
    let base = device(device_kind)?;
    let ad = base.clone().autodiff();
    let ckpt_dir = run_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&ckpt_dir)
        .with_context(|| format!("cannot create {}", ckpt_dir.display()))?;

    let mut logs = Vec::new();
    let (mut model, mut optim, mut state) = if resume {
        let state: CheckpointState = serde_json::from_str(
            &std::fs::read_to_string(ckpt_dir.join("last.json"))
                .context("the run has no checkpoint to resume from")?,
        )?;
        let record = ModuleRecord::load(checkpoint_path(run_dir, "last", "model"))
            .map_err(|e| anyhow::anyhow!("cannot read the last model checkpoint: {e}"))?;
        let model = config.model.init(&ad).load_record(record);
        let optim = optimizer(t)
            .load(checkpoint_path(run_dir, "last", "optim"))
            .map_err(|e| anyhow::anyhow!("cannot read the last optimizer checkpoint: {e}"))?;
        logs = read_metrics(run_dir)?
            .into_iter()
            .filter(|l| l.epoch <= state.epoch)
            .collect();
        rewrite_metrics(run_dir, &logs)?;
        println!("resuming after epoch {} (step {})", state.epoch, state.step);
        (model, optim, state)
    } else {
        base.seed(t.seed);
        let mut model = config.model.init(&ad);
        if let Some(p) = &config.pretrained {
            // On the autodiff device, so the imported weights are trained.
            model.audio = crate::pretrained::import(model.audio, &config.model.encoder, p, &ad)?;
        }
        let state = CheckpointState {
            epoch: 0,
            step: 0,
            best_epoch: None,
            best_map10: None,
        };
        (model, optimizer(t), state)
    };

    let steps = steps_per_epoch(data.train.len(), t.batch_size);
    if steps == 0 {
        bail!(
            "training needs at least two training clips, got {}",
            data.train.len()
        );
    }
    let total_steps = steps * t.epochs;
    let warmup = (t.warmup_epochs * steps as f64).round() as usize;
    let dim = config.model.encoder.embedding_dim;
    let min_frames = config.model.encoder.min_frames();
    let pad = pad_value(&config.front_end);
    let mut step_losses = Vec::new();
    let multi = MultiProgress::new();
    if !show_progress {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }

    for epoch in state.epoch + 1..=t.epochs {
        if max_steps.is_some_and(|m| state.step >= m) {
            break;
        }
        let started = Instant::now();
        base.seed(t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let mut order = data.train.clone();
        SplitMix64::derive(t.seed, &[epoch as u64, 1]).shuffle(&mut order);
        let mut pick = SplitMix64::derive(t.seed, &[epoch as u64, 2]);
        let mut aug = SplitMix64::derive(t.seed, &[epoch as u64, 3]);
        let bar = multi.add(ProgressBar::new(steps as u64).with_style(bar_style("steps")));
        bar.set_message(format!("epoch {epoch}/{}", t.epochs));
        let mut loss_sum = 0.0;
        let mut done = 0usize;
        let mut step_time = 0.0;
        let mut lr = 0.0;
        let batches: Vec<&[usize]> = order
            .chunks(t.batch_size)
            .filter(|b| b.len() >= 2)
            .collect();
        for batch in batches {
            if max_steps.is_some_and(|m| state.step >= m) {
                break;
            }
            let step_start = Instant::now();
            // Rows replaced by a mix of two clips (with the mix's joined caption).
            let mixed: Vec<Option<(Features, &Mix)>> = batch
                .iter()
                .map(|_| {
                    let p = t.mix.probability;
                    (p > 0.0 && !data.mixes.is_empty() && aug.next_f64() < p).then(|| {
                        let m = &data.mixes[aug.below(data.mixes.len())];
                        let (a, b) = (&data.clips[m.first], &data.clips[m.second]);
                        (mix_features(&a.features, &b.features), m)
                    })
                })
                .collect();
            let feats: Vec<&Features> = batch
                .iter()
                .zip(&mixed)
                .map(|(&i, m)| match m {
                    Some((f, _)) => f,
                    None => data.clips[i].features.as_ref(),
                })
                .collect();
            let b = make_batch(
                &feats,
                t.max_frames,
                min_frames,
                pad,
                config.model.encoder.n_mels,
                &t.specaug,
                &mut aug,
            );
            let mut text = Vec::with_capacity(batch.len() * dim);
            let mut keys = Vec::with_capacity(batch.len());
            for (&i, m) in batch.iter().zip(&mixed) {
                match m {
                    Some((_, mix)) => {
                        text.extend_from_slice(&mix.embedding);
                        keys.push(mix.key);
                    }
                    None => {
                        let clip = &data.clips[i];
                        text.extend_from_slice(&clip.captions[pick.below(clip.captions.len())]);
                        keys.push(clip.caption_key);
                    }
                }
            }
            let n = batch.len();
            let x = input_tensor(
                b.values,
                b.batch,
                b.frames,
                b.mels,
                config.model.encoder.input_channels,
                &ad,
            );
            let text = Tensor::<2>::from_data(TensorData::new(text, [n, dim]), &ad);
            let waveform = waveform_tensor(b.waveform, n, &ad);
            let audio = model.audio.forward_with(x, waveform);
            let text = model.text(text);
            let scale = model.scale(config.model.temperature, &ad);
            let loss = t.loss.compute(audio, text, scale, &keys);
            let loss_value = to_vec(loss.clone())[0] as f64;
            if !loss_value.is_finite() {
                bail!("the loss became {loss_value} at step {} (epoch {epoch}); lower --lr or set --clip-grad-norm", state.step + 1);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            lr = lr_at(state.step, total_steps, warmup, t.lr, t.min_lr_ratio);
            model = optim.step(lr, model, grads);
            state.step += 1;
            done += 1;
            loss_sum += loss_value;
            step_losses.push(loss_value);
            step_time += step_start.elapsed().as_secs_f64();
            bar.set_prefix(format!("loss {:.4}", loss_sum / done as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if done == 0 {
            break;
        }
        let train_seconds = started.elapsed().as_secs_f64();

        // Validation.
        let val_start = Instant::now();
        let mut log = EpochLog {
            epoch,
            steps: done,
            train_loss: loss_sum / done as f64,
            temperature: model.temperature(config.model.temperature),
            lr,
            seconds_per_step: step_time / done as f64,
            ..Default::default()
        };
        let last_epoch = epoch == t.epochs || max_steps.is_some_and(|m| state.step >= m);
        let validate_now = epoch % t.validate_every.max(1) == 0 || last_epoch;
        if validate_now && !data.validation.is_empty() {
            let v = validate(&model, config, data, &multi)?;
            log.val_loss = Some(v.loss);
            log.t2a_r1 = Some(v.t2a.r1);
            log.t2a_r5 = Some(v.t2a.r5);
            log.t2a_r10 = Some(v.t2a.r10);
            log.t2a_map10 = Some(v.t2a.map10);
            log.a2t_r1 = Some(v.a2t.r1);
            log.a2t_r5 = Some(v.a2t.r5);
            log.a2t_r10 = Some(v.a2t.r10);
            log.a2t_map10 = Some(v.a2t.map10);
            log.class_p10 = v.class_p10;
        }
        log.validation_seconds = val_start.elapsed().as_secs_f64();
        log.seconds = started.elapsed().as_secs_f64();

        // Metrics first, then checkpoints: a resume drops metric lines past the checkpoint.
        append_metrics(run_dir, &log)?;
        logs.push(log.clone());
        state.epoch = epoch;
        let improved = log
            .t2a_map10
            .is_some_and(|m| state.best_map10.is_none_or(|b| m > b));
        if improved {
            state.best_epoch = Some(epoch);
            state.best_map10 = log.t2a_map10;
        }
        save_record(&model, &checkpoint_path(run_dir, "last", "model"))?;
        optim
            .save(checkpoint_path(run_dir, "last", "optim"))
            .map_err(|e| anyhow::anyhow!("cannot write the optimizer checkpoint: {e}"))?;
        write_json(&ckpt_dir.join("last.json"), &state)?;
        if improved {
            std::fs::copy(
                checkpoint_path(run_dir, "last", "model"),
                checkpoint_path(run_dir, "best", "model"),
            )?;
            write_json(&ckpt_dir.join("best.json"), &state)?;
        }
        if t.keep_checkpoints > 0 {
            std::fs::copy(
                checkpoint_path(run_dir, "last", "model"),
                checkpoint_path(run_dir, &format!("epoch-{epoch:03}"), "model"),
            )?;
            if epoch > t.keep_checkpoints {
                let _ = std::fs::remove_file(checkpoint_path(
                    run_dir,
                    &format!("epoch-{:03}", epoch - t.keep_checkpoints),
                    "model",
                ));
            }
        }
        if let Err(e) = crate::plot::write_plots(run_dir, &logs) {
            eprintln!("warning: cannot draw the plots: {e:#}");
        }
        let line = epoch_line(&log, t.epochs, train_seconds, improved);
        // On standard output whether or not the bars are drawn (a log file gets every line).
        multi.suspend(|| println!("{line}"));
    }
    Ok(TrainSummary {
        epochs: logs,
        step_losses,
    })
}

fn epoch_line(log: &EpochLog, epochs: usize, train_seconds: f64, best: bool) -> String {
    let mut line = format!(
        "epoch {:>3}/{epochs}: loss {:.4}",
        log.epoch, log.train_loss
    );
    if let Some(v) = log.val_loss {
        line += &format!(" (val {v:.4})");
    }
    if let (Some(r1), Some(r5), Some(r10), Some(m)) =
        (log.t2a_r1, log.t2a_r5, log.t2a_r10, log.t2a_map10)
    {
        line += &format!(" | t2a R@1 {r1:.3} R@5 {r5:.3} R@10 {r10:.3} mAP@10 {m:.3}");
    }
    if let Some(m) = log.a2t_map10 {
        line += &format!(" | a2t mAP@10 {m:.3}");
    }
    if let Some(p) = log.class_p10 {
        line += &format!(" | class P@10 {p:.3}");
    }
    line += &format!(
        " | T {:.4} lr {:.2e} | {:.1} s ({:.2} s/step, val {:.1} s){}",
        log.temperature,
        log.lr,
        log.seconds,
        log.seconds_per_step,
        log.validation_seconds,
        if best { " *best" } else { "" }
    );
    let _ = train_seconds;
    line
}

fn append_metrics(run_dir: &Path, log: &EpochLog) -> Result<()> {
    use std::io::Write;
    let path = run_dir.join(METRICS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(log)?)?;
    Ok(())
}

fn rewrite_metrics(run_dir: &Path, logs: &[EpochLog]) -> Result<()> {
    let mut text = String::new();
    for l in logs {
        text += &serde_json::to_string(l)?;
        text.push('\n');
    }
    std::fs::write(run_dir.join(METRICS_FILE), text)?;
    Ok(())
}

/// Validation results.
pub struct Validation {
    pub loss: f64,
    pub t2a: RetrievalMetrics,
    pub a2t: RetrievalMetrics,
    pub class_p10: Option<f64>,
}

/// Retrieval metrics on the validation clips (all captions of each clip are queries), and the
/// contrastive loss with each clip's first caption.
pub fn validate(
    model: &Contrastive,
    config: &RunConfig,
    data: &Prepared,
    multi: &MultiProgress,
) -> Result<Validation> {
    let valid = model.valid();
    let device = valid.audio.fc.weight.val().device();
    let clips: Vec<&ClipData> = data.validation.iter().map(|&i| &data.clips[i]).collect();
    let feats: Vec<&Features> = clips.iter().map(|c| c.features.as_ref()).collect();
    let bar = multi.add(
        ProgressBar::new(feats.len() as u64)
            .with_style(bar_style("windows"))
            .with_message("validation"),
    );
    let audio = embed_clips(
        &valid,
        &feats,
        config,
        config.train.batch_size,
        &device,
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    let mut texts = Vec::new();
    let mut caption_clip = Vec::new();
    for (c, clip) in clips.iter().enumerate() {
        for caption in &clip.captions {
            texts.push(caption.clone());
            caption_clip.push(c);
        }
    }
    let texts = embed_texts(&valid, &texts, &device);
    let sim = metrics::similarity(&texts, &audio);
    let t2a = metrics::text_to_audio(&sim, &caption_clip, clips.len());
    let a2t = metrics::audio_to_text(
        &metrics::transpose(&sim, texts.len(), clips.len()),
        &caption_clip,
        clips.len(),
    );
    let class_p10 = if clips.iter().all(|c| c.class.is_some()) {
        let classes: Vec<usize> = clips.iter().map(|c| c.class.unwrap_or(0)).collect();
        Some(metrics::class_precision_at(
            &sim,
            &caption_clip,
            &classes,
            10,
        ))
    } else {
        None
    };
    // Loss with the first caption of each clip, in training-size batches.
    let first: Vec<usize> = clips
        .iter()
        .enumerate()
        .map(|(c, _)| caption_clip.iter().position(|&x| x == c).unwrap_or(0))
        .collect();
    let scale = valid.scale(config.model.temperature, &device);
    let dim = config.model.encoder.embedding_dim;
    let mut loss_sum = 0.0;
    let mut batches = 0;
    let idx: Vec<usize> = (0..clips.len()).collect();
    for chunk in idx
        .chunks(config.train.batch_size.max(2))
        .filter(|c| c.len() >= 2)
    {
        let a: Vec<f32> = chunk
            .iter()
            .flat_map(|&c| audio[c].iter().copied())
            .collect();
        let t: Vec<f32> = chunk
            .iter()
            .flat_map(|&c| texts[first[c]].iter().copied())
            .collect();
        let keys: Vec<u64> = chunk.iter().map(|&c| clips[c].caption_key).collect();
        let n = chunk.len();
        let loss = config.train.loss.compute(
            Tensor::from_data(TensorData::new(a, [n, dim]), &device),
            Tensor::from_data(TensorData::new(t, [n, dim]), &device),
            scale.clone(),
            &keys,
        );
        loss_sum += to_vec(loss)[0] as f64;
        batches += 1;
    }
    Ok(Validation {
        loss: loss_sum / batches.max(1) as f64,
        t2a,
        a2t,
        class_p10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_steps() {
        assert_eq!(steps_per_epoch(250, 32), 8);
        assert_eq!(steps_per_epoch(257, 32), 8, "a one-clip tail is dropped");
        assert_eq!(steps_per_epoch(258, 32), 9);
        assert_eq!(steps_per_epoch(8, 32), 1);
        assert_eq!(steps_per_epoch(1, 32), 0);
        assert!((lr_at(0, 100, 10, 1.0, 0.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn licences_are_found() {
        let esc = "ESC-50 as a whole is distributed under Creative Commons\nAttribution-NonCommercial 3.0 (CC BY-NC 3.0):\nhttps://...\nmay also be used under CC BY 3.0.";
        assert_eq!(detect_license(esc).as_deref(), Some("CC BY-NC 3.0"));
        assert_eq!(
            detect_license("Licensed CC BY 4.0").as_deref(),
            Some("CC BY 4.0")
        );
        assert_eq!(
            detect_license("public domain (CC0)").as_deref(),
            Some("CC0 1.0")
        );
        assert_eq!(detect_license("all rights reserved"), None);
        assert!(
            parse_layout("clotho:development").is_ok()
                && parse_layout("audiocaps:train").is_ok()
                && parse_layout("generic").is_ok()
                && parse_layout("x").is_err()
        );
    }
}
