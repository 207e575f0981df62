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
use clap::Args;
use indicatif::ProgressBar;

use crate::cache::{default_cache_dir, FeatureCache, Features};
use crate::data::{Dataset, Layout};
use crate::split::{fnv1a, fold_by_group, split_by_group};
use audiotext_core::audio::{FrontEnd, Windowing};

use crate::embed::{bar_style, caption_embeddings, CaptionEmbeddings};
use crate::encoders::pooling::PoolingKind;
use crate::encoders::Architecture;
use crate::loss::LossSpec;
use crate::mix::{draw_pool, Mix, MixOptions};
use crate::model::{ContrastiveConfig, EncoderConfig};
use crate::run::{
    pad_value, DataInfo, DeviceKind, Fold, RunConfig, TrainOptions, RUN_FORMAT_VERSION,
};
use crate::specaug::SpecAugment;

pub use crate::run::{EpochLog, OpenWorldMetrics};

mod training;

pub use training::{read_metrics, train, validate, TrainSummary, Validation};

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
    let encoder = encoder_config(args, &front_end, &windowing, text_manifest.embedding_dim)?;
    if args.batch_size < 2 {
        bail!("--batch-size must be at least 2 (a contrastive loss needs negatives)");
    }
    // Checked now, before features are computed; imported in `train`.
    let pretrained = match &args.pretrained {
        Some(path) => Some(crate::pretrained::check(path, &encoder)?),
        None => None,
    };
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
        train: train_options(args, &front_end),
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

/// The encoder of `--encoder`, `--width` and `--pooling` on this front end, into the text
/// bundle's `embedding_dim`.
fn encoder_config(
    args: &FitArgs,
    front_end: &FrontEnd,
    windowing: &Windowing,
    embedding_dim: usize,
) -> Result<EncoderConfig> {
    let window_frames = front_end
        .frames((windowing.clip_seconds as f64 * front_end.sample_rate as f64).round() as usize);
    let architecture = Architecture::parse(
        &args.encoder,
        args.gru_hidden.unwrap_or(2 * args.width),
        window_frames,
        pad_value(front_end),
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
    Ok(EncoderConfig {
        input_channels: front_end.channels(),
        block_dropout: args.block_dropout,
        head_dropout: args.head_dropout,
        ..EncoderConfig::new(
            architecture,
            pooling,
            front_end.n_mels,
            embedding_dim,
            args.width,
        )
    })
}

/// The optimisation settings of `fit`'s flags.
fn train_options(args: &FitArgs, front_end: &FrontEnd) -> TrainOptions {
    let hop_seconds = front_end.hop_length as f64 / front_end.sample_rate as f64;
    TrainOptions {
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
    }
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
    let val_set = own_validation_set(&layout, data, val_split_flag)?;
    if let Some(v) = &val_set {
        config.data.as_mut().expect("data").validation_split = v.1.clone();
    }
    let val_set = val_set.map(|(set, _)| set);
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
        None => split_clips(&all, train_set.has_labels(), data),
    };
    // A resumed run must validate on the same clips.
    check_same_validation(data, &all, &validation)?;
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

    let (embeddings, mixes) =
        embed_captions(&mut config, &all, &train, text_bundle, cache_root, ort)?;

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

/// A dataset's own validation split (Clotho's, AudioCaps'): `--val-split`, the run's, or the
/// layout's default; with the split's name for the run's config.
fn own_validation_set(
    layout: &Layout,
    data: &DataInfo,
    val_split_flag: Option<&str>,
) -> Result<Option<(Dataset, Option<String>)>> {
    if layout.split().is_none() {
        return Ok(None);
    }
    let wanted = val_split_flag
        .map(String::from)
        .or(data.validation_split.clone())
        .map(|v| layout.with_split(&v))
        .or_else(|| layout.default_validation(&data.root));
    match wanted {
        Some(v) => Ok(Some((
            Dataset::open(&data.root, &v)?,
            v.split().map(String::from),
        ))),
        None => Ok(None),
    }
}

/// Training and validation clips by recording (a fold, or a fraction), class-balanced when
/// every clip has a class.
fn split_clips(
    all: &[&crate::data::Clip],
    labelled: bool,
    data: &DataInfo,
) -> (Vec<usize>, Vec<usize>) {
    let groups: Vec<String> = all.iter().map(|c| c.recording.clone()).collect();
    let labels: Option<Vec<String>> = labelled.then(|| {
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

/// A resumed run must validate on the clips it started with.
fn check_same_validation(
    data: &DataInfo,
    all: &[&crate::data::Clip],
    validation: &[usize],
) -> Result<()> {
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
    Ok(())
}

/// Every caption's embedding, and the pool of mixes (`--mix-prob`) with their joined captions'
/// embeddings; checks that the text bundle is the run's and records its key.
fn embed_captions(
    config: &mut RunConfig,
    all: &[&crate::data::Clip],
    train: &[usize],
    text_bundle: &Path,
    cache_root: Option<&Path>,
    ort: Option<&Path>,
) -> Result<(CaptionEmbeddings, Vec<Mix>)> {
    let start = Instant::now();
    let texts: Vec<&str> = all
        .iter()
        .flat_map(|c| c.captions.iter().map(String::as_str))
        .collect();
    // The pool of mixes: their joined captions are embedded with the others.
    let mut mixes = if config.train.mix.probability > 0.0 {
        let keys: Vec<u64> = all.iter().map(|c| caption_set_key(&c.captions)).collect();
        draw_pool(
            train,
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
    Ok((embeddings, mixes))
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
