//! `fit-head`: a projection head into the text space on a frozen pretrained backbone (aiSFX),
//! trained contrastively on cached backbone outputs.
//!
//! Each clip is cut into the extension's windows (aiSFX: 100 frames, hop 50); the frozen
//! backbone turns each window into its 512-value embedding once ([`crate::backbone`]), and
//! those are cached. A training row is a clip (or a mix of two clips described by one caption
//! of each joined with "while"): the head maps each of its windows to an L2-normalised vector,
//! and their mean, normalised again, is the clip's embedding, exactly as `audio_embed` pools a
//! file's windows. The loss is the trainer's contrastive loss against the frozen caption
//! embeddings.
//!
//! Validation reports class-level retrieval (every clip of the query's class is relevant:
//! precision at 1, mAP@10) for queries held out from training (`--queries class,query`, new
//! phrasings) beside the DCASE metrics over the clips' own captions. `--validate-on DIR`
//! validates on other copies of the validation clips (matched by file stem), such as full-band
//! originals of band-limited training data.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Param;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use clap::Args;
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::cache::{default_cache_dir, Features};
use crate::data::{read_class_queries, Dataset, Layout};
use crate::metrics::{self, ClassRetrieval};
use crate::split::{fnv1a, fold_by_group, SplitMix64};
use audiotext_core::audio::{
    decode_mono, window_bounds, AudioSource, FrontEnd, MelExtractor, Windowing,
};

use crate::backbone::{checkpoint_path, pretrained_encoder, BackboneRunner, BACKBONE_ONNX_FILE};
use crate::embed::{bar_style, caption_embeddings};
use crate::fit::{caption_set_key, lr_at, read_license, EpochLog};
use crate::loss::LossSpec;
use crate::mix::{draw_background_pool, draw_pool, Mix, MixOptions};
use crate::model::{l2_normalize, to_vec, Contrastive, ContrastiveConfig};
use crate::run::{ort_runtime, CheckpointState, DataInfo, Fold, RunConfig, TrainOptions};
pub use crate::run::{HeadRun, Sampling};

/// The head's weights in a run folder (PyTorch `nn.Linear` layout: weight `[out, in]`).
pub const HEAD_FILE: &str = "head.safetensors";
/// Clips whose windows are computed and embedded at a time (bounds the memory of log-mels).
const CHUNK_CLIPS: usize = 32;
/// Bumped when the meaning of a cached backbone output changes.
const BACKBONE_CACHE_FORMAT: &str = "ATBACK01";

#[derive(Debug, Args)]
pub struct FitHeadArgs {
    /// Dataset folder: captions.csv + audio/ (+ labels.csv for class metrics).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Pretrained backbone (frozen): aisfx.
    #[arg(long, default_value = "aisfx")]
    pub encoder: String,
    /// Its checkpoint [default: .cache/pretrained/aisfx/checkpoint.pth, from set-up].
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,
    /// Cross-validation: folds of recordings (class-balanced); without it every clip trains.
    #[arg(long, requires = "fold")]
    pub folds: Option<usize>,
    /// Which fold validates (0-based), with --folds.
    #[arg(long, requires = "folds")]
    pub fold: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Validate on the copies of the validation clips in this dataset folder (same file stems,
    /// any audio extension), e.g. full-band originals of band-limited training clips. Needs
    /// --folds (without it no clip validates).
    #[arg(long, value_name = "DIR", requires = "folds")]
    pub validate_on: Option<PathBuf>,
    /// Validation queries held out from training: CSV `class,query` (the classes of labels.csv).
    /// Without it, the validation clips' own captions are the queries. Needs --folds (without
    /// it no clip validates).
    /// May be given more than once (ESC-50's phrasings, the corpus concepts' phrasings).
    #[arg(long, value_name = "CSV", requires = "folds")]
    pub queries: Vec<PathBuf>,
    /// Only clips of these sources (`labels.csv`'s `source` column, comma-separated) train;
    /// validation keeps every source (e.g. a head trained on ESC-50 alone, scored with the
    /// corpus's clips as distractors).
    #[arg(long, value_name = "SOURCES", value_delimiter = ',')]
    pub train_sources: Vec<String>,
    /// Classes that never train (held-out concepts: what does a query for them return?).
    #[arg(long, value_name = "CLASSES", value_delimiter = ',')]
    pub holdout_classes: Vec<String>,
    /// Weighting of sources: each source's share of an epoch's rows is proportional to its
    /// clip count raised to this power (1: as the data is; 0: every source alike; 0.5 between),
    /// drawn with replacement. Needs `labels.csv`'s `source` column.
    #[arg(long, default_value_t = 1.0)]
    pub source_balance: f64,
    /// Foreground-on-background mixes in the pool: a training clip over a clip whose
    /// `labels.csv` kind is `background` (speech, music, crowds, traffic, rain), with one
    /// caption of each joined. Each mix costs one backbone pass.
    #[arg(long, default_value_t = 0)]
    pub background_mixes: usize,
    /// Chance that a training row is replaced by a foreground-on-background mix.
    #[arg(long, default_value_t = 0.0)]
    pub background_prob: f64,
    /// Caption embeddings averaged into each row's target per step (distinct captions of the
    /// clip, drawn per step; 1 = one caption, as before).
    #[arg(long, default_value_t = 1)]
    pub captions_per_step: usize,
    /// Contrastive keys by class (labels.csv) rather than by caption set: clips of one class
    /// are never negatives of each other, whatever their captions.
    #[arg(long)]
    pub class_keys: bool,
    /// Files that cannot be decoded are skipped and named; more than this share of them fails
    /// the run.
    #[arg(long, default_value_t = 0.02)]
    pub max_bad_share: f64,
    /// Front-end: gain after per-window peak normalisation, in dB.
    #[arg(long, allow_hyphen_values = true)]
    pub input_gain_db: Option<f32>,
    /// Front-end: zero the spectrum above this frequency (band-limited training data).
    #[arg(long)]
    pub lowpass_hz: Option<f32>,
    /// Chance that a training row is a mix of two clips with joined captions (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub mix_prob: f64,
    /// Mixes drawn per training clip for the pool (each costs one backbone pass).
    #[arg(long, default_value_t = 1)]
    pub mix_per_clip: usize,
    /// SpecAugment: copies of each training clip whose windows' log-mels are masked (2 time
    /// masks of up to 20 frames, 2 frequency masks of up to 12 bands) before the backbone; each
    /// step draws the clip or one of its copies. Each copy costs one backbone pass.
    #[arg(long, default_value_t = 0)]
    pub specaug_copies: usize,
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW), after one epoch of warm-up, then cosine decay.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Dropout on the backbone's output before the head (training only).
    #[arg(long, default_value_t = 0.3)]
    pub head_dropout: f64,
    /// Width of the head's hidden layer (fc + ReLU, then the projection).
    #[arg(long, default_value_t = 512)]
    pub fc_dim: usize,
    /// Softmax temperature (initial value when learned).
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f64,
    #[arg(long)]
    pub fixed_temperature: bool,
    /// Contrastive loss (as `fit --loss`).
    #[arg(long, value_name = "SPEC", default_value = "infonce")]
    pub loss: LossSpec,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate after every N-th epoch and after the last.
    #[arg(long, default_value_t = 5)]
    pub validate_every: usize,
    /// Text bundle whose sentence embeddings are the targets.
    #[arg(long, value_name = "DIR", default_value = "models/default")]
    pub text_bundle: PathBuf,
    /// Run folder to create.
    #[arg(long, value_name = "RUN_DIR")]
    pub out: PathBuf,
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub ort: Option<PathBuf>,
}

