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

mod frozen;
mod train;
mod validation;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use crate::cache::default_cache_dir;
use crate::data::{read_class_queries, Clip, Dataset, Layout};
use crate::embed::{caption_embeddings, CaptionEmbeddings};
use crate::fit::{caption_set_key, read_license};
use crate::loss::LossSpec;
use crate::mix::{draw_background_pool, draw_pool, Mix, MixOptions};
use crate::model::{ContrastiveConfig, EncoderConfig};
use crate::run::{DataInfo, Fold, RunConfig, SkippedFile, TextCentre, TrainOptions};
use crate::split::{fnv1a, fold_by_group, SplitMix64};
use audiotext_core::model::manifest::validate_centre;
use audiotext_core::text::subtract_centre;
use frozen::{FrozenBackbone, Item};
use train::{source_weights, train_heads, Draws, Row};
use validation::{write_holdout_report, Validation, HOLDOUT_FILE, REFERENCE_SOURCE};

pub use crate::run::{HeadRun, Sampling};
pub use train::load_head;

/// The head's weights in a run folder (PyTorch `nn.Linear` layout: weight `[out, in]`).
pub const HEAD_FILE: &str = "head.safetensors";

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
    /// How many of the backbone's last blocks feed the head, each pooled the same way and
    /// joined (1: the last block's output only, aiSFX's own embedding).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub tapped_blocks: usize,
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
    /// Train this many heads apart (seeds --seed, --seed+1, ...) and join them into one head
    /// whose output is their outputs' mean: --ensemble times as wide, the same graph.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub ensemble: usize,
    /// Validate after every N-th epoch and after the last.
    #[arg(long, default_value_t = 5)]
    pub validate_every: usize,
    /// Centre the queries: each query's text embedding minus STRENGTH times the mean embedding
    /// of the distinct training captions, normalised again (0: off). It lowers the clips that
    /// lie along the direction all texts share, which rank high whatever the query says.
    /// Training is unchanged; validation centres its queries, and `export` writes the centre
    /// into the bundle, whose text embeddings then carry it.
    #[arg(long, default_value_t = 0.0, value_name = "STRENGTH")]
    pub text_centre: f32,
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