/// One training or validation item: its windows' backbone outputs (`windows x dim`).
struct Item {
    windows: Vec<f32>,
    count: usize,
}

pub fn run(args: FitHeadArgs) -> Result<()> {
    if args.out.join(crate::run::CONFIG_FILE).exists() {
        bail!(
            "{} already holds a run; pick another --out",
            args.out.display()
        );
    }
    let cache_root = args.cache.clone().unwrap_or_else(default_cache_dir);
    let mut fe = FrontEnd::aisfx();
    fe.input_gain_db = args.input_gain_db;
    fe.lowpass_hz = args.lowpass_hz;
    let windowing = Windowing::aisfx_blocks();

    // Data and split (by recording, never a recording on both sides).
    let set = Dataset::open(&args.data, &Layout::Generic)?;
    let clips = &set.clips;
    let groups: Vec<String> = clips.iter().map(|c| c.recording.clone()).collect();
    let labels: Option<Vec<String>> = set.has_labels().then(|| {
        clips
            .iter()
            .map(|c| c.label.clone().unwrap_or_default())
            .collect()
    });
    let (train, validation) = match (args.folds, args.fold) {
        (Some(count), Some(index)) => {
            if count < 2 || index >= count {
                bail!("--fold {index} of --folds {count}: pick 0 <= fold < folds, folds >= 2");
            }
            let s = fold_by_group(&groups, labels.as_deref(), count, index, args.split_seed);
            (s.train, s.validation)
        }
        _ => ((0..clips.len()).collect::<Vec<_>>(), Vec::new()),
    };
    let train = restrict_training(clips, train, &args.train_sources, &args.holdout_classes)?;
    let mut classes: Vec<String> = clips.iter().filter_map(|c| c.label.clone()).collect();
    classes.sort();
    classes.dedup();
    let class_of = |label: &Option<String>| -> Option<usize> {
        label.as_ref().and_then(|l| classes.binary_search(l).ok())
    };

    // Held-out queries, read (and their classes checked) before any backbone work.
    let mut queries: Vec<(usize, String)> = Vec::new();
    for csv in &args.queries {
        queries.extend(read_class_queries(csv, &classes)?);
    }

    // Where each validation clip is read from.
    let validation_paths: Vec<(usize, PathBuf)> = match &args.validate_on {
        None => validation
            .iter()
            .map(|&i| (i, clips[i].path.clone()))
            .collect(),
        Some(dir) => {
            let other = Dataset::open(dir, &Layout::Generic)?;
            let by_stem: HashMap<String, PathBuf> = other
                .clips
                .iter()
                .map(|c| (stem(&c.file_name), c.path.clone()))
                .collect();
            validation
                .iter()
                .filter_map(|&i| {
                    by_stem
                        .get(&stem(&clips[i].file_name))
                        .map(|p| (i, p.clone()))
                })
                .collect()
        }
    };
    println!(
        "data: {} clips, {} training, {} validating{}",
        clips.len(),
        train.len(),
        validation_paths.len(),
        match &args.validate_on {
            Some(dir) => format!(" (their copies in {})", dir.display()),
            None => String::new(),
        }
    );

    // The frozen backbone as ONNX, cached by checkpoint.
    let path = checkpoint_path(args.pretrained.as_deref())?;
    let text_dim = crate::embed::text_dim(&args.text_bundle)?;
    let mut encoder = pretrained_encoder(&args.encoder, text_dim)?;
    encoder.fc_dim = args.fc_dim;
    encoder.head_dropout = args.head_dropout;
    let info = crate::pretrained::check(&path, &encoder)?;
    let rt = ort_runtime(args.ort.as_deref())?;
    let onnx_dir =
        cache_root
            .join("backbones")
            .join(format!("{}-{}", args.encoder, &info.sha256[..16]));
    let onnx = onnx_dir.join(BACKBONE_ONNX_FILE);
    if !onnx.is_file() {
        let model = crate::backbone::load_backbone(&encoder, &info)?;
        std::fs::create_dir_all(&onnx_dir)?;
        let tmp = onnx_dir.join(format!(".{BACKBONE_ONNX_FILE}.{}", std::process::id()));
        crate::backbone::write_backbone_onnx(&model, &encoder, &tmp)?;
        let (worst, _) = crate::backbone::backbone_parity(&model, &encoder, &tmp, rt)?;
        std::fs::rename(&tmp, &onnx)?;
        println!(
            "backbone: {} (parity with the trainer {worst:.1e})",
            onnx.display()
        );
    }
    let runner = BackboneRunner::new(&onnx, &encoder, rt)?;
    let backbone_cache = BackboneCache::new(&cache_root, &fe, &windowing, &info.sha256)?;

    // Backbone outputs of every clip used.
    let start = Instant::now();
    let mut wanted: Vec<(usize, PathBuf)> =
        train.iter().map(|&i| (i, clips[i].path.clone())).collect();
    let train_count = wanted.len();
    wanted.extend(validation_paths.iter().cloned());
    let paths: Vec<&Path> = wanted.iter().map(|(_, p)| p.as_path()).collect();
    let (items, hits, bad) = backbone_cache.file_items(&paths, &fe, &windowing, &runner)?;
    let skipped = crate::run::check_bad_files(&bad, &paths, args.max_bad_share)?;
    let windows: usize = items.iter().flatten().map(|i| i.count).sum();
    let (mut train_items, mut validation_items) = (Vec::new(), Vec::new());
    let (mut kept_train, mut kept_validation) = (Vec::new(), Vec::new());
    for (n, item) in items.into_iter().enumerate() {
        match (item, n < train_count) {
            (Some(item), true) => {
                kept_train.push(wanted[n].0);
                train_items.push(item);
            }
            (Some(item), false) => {
                kept_validation.push(wanted[n].clone());
                validation_items.push(item);
            }
            (None, _) => {}
        }
    }
    let (train, validation_paths) = (kept_train, kept_validation);
    let validation: Vec<usize> = validation_paths.iter().map(|(i, _)| *i).collect();
    println!(
        "backbone: {} clips, {windows} windows ({hits} clips from the cache) in {:.1} s on {}{}",
        train_items.len() + validation_items.len(),
        start.elapsed().as_secs_f64(),
        runner.provider,
        match bad.len() {
            0 => String::new(),
            n => format!("; {n} files skipped (they cannot be decoded)"),
        }
    );

    // SpecAugment copies of the training clips.
    let train_paths: Vec<&Path> = train.iter().map(|&i| clips[i].path.as_path()).collect();
    let copies: Vec<Vec<Item>> = (1..=args.specaug_copies)
        .map(|copy| {
            let start = Instant::now();
            let (items, hits) = every_item(backbone_cache.masked_items(
                &train_paths,
                copy,
                &fe,
                &windowing,
                &runner,
            )?)?;
            println!(
                "specaug copy {copy}: {} clips ({hits} from the cache) in {:.1} s",
                items.len(),
                start.elapsed().as_secs_f64()
            );
            Ok(items)
        })
        .collect::<Result<_>>()?;

    // Mixes: one pool drawn over every clip of the dataset (so that the folds of a
    // cross-validation share their cached mixes), of which a run keeps those whose two clips
    // both train. Indices are into `clips`; the mix's level offset is fixed by its pool index.
    // Clips with one key are never each other's negatives: by default those of one caption
    // set; with --class-keys those of one class, so that a dog of one source and a dog of
    // another (captioned differently) are not pushed apart.
    let keys: Vec<u64> = clips
        .iter()
        .map(|c| match (&c.label, args.class_keys) {
            (Some(label), true) => fnv1a(format!("class\u{1f}{label}").as_bytes()),
            _ => caption_set_key(&c.captions),
        })
        .collect();
    let mut mixes: Vec<(usize, Mix)> = if args.mix_prob > 0.0 {
        training_mixes(
            draw_pool(
                &(0..clips.len()).collect::<Vec<_>>(),
                &|i| clips[i].captions.clone(),
                &|i| keys[i],
                args.mix_per_clip,
                args.seed,
            ),
            &train,
        )
    } else {
        Vec::new()
    };
    // The second clip 0 to 6 dB under the first.
    let mix_items = embed_mixes(
        "mixes",
        &mixes,
        &clips[..],
        &backbone_cache,
        &fe,
        &windowing,
        &runner,
        |n| -6.0 * SplitMix64::derive(args.seed, &[0x6d69, n as u64]).next_f64() as f32,
    )?;

    // Foreground-on-background mixes: real recordings are events over speech, music, crowds,
    // traffic or rain, and are described so. As with the mixes above, one pool is drawn over
    // every clip (the folds share its cached backbone outputs) and a run keeps the mixes whose
    // two clips both train.
    let is_background = |i: usize| clips[i].kind.as_deref() == Some("background");
    let mut background_mixes: Vec<(usize, Mix)> = if args.background_mixes > 0 {
        let (backgrounds, foregrounds): (Vec<usize>, Vec<usize>) =
            (0..clips.len()).partition(|&i| is_background(i));
        training_mixes(
            draw_background_pool(
                &foregrounds,
                &backgrounds,
                &|i| clips[i].captions.clone(),
                &|i| keys[i],
                args.background_mixes,
                args.seed,
            ),
            &train,
        )
    } else {
        Vec::new()
    };
    // The background 4 to 16 dB under the foreground's peak.
    let background_items = embed_mixes(
        "background mixes",
        &background_mixes,
        &clips[..],
        &backbone_cache,
        &fe,
        &windowing,
        &runner,
        |n| -4.0 - 12.0 * SplitMix64::derive(args.seed, &[0x6267, n as u64]).next_f64() as f32,
    )?;

    // Caption and query embeddings.
    let mut texts: Vec<&str> = train
        .iter()
        .chain(&validation)
        .flat_map(|&i| clips[i].captions.iter().map(String::as_str))
        .collect();
    texts.extend(mixes.iter().map(|(_, m)| m.caption.as_str()));
    texts.extend(background_mixes.iter().map(|(_, m)| m.caption.as_str()));
    texts.extend(queries.iter().map(|(_, q)| q.as_str()));
    let embeddings = caption_embeddings(
        &args.text_bundle,
        &texts,
        Some(&cache_root),
        args.ort.as_deref(),
    )?;
    for m in mixes
        .iter_mut()
        .map(|(_, m)| m)
        .chain(background_mixes.iter_mut().map(|(_, m)| m))
    {
        m.embedding = embeddings.by_text[&m.caption].clone();
    }

    let config = RunConfig {
        format_version: crate::run::RUN_FORMAT_VERSION,
        model: ContrastiveConfig {
            encoder: encoder.clone(),
            text_head: false,
            temperature: args.temperature,
            learn_temperature: !args.fixed_temperature,
        },
        train: TrainOptions {
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            min_lr_ratio: 0.01,
            warmup_epochs: 1.0,
            weight_decay: args.weight_decay,
            seed: args.seed,
            max_frames: 0,
            specaug: crate::specaug::SpecAugment {
                time_masks: 0,
                time_mask_frames: 0,
                freq_masks: 0,
                freq_mask_bands: 0,
            },
            clip_grad_norm: 0.0,
            keep_checkpoints: 0,
            loss: args.loss.clone(),
            mix: MixOptions {
                probability: args.mix_prob,
                per_clip: args.mix_per_clip,
            },
            validate_every: args.validate_every,
        },
        front_end: fe.clone(),
        windowing: windowing.clone(),
        data: Some(DataInfo {
            root: args.data.clone(),
            layout: "generic".into(),
            validation_split: None,
            validation_fraction: 0.0,
            fold: args
                .folds
                .zip(args.fold)
                .map(|(count, index)| Fold { index, count }),
            split_seed: args.split_seed,
            train_clips: train.len(),
            validation_files: validation
                .iter()
                .map(|&i| clips[i].file_name.clone())
                .collect(),
            license: read_license(&args.data),
            max_bad_share: args.max_bad_share,
            skipped_files: skipped,
        }),
        text_bundle: Some(args.text_bundle.clone()),
        text_key: Some(embeddings.key.clone()),
        text_model: Some(embeddings.model.clone()),
        pretrained: Some(info),
        head: Some(HeadRun {
            head_file: HEAD_FILE.into(),
            validate_on: args.validate_on.clone(),
            queries: args.queries.first().cloned(),
            more_queries: args.queries.iter().skip(1).cloned().collect(),
            mixes: mixes.len(),
            sampling: Sampling {
                train_sources: args.train_sources.clone(),
                holdout_classes: args.holdout_classes.clone(),
                source_balance: args.source_balance,
                background_mixes: background_mixes.len(),
                background_prob: args.background_prob,
                captions_per_step: args.captions_per_step,
                class_keys: args.class_keys,
            },
        }),
    };
    config.write(&args.out)?;

    // Training rows: the clips, then the mixes.
    let text_of = |i: usize| -> Vec<Vec<f32>> {
        clips[i]
            .captions
            .iter()
            .map(|t| embeddings.by_text[t].clone())
            .collect()
    };
    let rows: Vec<Row> = train
        .iter()
        .zip(&train_items)
        .enumerate()
        .map(|(n, (&i, item))| Row {
            items: std::iter::once(item)
                .chain(copies.iter().map(|c| &c[n]))
                .collect(),
            captions: text_of(i),
            key: keys[i],
        })
        .collect();
    let mix_rows: Vec<Row> = mixes
        .iter()
        .map(|(_, m)| m)
        .zip(&mix_items)
        .map(mix_row)
        .collect();
    let background_rows: Vec<Row> = background_mixes
        .iter()
        .map(|(_, m)| m)
        .zip(&background_items)
        .map(mix_row)
        .collect();
    let weights = source_weights(
        &train
            .iter()
            .map(|&i| clips[i].source.clone())
            .collect::<Vec<_>>(),
        args.source_balance,
    );
    let reference = |i: usize| clips[i].source.as_deref() == Some(REFERENCE_SOURCE);
    let reference_classes: std::collections::HashSet<usize> = validation
        .iter()
        .filter(|&&i| reference(i))
        .filter_map(|&i| class_of(&clips[i].label))
        .collect();
    let by_text = &embeddings.by_text;
    let validation_set = Validation {
        items: &validation_items,
        clip_is_reference: validation.iter().map(|&i| reference(i)).collect(),
        query_is_reference: queries
            .iter()
            .map(|(c, _)| reference_classes.contains(c))
            .collect(),
        clip_class: validation_paths
            .iter()
            .map(|(i, _)| class_of(&clips[*i].label).unwrap_or(usize::MAX))
            .collect(),
        caption_queries: validation_paths
            .iter()
            .enumerate()
            .flat_map(|(n, (i, _))| {
                clips[*i]
                    .captions
                    .iter()
                    .map(move |t| (n, by_text[t].clone()))
            })
            .collect(),
        class_queries: queries
            .iter()
            .map(|(c, q)| (*c, embeddings.by_text[q].clone()))
            .collect(),
    };
    let draws = Draws {
        mix_rows: &mix_rows,
        background_rows: &background_rows,
        background_prob: args.background_prob,
        captions_per_step: args.captions_per_step.max(1),
        weights,
    };
    let (logs, model) = train_head(&config, &rows, &draws, &validation_set, &args.out)?;
    if !args.holdout_classes.is_empty() && !validation_set.items.is_empty() {
        let path = args.out.join(HOLDOUT_FILE);
        write_holdout_report(
            &model,
            &validation_set,
            &queries,
            &classes,
            &args.holdout_classes,
            &path,
        )?;
        println!(
            "held-out concepts: what their queries find is in {}",
            path.display()
        );
    }
    if let Some(last) = logs.last() {
        println!(
            "done: {} epochs; last: loss {:.4}{}",
            last.epoch,
            last.train_loss,
            match (last.class_p1, last.class_map10) {
                (Some(p1), Some(map)) => format!(", class P@1 {p1:.3}, class mAP@10 {map:.3}"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// The mixes of a pool (with their pool index) whose two clips both train.
fn training_mixes(pool: Vec<Mix>, train: &[usize]) -> Vec<(usize, Mix)> {
    let trains: std::collections::HashSet<usize> = train.iter().copied().collect();
    pool.into_iter()
        .enumerate()
        .filter(|(_, m)| trains.contains(&m.first) && trains.contains(&m.second))
        .collect()
}

/// Backbone outputs of a pool's mixes (`(pool index, mix)`), the second clip `gain_db(index)`
/// under the first; reports the count and the cache's share as `label`.
#[allow(clippy::too_many_arguments)]
fn embed_mixes(
    label: &str,
    mixes: &[(usize, Mix)],
    clips: &[crate::data::Clip],
    cache: &BackboneCache,
    fe: &FrontEnd,
    windowing: &Windowing,
    runner: &BackboneRunner,
    gain_db: impl Fn(usize) -> f32,
) -> Result<Vec<Item>> {
    if mixes.is_empty() {
        return Ok(Vec::new());
    }
    let start = Instant::now();
    let pairs: Vec<(&Path, &Path, f32)> = mixes
        .iter()
        .map(|(n, m)| {
            (
                clips[m.first].path.as_path(),
                clips[m.second].path.as_path(),
                gain_db(*n),
            )
        })
        .collect();
    let (items, hits) = every_item(cache.mix_items(&pairs, fe, windowing, runner)?)?;
    println!(
        "{label}: {} pairs ({hits} from the cache) in {:.1} s",
        items.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(items)
}

/// A mix's training row: its one item and its joined caption.
fn mix_row<'a>((m, item): (&Mix, &'a Item)) -> Row<'a> {
    Row {
        items: vec![item],
        captions: vec![m.embedding.clone()],
        key: m.key,
    }
}

/// The training clips left once `--train-sources` and `--holdout-classes` are applied.
fn restrict_training(
    clips: &[crate::data::Clip],
    train: Vec<usize>,
    sources: &[String],
    holdout: &[String],
) -> Result<Vec<usize>> {
    if !sources.is_empty() {
        let known: std::collections::HashSet<&str> =
            clips.iter().filter_map(|c| c.source.as_deref()).collect();
        if let Some(s) = sources.iter().find(|s| !known.contains(s.as_str())) {
            bail!(
                "--train-sources {s}: no clip of labels.csv has that source (it has: {})",
                {
                    let mut k: Vec<&str> = known.into_iter().collect();
                    k.sort();
                    k.join(", ")
                }
            );
        }
    }
    let kept: Vec<usize> = train
        .into_iter()
        .filter(|&i| {
            let c = &clips[i];
            (sources.is_empty() || c.source.as_ref().is_some_and(|s| sources.contains(s)))
                && !c.label.as_ref().is_some_and(|l| holdout.contains(l))
        })
        .collect();
    if kept.len() < 2 {
        bail!(
            "--train-sources and --holdout-classes leave {} training clips",
            kept.len()
        );
    }
    Ok(kept)
}

/// Items that must all exist (augmented copies of clips that decoded once already).
fn every_item(
    (items, hits, bad): (Vec<Option<Item>>, usize, Vec<(usize, String)>),
) -> Result<(Vec<Item>, usize)> {
    if let Some((_, error)) = bad.first() {
        bail!("{error}");
    }
    Ok((items.into_iter().flatten().collect(), hits))
}

/// Per training row, the chance of drawing it so that each source's share of an epoch is
/// proportional to its clip count raised to `power`; None when that is every row alike.
fn source_weights(sources: &[Option<String>], power: f64) -> Option<Vec<f64>> {
    let mut counts: HashMap<Option<&str>, usize> = HashMap::new();
    for s in sources {
        *counts.entry(s.as_deref()).or_default() += 1;
    }
    if (power - 1.0).abs() < 1e-12 || counts.len() < 2 {
        return None;
    }
    // A row's weight is count^power / count: the source's share spread over its rows.
    let weights: Vec<f64> = sources
        .iter()
        .map(|s| (counts[&s.as_deref()] as f64).powf(power - 1.0))
        .collect();
    let total: f64 = weights.iter().sum();
    Some(weights.into_iter().map(|w| w / total).collect())
}

/// `n` draws with replacement from `weights` (summing to 1).
fn weighted_order(weights: &[f64], n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut sum = 0.0;
    for w in weights {
        sum += w;
        cumulative.push(sum);
    }
    (0..n)
        .map(|_| {
            let x = rng.next_f64() * sum;
            cumulative
                .partition_point(|&c| c <= x)
                .min(weights.len() - 1)
        })
        .collect()
}

/// The normalised mean of up to `k` distinct captions of a row, drawn by `rng`.
fn caption_target(captions: &[Vec<f32>], k: usize, rng: &mut SplitMix64) -> Vec<f32> {
    if k <= 1 || captions.len() == 1 {
        return captions[rng.below(captions.len())].clone();
    }
    let mut picks: Vec<usize> = (0..captions.len()).collect();
    rng.shuffle(&mut picks);
    let mut mean = vec![0f32; captions[0].len()];
    for &p in picks.iter().take(k) {
        for (m, v) in mean.iter_mut().zip(&captions[p]) {
            *m += v;
        }
    }
    let norm = mean
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    mean.iter().map(|v| v / norm).collect()
}

fn stem(file_name: &str) -> String {
    Path::new(file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A training row: an item (or several versions of it, one drawn per step) with its caption
/// embeddings (one drawn per step) and its contrastive key.
struct Row<'a> {
    items: Vec<&'a Item>,
    captions: Vec<Vec<f32>>,
    key: u64,
}

impl Validation<'_> {
    /// Values per window of the backbone's output.
    fn dim(&self) -> usize {
        self.items
            .first()
            .map_or(0, |i| i.windows.len() / i.count.max(1))
    }
}

/// The source whose clips and classes the open-world metrics treat as the reference set
/// (ESC-50): its queries are scored with and without the other sources' clips as distractors.
const REFERENCE_SOURCE: &str = "esc50";

/// How a step draws its rows beside the training clips.
struct Draws<'a> {
    mix_rows: &'a [Row<'a>],
    background_rows: &'a [Row<'a>],
    background_prob: f64,
    captions_per_step: usize,
    /// Per training row, its chance of being drawn (None: every row once an epoch).
    weights: Option<Vec<f64>>,
}

struct Validation<'a> {
    items: &'a [Item],
    clip_class: Vec<usize>,
    /// Per clip: from the reference source (ESC-50)?
    clip_is_reference: Vec<bool>,
    /// Per class query: of a class the reference source has?
    query_is_reference: Vec<bool>,
    /// (validation clip, caption embedding): the DCASE metrics' queries.
    caption_queries: Vec<(usize, Vec<f32>)>,
    /// (class, query embedding): held-out phrasings.
    class_queries: Vec<(usize, Vec<f32>)>,
}

/// Items `[windows x dim]` stacked, and the `[items x windows]` matrix that averages each
/// item's windows.
fn stack(items: &[&Item], dim: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let total: usize = items.iter().map(|i| i.count).sum();
    let mut values = Vec::with_capacity(total * dim);
    let mut mean = vec![0f32; items.len() * total];
    let mut w = 0;
    for (r, item) in items.iter().enumerate() {
        values.extend_from_slice(&item.windows);
        for k in 0..item.count {
            mean[r * total + w + k] = 1.0 / item.count as f32;
        }
        w += item.count;
    }
    (
        Tensor::from_data(TensorData::new(values, [total, dim]), device),
        Tensor::from_data(TensorData::new(mean, [items.len(), total]), device),
    )
}

/// Each item's clip embedding, one vector per item (see [`embed_items`]).
fn clip_embeddings(model: &Contrastive, items: &[Item], dim: usize) -> Vec<Vec<f32>> {
    let items: Vec<&Item> = items.iter().collect();
    to_vec(embed_items(model, &items, dim, &Device::flex()))
        .chunks(model.audio.proj.weight.val().dims()[1])
        .map(<[f32]>::to_vec)
        .collect()
}