/// `fit-head`, in its phases: the split and the queries, the frozen backbone's outputs, the
/// augmented copies and mixes, the text embeddings, the run's config, then training.
pub fn run(args: FitHeadArgs) -> Result<()> {
    if args.out.join(crate::run::CONFIG_FILE).exists() {
        bail!(
            "{} already holds a run; pick another --out",
            args.out.display()
        );
    }
    if args.ensemble == 0 {
        bail!("--ensemble 0: train one head or more (--ensemble 1 is a single head)");
    }
    if !(args.text_centre.is_finite() && args.text_centre >= 0.0) {
        bail!(
            "--text-centre {}: give a strength above 0 (the default model's is 0.5), or 0 for none",
            args.text_centre
        );
    }
    let cache_root = args.cache.clone().unwrap_or_else(default_cache_dir);
    let set = Dataset::open(&args.data, &Layout::Generic)?;
    let clips = &set.clips;
    let mut split = Split::new(&args, clips)?;
    let backbone = FrozenBackbone::open(&args, &cache_root)?;
    let (train_items, validation_items, skipped) =
        backbone.embed_split(&mut split, clips, args.max_bad_share)?;
    let train_paths: Vec<&Path> = split
        .train
        .iter()
        .map(|&i| clips[i].path.as_path())
        .collect();
    let copies = backbone.specaug_copies(&train_paths, args.specaug_copies)?;
    let keys = contrastive_keys(clips, args.class_keys);
    let mut mixes = Mixes::draw(&args, clips, &keys, &split.train, &backbone)?;
    let embeddings = text_embeddings(&args, clips, &split, &mut mixes, &cache_root)?;
    let centre = text_centre(args.text_centre, clips, &split, &embeddings)?;
    let config = run_config(
        &args,
        &backbone,
        clips,
        &split,
        &embeddings,
        &mixes,
        skipped,
        centre,
    );
    config.write(&args.out)?;

    let rows = training_rows(
        clips,
        &split.train,
        &train_items,
        &copies,
        &keys,
        &embeddings,
    );
    let validation_set = validation_set(
        clips,
        &split,
        &validation_items,
        &embeddings,
        config.query_centre(),
    );
    let draws = Draws {
        mix_rows: &mixes.rows(),
        background_rows: &mixes.background_rows(),
        background_prob: args.background_prob,
        captions_per_step: args.captions_per_step.max(1),
        weights: source_weights(
            &split
                .train
                .iter()
                .map(|&i| clips[i].source.clone())
                .collect::<Vec<_>>(),
            args.source_balance,
        ),
    };
    let (logs, model) = train_heads(&config, &rows, &draws, &validation_set, &args.out)?;
    if !args.holdout_classes.is_empty() && !validation_set.items.is_empty() {
        let path = args.out.join(HOLDOUT_FILE);
        write_holdout_report(
            &model,
            &validation_set,
            &split.queries,
            &split.classes,
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

/// Which clips train and which validate (by recording: never one recording on both sides),
/// and the held-out queries.
struct Split {
    train: Vec<usize>,
    /// Validation clips and the file each is read from (its `--validate-on` copy, if any).
    validation: Vec<(usize, PathBuf)>,
    /// The dataset's classes, sorted.
    classes: Vec<String>,
    /// Held-out phrasings (class index, text), read and checked before any backbone work.
    queries: Vec<(usize, String)>,
}

impl Split {
    fn new(args: &FitHeadArgs, clips: &[Clip]) -> Result<Split> {
        let groups: Vec<String> = clips.iter().map(|c| c.recording.clone()).collect();
        // Folds are class-balanced when every clip has a class (as `Dataset::has_labels`).
        let labels: Option<Vec<String>> = clips.iter().all(|c| c.label.is_some()).then(|| {
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
        let mut queries: Vec<(usize, String)> = Vec::new();
        for csv in &args.queries {
            queries.extend(read_class_queries(csv, &classes)?);
        }
        let validation = validation_sources(args.validate_on.as_deref(), clips, &validation)?;
        println!(
            "data: {} clips, {} training, {} validating{}",
            clips.len(),
            train.len(),
            validation.len(),
            match &args.validate_on {
                Some(dir) => format!(" (their copies in {})", dir.display()),
                None => String::new(),
            }
        );
        Ok(Split {
            train,
            validation,
            classes,
            queries,
        })
    }

    fn validation_clips(&self) -> impl Iterator<Item = usize> + '_ {
        self.validation.iter().map(|(i, _)| *i)
    }

    fn class_of(&self, label: &Option<String>) -> Option<usize> {
        label
            .as_ref()
            .and_then(|l| self.classes.binary_search(l).ok())
    }
}

/// Where each validation clip is read from: its own file, or the file of the same stem in
/// `validate_on` (clips without one there are left out).
fn validation_sources(
    validate_on: Option<&Path>,
    clips: &[Clip],
    validation: &[usize],
) -> Result<Vec<(usize, PathBuf)>> {
    let Some(dir) = validate_on else {
        return Ok(validation
            .iter()
            .map(|&i| (i, clips[i].path.clone()))
            .collect());
    };
    let other = Dataset::open(dir, &Layout::Generic)?;
    let by_stem: HashMap<String, PathBuf> = other
        .clips
        .iter()
        .map(|c| (stem(&c.file_name), c.path.clone()))
        .collect();
    Ok(validation
        .iter()
        .filter_map(|&i| {
            by_stem
                .get(&stem(&clips[i].file_name))
                .map(|p| (i, p.clone()))
        })
        .collect())
}

fn stem(file_name: &str) -> String {
    Path::new(file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The training clips left once `--train-sources` and `--holdout-classes` are applied.
fn restrict_training(
    clips: &[Clip],
    train: Vec<usize>,
    sources: &[String],
    holdout: &[String],
) -> Result<Vec<usize>> {
    if !sources.is_empty() {
        let known: HashSet<&str> = clips.iter().filter_map(|c| c.source.as_deref()).collect();
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

/// The mixes of a pool (with their pool index) whose two clips both train.
fn training_mixes(pool: Vec<Mix>, train: &[usize]) -> Vec<(usize, Mix)> {
    let trains: std::collections::HashSet<usize> = train.iter().copied().collect();
    pool.into_iter()
        .enumerate()
        .filter(|(_, m)| trains.contains(&m.first) && trains.contains(&m.second))
        .collect()
}

/// Each clip's contrastive key: clips with one key are never each other's negatives. By
/// default, the clips of one caption set; with --class-keys those of one class, so that a dog
/// of one source and a dog of another (captioned differently) are not pushed apart.
fn contrastive_keys(clips: &[Clip], class_keys: bool) -> Vec<u64> {
    clips
        .iter()
        .map(|c| match (&c.label, class_keys) {
            (Some(label), true) => fnv1a(format!("class\u{1f}{label}").as_bytes()),
            _ => caption_set_key(&c.captions),
        })
        .collect()
}

/// The training mixes of both kinds, with their items. Each kind is one pool drawn over every
/// clip of the dataset (so that the folds of a cross-validation share their cached mixes), of
/// which a run keeps those whose two clips both train; indices are into the clips, and a mix's
/// level offset is fixed by its pool index.
struct Mixes {
    /// Two clips, the second 0 to 6 dB under the first (`--mix-prob`).
    mixes: Vec<(usize, Mix)>,
    items: Vec<Item>,
    /// Foreground-on-background mixes: real recordings are events over speech, music,
    /// crowds, traffic or rain, and are described so (`--background-mixes`).
    background: Vec<(usize, Mix)>,
    background_items: Vec<Item>,
}

impl Mixes {
    fn draw(
        args: &FitHeadArgs,
        clips: &[Clip],
        keys: &[u64],
        train: &[usize],
        backbone: &FrozenBackbone,
    ) -> Result<Mixes> {
        let captions = |i: usize| clips[i].captions.clone();
        let key = |i: usize| keys[i];
        let mixes = match args.mix_prob > 0.0 {
            true => training_mixes(
                draw_pool(
                    &(0..clips.len()).collect::<Vec<_>>(),
                    &captions,
                    &key,
                    args.mix_per_clip,
                    args.seed,
                ),
                train,
            ),
            false => Vec::new(),
        };
        let items = backbone.embed_mixes("mixes", &mixes, clips, |n| {
            -6.0 * SplitMix64::derive(args.seed, &[0x6d69, n as u64]).next_f64() as f32
        })?;
        let background = match args.background_mixes > 0 {
            true => {
                let (backgrounds, foregrounds): (Vec<usize>, Vec<usize>) =
                    (0..clips.len()).partition(|&i| clips[i].kind.as_deref() == Some("background"));
                let pool = draw_background_pool(
                    &foregrounds,
                    &backgrounds,
                    &captions,
                    &key,
                    args.background_mixes,
                    args.seed,
                );
                training_mixes(pool, train)
            }
            false => Vec::new(),
        };
        // The background 4 to 16 dB under the foreground's peak.
        let background_items =
            backbone.embed_mixes("background mixes", &background, clips, |n| {
                -4.0 - 12.0 * SplitMix64::derive(args.seed, &[0x6267, n as u64]).next_f64() as f32
            })?;
        Ok(Mixes {
            mixes,
            items,
            background,
            background_items,
        })
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Mix> {
        self.mixes
            .iter_mut()
            .chain(self.background.iter_mut())
            .map(|(_, m)| m)
    }

    fn rows(&self) -> Vec<Row<'_>> {
        self.mixes
            .iter()
            .map(|(_, m)| m)
            .zip(&self.items)
            .map(mix_row)
            .collect()
    }

    fn background_rows(&self) -> Vec<Row<'_>> {
        self.background
            .iter()
            .map(|(_, m)| m)
            .zip(&self.background_items)
            .map(mix_row)
            .collect()
    }
}

/// A mix's training row: its one item and its joined caption.
fn mix_row<'a>((m, item): (&Mix, &'a Item)) -> Row<'a> {
    Row {
        items: vec![item],
        captions: vec![m.embedding.clone()],
        key: m.key,
    }
}

/// The embeddings of every caption (training and validation), mix caption and query; each
/// mix gets its caption's.
fn text_embeddings(
    args: &FitHeadArgs,
    clips: &[Clip],
    split: &Split,
    mixes: &mut Mixes,
    cache_root: &Path,
) -> Result<CaptionEmbeddings> {
    let mut texts: Vec<&str> = split
        .train
        .iter()
        .copied()
        .chain(split.validation_clips())
        .flat_map(|i| clips[i].captions.iter().map(String::as_str))
        .collect();
    texts.extend(mixes.mixes.iter().map(|(_, m)| m.caption.as_str()));
    texts.extend(mixes.background.iter().map(|(_, m)| m.caption.as_str()));
    texts.extend(split.queries.iter().map(|(_, q)| q.as_str()));
    let embeddings = caption_embeddings(
        &args.text_bundle,
        &texts,
        Some(cache_root),
        args.ort.as_deref(),
    )?;
    for m in mixes.all_mut() {
        m.embedding = embeddings.by_text[&m.caption].clone();
    }
    Ok(embeddings)
}

/// `--text-centre`: `strength` times the mean of the distinct training captions' embeddings.
fn text_centre(
    strength: f32,
    clips: &[Clip],
    split: &Split,
    embeddings: &CaptionEmbeddings,
) -> Result<Option<TextCentre>> {
    if strength == 0.0 {
        return Ok(None);
    }
    let captions: BTreeSet<&str> = split
        .train
        .iter()
        .flat_map(|&i| clips[i].captions.iter().map(String::as_str))
        .collect();
    if captions.is_empty() {
        bail!("--text-centre: no training clip has a caption to take the mean of");
    }
    let mut vector = vec![0f64; embeddings.dim];
    for caption in &captions {
        for (sum, v) in vector.iter_mut().zip(&embeddings.by_text[*caption]) {
            *sum += f64::from(*v);
        }
    }
    let scale = f64::from(strength) / captions.len() as f64;
    let vector: Vec<f32> = vector.iter().map(|sum| (sum * scale) as f32).collect();
    validate_centre(&vector, embeddings.dim).map_err(|e| {
        anyhow::anyhow!("--text-centre {strength} gives a centre the extension would refuse ({e}): lower the strength")
    })?;
    Ok(Some(TextCentre {
        strength,
        captions: captions.len(),
        vector,
    }))
}

/// The run's config.json: what `export` and `eval` need to rebuild and describe the model.
#[allow(clippy::too_many_arguments)]
fn run_config(
    args: &FitHeadArgs,
    backbone: &FrozenBackbone,
    clips: &[Clip],
    split: &Split,
    embeddings: &CaptionEmbeddings,
    mixes: &Mixes,
    skipped: Vec<SkippedFile>,
    text_centre: Option<TextCentre>,
) -> RunConfig {
    RunConfig {
        format_version: crate::run::RUN_FORMAT_VERSION,
        model: ContrastiveConfig {
            encoder: EncoderConfig {
                fc_dim: backbone.encoder.fc_dim * args.ensemble,
                ..backbone.encoder.clone()
            },
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
        front_end: backbone.fe.clone(),
        windowing: backbone.windowing.clone(),
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
            train_clips: split.train.len(),
            validation_files: split
                .validation_clips()
                .map(|i| clips[i].file_name.clone())
                .collect(),
            license: read_license(&args.data),
            max_bad_share: args.max_bad_share,
            skipped_files: skipped,
        }),
        text_bundle: Some(args.text_bundle.clone()),
        text_key: Some(embeddings.key.clone()),
        text_model: Some(embeddings.model.clone()),
        pretrained: Some(backbone.info.clone()),
        head: Some(HeadRun {
            head_file: HEAD_FILE.into(),
            validate_on: args.validate_on.clone(),
            queries: args.queries.first().cloned(),
            more_queries: args.queries.iter().skip(1).cloned().collect(),
            mixes: mixes.mixes.len(),
            sampling: Sampling {
                train_sources: args.train_sources.clone(),
                holdout_classes: args.holdout_classes.clone(),
                source_balance: args.source_balance,
                background_mixes: mixes.background.len(),
                background_prob: args.background_prob,
                captions_per_step: args.captions_per_step,
                class_keys: args.class_keys,
                ensemble: args.ensemble,
            },
            text_centre,
        }),
    }
}

/// A row per training clip: its item and its SpecAugment copies (one drawn per step), its
/// captions' embeddings and its key.
fn training_rows<'a>(
    clips: &[Clip],
    train: &[usize],
    items: &'a [Item],
    copies: &'a [Vec<Item>],
    keys: &[u64],
    embeddings: &CaptionEmbeddings,
) -> Vec<Row<'a>> {
    train
        .iter()
        .zip(items)
        .enumerate()
        .map(|(n, (&i, item))| Row {
            items: std::iter::once(item)
                .chain(copies.iter().map(|c| &c[n]))
                .collect(),
            captions: clips[i]
                .captions
                .iter()
                .map(|t| embeddings.by_text[t].clone())
                .collect(),
            key: keys[i],
        })
        .collect()
}

/// The validation clips' items, classes and sources, with every query embedded (and centred
/// as the exported bundle will centre it).
fn validation_set<'a>(
    clips: &[Clip],
    split: &Split,
    items: &'a [Item],
    embeddings: &CaptionEmbeddings,
    centre: Option<&[f32]>,
) -> Validation<'a> {
    let query = |text: &str| {
        let mut v = embeddings.by_text[text].clone();
        if let Some(centre) = centre {
            subtract_centre(&mut v, centre);
        }
        v
    };
    let reference = |i: usize| clips[i].source.as_deref() == Some(REFERENCE_SOURCE);
    let reference_classes: HashSet<usize> = split
        .validation_clips()
        .filter(|&i| reference(i))
        .filter_map(|i| split.class_of(&clips[i].label))
        .collect();
    Validation {
        items,
        clip_is_reference: split.validation_clips().map(reference).collect(),
        query_is_reference: split
            .queries
            .iter()
            .map(|(c, _)| reference_classes.contains(c))
            .collect(),
        clip_class: split
            .validation_clips()
            .map(|i| split.class_of(&clips[i].label).unwrap_or(usize::MAX))
            .collect(),
        caption_queries: split
            .validation_clips()
            .enumerate()
            .flat_map(|(n, i)| clips[i].captions.iter().map(move |t| (n, query(t))))
            .collect(),
        class_queries: split.queries.iter().map(|(c, q)| (*c, query(q))).collect(),
    }
}