/// Clip embeddings: the head on each window, the mean, L2-normalised (as `audio_embed`).
fn embed_items(model: &Contrastive, items: &[&Item], dim: usize, device: &Device) -> Tensor<2> {
    let (windows, mean) = stack(items, dim, device);
    l2_normalize(mean.matmul(model.audio.head(windows)))
}

fn train_head(
    config: &RunConfig,
    rows: &[Row],
    draws: &Draws,
    validation: &Validation,
    run_dir: &Path,
) -> Result<(Vec<EpochLog>, Contrastive)> {
    let t = &config.train;
    let base = Device::flex();
    let ad = base.clone().autodiff();
    base.seed(t.seed);
    let mut model = config.model.init(&ad);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(t.weight_decay as f32)
        .init();
    let dim = config.model.encoder.pooled_dim();
    let text_dim = config.model.encoder.embedding_dim;
    let steps = rows.len().div_ceil(t.batch_size);
    let total = steps * t.epochs;
    let warmup = (t.warmup_epochs * steps as f64).round() as usize;
    let mut step = 0;
    let mut logs = Vec::new();
    let metrics_path = run_dir.join(crate::run::METRICS_FILE);
    let _ = std::fs::remove_file(&metrics_path);
    for epoch in 1..=t.epochs {
        let started = Instant::now();
        base.seed(t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let mut shuffle = SplitMix64::derive(t.seed, &[epoch as u64, 1]);
        let order: Vec<usize> = match &draws.weights {
            Some(w) => weighted_order(w, rows.len(), &mut shuffle),
            None => {
                let mut order: Vec<usize> = (0..rows.len()).collect();
                shuffle.shuffle(&mut order);
                order
            }
        };
        let mut pick = SplitMix64::derive(t.seed, &[epoch as u64, 2]);
        let mut aug = SplitMix64::derive(t.seed, &[epoch as u64, 3]);
        let (mut loss_sum, mut done, mut lr) = (0.0, 0usize, 0.0);
        for batch in order.chunks(t.batch_size).filter(|b| b.len() >= 2) {
            let chosen: Vec<&Row> = batch
                .iter()
                .map(|&r| {
                    if !draws.mix_rows.is_empty() && aug.next_f64() < t.mix.probability {
                        &draws.mix_rows[aug.below(draws.mix_rows.len())]
                    } else if !draws.background_rows.is_empty()
                        && aug.next_f64() < draws.background_prob
                    {
                        &draws.background_rows[aug.below(draws.background_rows.len())]
                    } else {
                        &rows[r]
                    }
                })
                .collect();
            let items: Vec<&Item> = chosen
                .iter()
                .map(|r| r.items[aug.below(r.items.len())])
                .collect();
            let (windows, mean) = stack(&items, dim, &ad);
            let audio = l2_normalize(mean.matmul(model.audio.head(windows)));
            let mut text = Vec::with_capacity(chosen.len() * text_dim);
            for row in &chosen {
                text.extend(caption_target(
                    &row.captions,
                    draws.captions_per_step,
                    &mut pick,
                ));
            }
            let text = model.text(Tensor::from_data(
                TensorData::new(text, [chosen.len(), text_dim]),
                &ad,
            ));
            let keys: Vec<u64> = chosen.iter().map(|r| r.key).collect();
            let scale = model.scale(config.model.temperature, &ad);
            let loss = t.loss.compute(audio, text, scale, &keys);
            let value = to_vec(loss.clone())[0] as f64;
            if !value.is_finite() {
                bail!(
                    "the loss became {value} at step {} (epoch {epoch}); lower --lr",
                    step + 1
                );
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            lr = lr_at(step, total, warmup, t.lr, t.min_lr_ratio);
            model = optim.step(lr, model, grads);
            step += 1;
            done += 1;
            loss_sum += value;
        }
        let mut log = EpochLog {
            epoch,
            steps: done,
            train_loss: loss_sum / done.max(1) as f64,
            temperature: model.temperature(config.model.temperature),
            lr,
            ..Default::default()
        };
        let train_seconds = started.elapsed().as_secs_f64();
        log.seconds_per_step = train_seconds / done.max(1) as f64;
        let validate_now = epoch % t.validate_every.max(1) == 0 || epoch == t.epochs;
        if validate_now && !validation.items.is_empty() {
            let v = Instant::now();
            validate(&model.valid(), validation, dim, &mut log);
            log.validation_seconds = v.elapsed().as_secs_f64();
        }
        log.seconds = started.elapsed().as_secs_f64();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("cannot write {}", metrics_path.display()))?;
        writeln!(file, "{}", serde_json::to_string(&log)?)?;
        println!("{}", epoch_line(&log, t.epochs));
        logs.push(log);
    }
    save_head(&model.valid(), &run_dir.join(HEAD_FILE))?;
    let state = CheckpointState {
        epoch: t.epochs,
        step,
        best_epoch: None,
        best_map10: None,
    };
    let dir = run_dir.join(crate::run::CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("last.json"),
        serde_json::to_string_pretty(&state)? + "\n",
    )?;
    if let Err(e) = crate::plot::write_plots(run_dir, &logs) {
        eprintln!("warning: cannot draw the plots: {e:#}");
    }
    Ok((logs, model.valid()))
}

fn epoch_line(log: &EpochLog, epochs: usize) -> String {
    let mut line = format!(
        "epoch {}/{epochs}: loss {:.4}, temperature {:.4}, lr {:.2e}",
        log.epoch, log.train_loss, log.temperature, log.lr
    );
    if let (Some(p1), Some(map)) = (log.class_p1, log.class_map10) {
        line += &format!("; queries: class P@1 {p1:.3}, class mAP@10 {map:.3}");
    }
    if let (Some(r1), Some(map)) = (log.t2a_r1, log.t2a_map10) {
        line += &format!("; captions: R@1 {r1:.3}, mAP@10 {map:.3}");
    }
    if let Some(p) = log.class_p10 {
        line += &format!(", class P@10 {p:.3}");
    }
    if let Some(o) = &log.open_world {
        line += &format!(
            "; ESC-50 P@1 {:.3} alone, {:.3} among {} clips; others P@1 {}, caption mAP@10 {:.3}",
            o.reference_alone_p1,
            o.reference_with_distractors_p1,
            o.gallery_clips,
            o.others_p1.map_or("-".into(), |p| format!("{p:.3}")),
            o.others_caption_map10
        );
    }
    line
}

/// Validation metrics into `log`: class retrieval for the held-out queries (or, without them,
/// the captions), DCASE metrics for the captions.
fn validate(model: &Contrastive, v: &Validation, dim: usize, log: &mut EpochLog) {
    let clips = clip_embeddings(model, v.items, dim);
    let captions: Vec<Vec<f32>> = v.caption_queries.iter().map(|(_, e)| e.clone()).collect();
    let caption_clip: Vec<usize> = v.caption_queries.iter().map(|(c, _)| *c).collect();
    let sim = metrics::similarity(&captions, &clips);
    let t2a = metrics::text_to_audio(&sim, &caption_clip, clips.len());
    log.t2a_r1 = Some(t2a.r1);
    log.t2a_r5 = Some(t2a.r5);
    log.t2a_r10 = Some(t2a.r10);
    log.t2a_map10 = Some(t2a.map10);
    let class: ClassRetrieval = if v.class_queries.is_empty() {
        let query_class: Vec<usize> = caption_clip.iter().map(|&c| v.clip_class[c]).collect();
        metrics::class_retrieval(&sim, &query_class, &v.clip_class)
    } else {
        let queries: Vec<Vec<f32>> = v.class_queries.iter().map(|(_, e)| e.clone()).collect();
        let query_class: Vec<usize> = v.class_queries.iter().map(|(c, _)| *c).collect();
        metrics::class_retrieval(
            &metrics::similarity(&queries, &clips),
            &query_class,
            &v.clip_class,
        )
    };
    log.class_p1 = Some(class.p1);
    log.class_map10 = Some(class.map10);
    log.class_p10 = Some(class.p10);
    log.open_world = open_world(v, &clips, &caption_clip, &captions);
}

/// The open-world metrics, when the gallery holds reference (ESC-50) clips and others.
fn open_world(
    v: &Validation,
    clips: &[Vec<f32>],
    caption_clip: &[usize],
    captions: &[Vec<f32>],
) -> Option<crate::fit::OpenWorldMetrics> {
    let reference_clips = v.clip_is_reference.iter().filter(|&&r| r).count();
    if reference_clips == 0 || reference_clips == clips.len() || v.class_queries.is_empty() {
        return None;
    }
    let scored = |queries: &[&(usize, Vec<f32>)], gallery: &[usize]| {
        let q: Vec<Vec<f32>> = queries.iter().map(|(_, e)| e.clone()).collect();
        let g: Vec<Vec<f32>> = gallery.iter().map(|&c| clips[c].clone()).collect();
        let query_class: Vec<usize> = queries.iter().map(|(c, _)| *c).collect();
        let clip_class: Vec<usize> = gallery.iter().map(|&c| v.clip_class[c]).collect();
        metrics::class_retrieval(&metrics::similarity(&q, &g), &query_class, &clip_class)
    };
    let (reference_queries, other_queries): (Vec<_>, Vec<_>) = v
        .class_queries
        .iter()
        .zip(&v.query_is_reference)
        .partition(|(_, &r)| r);
    let reference_queries: Vec<&(usize, Vec<f32>)> =
        reference_queries.into_iter().map(|(q, _)| q).collect();
    let other_queries: Vec<&(usize, Vec<f32>)> =
        other_queries.into_iter().map(|(q, _)| q).collect();
    let everything: Vec<usize> = (0..clips.len()).collect();
    let reference: Vec<usize> = everything
        .iter()
        .copied()
        .filter(|&c| v.clip_is_reference[c])
        .collect();
    let alone = scored(&reference_queries, &reference);
    let with_distractors = scored(&reference_queries, &everything);
    let others = (!other_queries.is_empty()).then(|| scored(&other_queries, &everything));
    // The other sources' clips, each found by its own captions among all clips.
    let (other_captions, other_targets): (Vec<Vec<f32>>, Vec<usize>) = captions
        .iter()
        .zip(caption_clip)
        .filter(|(_, &c)| !v.clip_is_reference[c])
        .map(|(e, &c)| (e.clone(), c))
        .unzip();
    let t2a = metrics::text_to_audio(
        &metrics::similarity(&other_captions, clips),
        &other_targets,
        clips.len(),
    );
    Some(crate::fit::OpenWorldMetrics {
        reference_alone_p1: alone.p1,
        reference_alone_map10: alone.map10,
        reference_with_distractors_p1: with_distractors.p1,
        reference_with_distractors_map10: with_distractors.map10,
        others_p1: others.as_ref().map(|m| m.p1),
        others_map10: others.as_ref().map(|m| m.map10),
        others_caption_r1: t2a.r1,
        others_caption_r10: t2a.r10,
        others_caption_map10: t2a.map10,
        gallery_clips: clips.len(),
        reference_clips,
    })
}

/// The run's report on concepts that never trained (`--holdout-classes`).
const HOLDOUT_FILE: &str = "holdout.tsv";

/// For each query of a held-out class: its class, the query, the best clip's score, and the
/// classes of the five best clips of the validation gallery, best first.
fn write_holdout_report(
    model: &Contrastive,
    v: &Validation,
    queries: &[(usize, String)],
    classes: &[String],
    holdout: &[String],
    path: &Path,
) -> Result<()> {
    let clips = clip_embeddings(model, v.items, v.dim());
    let mut out = String::from("class\tquery\ttop score\ttop 5 classes\n");
    for ((class, text), (_, embedding)) in queries.iter().zip(&v.class_queries) {
        if !holdout.contains(&classes[*class]) {
            continue;
        }
        let sim = metrics::similarity(std::slice::from_ref(embedding), &clips);
        let mut order: Vec<usize> = (0..clips.len()).collect();
        order.sort_by(|&a, &b| sim[b].total_cmp(&sim[a]));
        let top: Vec<&str> = order
            .iter()
            .take(5)
            .map(|&c| classes.get(v.clip_class[c]).map_or("?", String::as_str))
            .collect();
        out += &format!(
            "{}\t{text}\t{:.3}\t{}\n",
            classes[*class],
            sim[order[0]],
            top.join(", ")
        );
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the head (fc, proj and the learned scale) in PyTorch's `nn.Linear` layout.
fn save_head(model: &Contrastive, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, linear) in [("fc", &model.audio.fc), ("proj", &model.audio.proj)] {
        let [i, o] = linear.weight.val().dims();
        tensors.push((
            format!("{name}.weight"),
            vec![o, i],
            crate::encoders::blocks::out_in(linear),
        ));
        if let Some(b) = &linear.bias {
            tensors.push((format!("{name}.bias"), vec![o], to_vec(b.val())));
        }
    }
    if let Some(s) = &model.log_scale {
        tensors.push(("log_scale".into(), vec![1], to_vec(s.val())));
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(n, shape, v)| (n, v.iter().flat_map(|x| x.to_le_bytes()).collect(), shape))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, shape)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let data = safetensors::serialize(views, None)?;
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// Loads a head written by [`save_head`] into `model` (on `device`).
pub fn load_head(mut model: Contrastive, path: &Path, device: &Device) -> Result<Contrastive> {
    let state = crate::checkpoint::read_safetensors(path)
        .with_context(|| format!("cannot read the head {}", path.display()))?;
    for (name, linear) in [("fc", &mut model.audio.fc), ("proj", &mut model.audio.proj)] {
        let [i, o] = linear.weight.lazy_shape().dims::<2>();
        let w = state
            .get(&format!("{name}.weight"))
            .with_context(|| format!("{} has no {name}.weight", path.display()))?;
        if w.shape != [o, i] {
            bail!(
                "{}: {name}.weight is {:?}, the run's encoder needs [{o}, {i}]",
                path.display(),
                w.shape
            );
        }
        let mut t = vec![0f32; w.data.len()];
        for r in 0..o {
            for c in 0..i {
                t[c * o + r] = w.data[r * i + c];
            }
        }
        linear.weight = Param::from_tensor(Tensor::from_data(TensorData::new(t, [i, o]), device));
        if linear.bias.is_some() {
            let b = state
                .get(&format!("{name}.bias"))
                .with_context(|| format!("{} has no {name}.bias", path.display()))?;
            linear.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b.data.clone(), [o]),
                device,
            )));
        }
    }
    if model.log_scale.is_some() {
        if let Some(s) = state.get("log_scale") {
            model.log_scale = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(s.data.clone(), [1]),
                device,
            )));
        }
    }
    Ok(model)
}

/// Backbone outputs cached per file (or mix) and front-end, under `<cache>/backbone/`.
struct BackboneCache {
    dir: PathBuf,
    /// Hash of everything but the file: format, front-end, windowing, checkpoint.
    setting: String,
}

impl BackboneCache {
    fn new(
        root: &Path,
        fe: &FrontEnd,
        windowing: &Windowing,
        checkpoint_sha256: &str,
    ) -> Result<BackboneCache> {
        let setting = format!(
            "{BACKBONE_CACHE_FORMAT}\u{1f}{}\u{1f}{}\u{1f}{checkpoint_sha256}",
            serde_json::to_string(fe)?,
            serde_json::to_string(windowing)?
        );
        Ok(BackboneCache {
            dir: root.join("backbone"),
            setting,
        })
    }

    /// The cache file of `what` (a description of the source: paths, sizes, times, gains).
    fn file(&self, what: &str) -> PathBuf {
        let key = format!(
            "{:016x}{:016x}",
            fnv1a(format!("{}\u{1e}{what}", self.setting).as_bytes()),
            fnv1a(format!("{what}\u{1e}{}", self.setting).as_bytes())
        );
        self.dir.join(&key[..2]).join(key)
    }

    fn read(&self, file: &Path, dim: usize) -> Option<Item> {
        let bytes = std::fs::read(file).ok()?;
        let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        if bytes.len() != 4 + count * dim * 4 || count == 0 {
            return None;
        }
        let windows = bytes[4..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Some(Item { windows, count })
    }

    fn write(&self, file: &Path, item: &Item) -> Result<()> {
        let dir = file.parent().expect("cache file in a folder");
        std::fs::create_dir_all(dir)?;
        let mut bytes = (item.count as u32).to_le_bytes().to_vec();
        bytes.extend(item.windows.iter().flat_map(|v| v.to_le_bytes()));
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)?;
        Ok(())
    }

    /// Items of `sources` (each a cache description and a way to compute its windows' log-mels),
    /// from the cache or computed CHUNK_CLIPS at a time: log-mels in parallel, then the backbone.
    fn items<S: Sync>(
        &self,
        sources: &[S],
        describe: impl Fn(&S) -> Result<String> + Sync,
        windows: impl Fn(&S) -> Result<Vec<Features>> + Sync,
        runner: &BackboneRunner,
    ) -> Result<(Vec<Option<Item>>, usize, Vec<(usize, String)>)> {
        let dim = runner.dim();
        let files: Vec<PathBuf> = sources
            .iter()
            .map(|s| Ok(self.file(&describe(s)?)))
            .collect::<Result<_>>()?;
        let mut out: Vec<Option<Item>> = files.iter().map(|f| self.read(f, dim)).collect();
        let hits = out.iter().filter(|i| i.is_some()).count();
        let missing: Vec<usize> = (0..sources.len()).filter(|&i| out[i].is_none()).collect();
        let bar = ProgressBar::new(missing.len() as u64)
            .with_style(bar_style("clips"))
            .with_message("backbone");
        let mut bad = Vec::new();
        for chunk in missing.chunks(CHUNK_CLIPS) {
            // A source that cannot be decoded is skipped and reported, not the end of the run.
            let decoded: Vec<Result<Vec<Features>>> =
                chunk.par_iter().map(|&i| windows(&sources[i])).collect();
            let mut mels = Vec::with_capacity(chunk.len());
            let mut good = Vec::with_capacity(chunk.len());
            for (&i, d) in chunk.iter().zip(decoded) {
                match d {
                    Ok(m) => {
                        good.push(i);
                        mels.push(m);
                    }
                    Err(e) => bad.push((i, format!("{e:#}"))),
                }
            }
            let flat: Vec<&Features> = mels.iter().flatten().collect();
            let vectors = runner.embed(&flat)?;
            let mut next = vectors.into_iter();
            for (&i, clip) in good.iter().zip(&mels) {
                let mut windows = Vec::with_capacity(clip.len() * dim);
                for v in next.by_ref().take(clip.len()) {
                    windows.extend(v);
                }
                let item = Item {
                    windows,
                    count: clip.len(),
                };
                self.write(&files[i], &item)?;
                out[i] = Some(item);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        bad.sort();
        Ok((out, hits, bad))
    }

    /// Items of audio files: the extension's own windows of each.
    fn file_items(
        &self,
        paths: &[&Path],
        fe: &FrontEnd,
        windowing: &Windowing,
        runner: &BackboneRunner,
    ) -> Result<(Vec<Option<Item>>, usize, Vec<(usize, String)>)> {
        self.items(
            paths,
            |p| file_identity(p),
            |p| {
                let windows = crate::features::file_windows(&[*p], fe, windowing, false, || {})?;
                let windows = windows.into_iter().next().unwrap_or_default();
                if windows.is_empty() {
                    bail!("{} has no audio", p.display());
                }
                Ok(windows)
            },
            runner,
        )
    }

    /// Items of SpecAugment copy `copy` of audio files: each window's log-mel masked (seeded by
    /// the file and the copy) before the backbone.
    fn masked_items(
        &self,
        paths: &[&Path],
        copy: usize,
        fe: &FrontEnd,
        windowing: &Windowing,
        runner: &BackboneRunner,
    ) -> Result<(Vec<Option<Item>>, usize, Vec<(usize, String)>)> {
        let masks = crate::specaug::SpecAugment {
            time_masks: 2,
            time_mask_frames: 20,
            freq_masks: 2,
            freq_mask_bands: 12,
        };
        let describe = |p: &&Path| {
            Ok(format!(
                "specaug{copy}:{masks:?}\u{1f}{}",
                file_identity(p)?
            ))
        };
        self.items(
            paths,
            describe,
            |p| {
                let mut rng = SplitMix64::derive(fnv1a(describe(p)?.as_bytes()), &[copy as u64]);
                let mut windows =
                    crate::features::file_windows(&[*p], fe, windowing, false, || {})?
                        .into_iter()
                        .next()
                        .unwrap_or_default();
                for w in &mut windows {
                    masks.apply(w, fe.n_mels, &mut rng);
                }
                Ok(windows)
            },
            runner,
        )
    }

    /// Items of mixes: `first + 10^(gain_db / 20) * second`, each peak-normalised over the
    /// whole clip first, the shorter one silent after its end; then the extension's windows.
    fn mix_items(
        &self,
        pairs: &[(&Path, &Path, f32)],
        fe: &FrontEnd,
        windowing: &Windowing,
        runner: &BackboneRunner,
    ) -> Result<(Vec<Option<Item>>, usize, Vec<(usize, String)>)> {
        let mel = MelExtractor::new(fe).context("invalid front-end settings")?;
        self.items(
            pairs,
            |(a, b, gain)| {
                Ok(format!(
                    "mix\u{1f}{}\u{1f}{}\u{1f}{gain}",
                    file_identity(a)?,
                    file_identity(b)?
                ))
            },
            |(a, b, gain)| {
                let decode = |p: &Path| {
                    decode_mono(&AudioSource::Path(p), fe.sample_rate)
                        .with_context(|| format!("cannot decode {}", p.display()))
                };
                let (x, y) = (decode(a)?, decode(b)?);
                let peak = |s: &[f32]| {
                    s.iter()
                        .fold(0f32, |m, v| m.max(v.abs()))
                        .max(f32::MIN_POSITIVE)
                };
                let (px, py) = (peak(&x), peak(&y) / 10f32.powf(gain / 20.0));
                let mut mixed = vec![0f32; x.len().max(y.len())];
                for (i, m) in mixed.iter_mut().enumerate() {
                    *m = x.get(i).map_or(0.0, |v| v / px) + y.get(i).map_or(0.0, |v| v / py);
                }
                Ok(window_bounds(mixed.len(), fe.sample_rate, windowing)?
                    .into_iter()
                    .map(|(s, e)| {
                        let m = mel.compute(&mixed[s..e]);
                        Features {
                            samples: 0,
                            frames: m.frames,
                            n_mels: m.n_mels,
                            data: m.data,
                            waveform: Vec::new(),
                        }
                    })
                    .collect())
            },
            runner,
        )
    }
}

/// A file's path, size and modification time: a changed file misses the cache.
fn file_identity(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    Ok(format!(
        "{}\u{1f}{}\u{1f}{modified}",
        canonical.display(),
        meta.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_weights_share_an_epoch_by_a_power_of_the_counts() {
        let sources: Vec<Option<String>> = ["a", "a", "a", "b"]
            .iter()
            .map(|s| Some(s.to_string()))
            .collect();
        assert_eq!(source_weights(&sources, 1.0), None);
        let equal = source_weights(&sources, 0.0).unwrap();
        let share_a: f64 = equal[..3].iter().sum();
        assert!((share_a - 0.5).abs() < 1e-12 && (equal[3] - 0.5).abs() < 1e-12);
        // Square root: shares 3^0.5 : 1.
        let root = source_weights(&sources, 0.5).unwrap();
        let ratio = root[..3].iter().sum::<f64>() / root[3];
        assert!((ratio - 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(source_weights(&sources[..3], 0.0), None);
    }

    #[test]
    fn weighted_draws_follow_the_weights() {
        let mut rng = SplitMix64::derive(7, &[]);
        let order = weighted_order(&[0.75, 0.0, 0.25], 40_000, &mut rng);
        let count = |k| order.iter().filter(|&&i| i == k).count() as f64 / 40_000.0;
        assert!((count(0) - 0.75).abs() < 0.01, "{}", count(0));
        assert_eq!(count(1), 0.0);
        assert!((count(2) - 0.25).abs() < 0.01);
    }

    #[test]
    fn caption_targets_average_distinct_captions() {
        let captions = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let mut rng = SplitMix64::derive(1, &[]);
        let one = caption_target(&captions, 1, &mut rng);
        assert!(one == captions[0] || one == captions[1]);
        let both = caption_target(&captions, 2, &mut rng);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((both[0] - h).abs() < 1e-6 && (both[1] - h).abs() < 1e-6);
        // Asking for more captions than a row has uses them all.
        assert_eq!(caption_target(&captions, 5, &mut rng), both);
    }
}
