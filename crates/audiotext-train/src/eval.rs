//! `audiotext-train eval`: retrieval metrics of a run (burn checkpoint) or of an exported bundle
//! (audio.onnx and text.onnx through ONNX Runtime, as the extension runs them).
//!
//! Metric definitions: see `crate::metrics` (DCASE text-to-audio R@k and mAP@10;
//! audio-to-text with all captions of a clip relevant; class precision with labels; with
//! `--queries`, class-level retrieval of `class,query` lines where every clip of the query's
//! class is relevant, the way the default model is judged).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::cache::{default_cache_dir, FeatureCache, Features};
use crate::data::{read_class_queries, read_labels, Clip, Dataset, Layout, GENERIC_LABELS_FILE};
use crate::metrics::{self, ClassRetrieval, RetrievalMetrics};
use audiotext_core::model::manifest::Manifest;
use audiotext_core::text::subtract_centre_from_each;

use crate::embed::{bar_style, caption_embeddings};
use crate::fit::LayoutArg;
use crate::run::{
    device, embed_clips, embed_texts, embed_windows, ort_runtime, pad_value, DataInfo, DeviceKind,
    RunConfig, Which,
};
use crate::trained::load_model;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Subset {
    /// The run's validation clips (only with --run on the run's dataset).
    Val,
    /// Every clip of the dataset (split).
    All,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run folder written by `fit` (evaluates its checkpoint).
    #[arg(
        long,
        value_name = "RUN_DIR",
        conflicts_with = "bundle",
        required_unless_present = "bundle"
    )]
    pub run: Option<PathBuf>,
    /// Bundle folder (evaluates audio.onnx and text.onnx through ONNX Runtime).
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "best")]
    pub checkpoint: Which,
    /// Dataset folder [default with --run: the run's dataset].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// Clotho or AudioCaps split to evaluate (AudioCaps: `evaluation` means `test`).
    #[arg(long, default_value = "evaluation")]
    pub split: String,
    /// Which clips [default: val for a run on its own dataset, else all].
    #[arg(long, value_enum)]
    pub subset: Option<Subset>,
    /// With --bundle: evaluate on the validation clips of this run (e.g. an ensemble of the
    /// runs of one cross-validation fold).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "run")]
    pub validation_of: Option<PathBuf>,
    /// Class-level queries: a `class,query` CSV (e.g. data/esc50-validation-queries.csv).
    /// Adds text-to-audio class retrieval over the evaluated clips, every clip of the query's
    /// class relevant: P@1, P@10 and mAP@10. Needs clip classes (--labels).
    #[arg(long, value_name = "FILE")]
    pub queries: Option<PathBuf>,
    /// Clip classes: a `file_name,class` CSV, file names as the captions file writes them
    /// [default: the data folder's labels.csv when present]. Also feeds the class precision.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Also write the results as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    #[arg(long)]
    pub no_cache: bool,
    #[arg(long, value_name = "FILE")]
    pub ort: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "flex")]
    pub device: DeviceKind,
}

/// Results of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub source: String,
    pub data: String,
    pub clips: usize,
    pub captions: usize,
    pub text_to_audio: RetrievalMetrics,
    pub audio_to_text: RetrievalMetrics,
    /// Text-to-audio class precision at 1, 5, 10 (datasets with labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_precision: Option<[f64; 3]>,
    /// Class-level retrieval of `--queries`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_queries: Option<ClassQueryReport>,
    pub seconds: f64,
}

/// Text-to-audio class retrieval of a `class,query` file over the evaluated clips.
#[derive(Debug, Clone, Serialize)]
pub struct ClassQueryReport {
    pub queries_file: String,
    pub labels_file: String,
    /// Classes the queries name.
    pub classes: usize,
    /// Evaluated clips without a class in the labels file (candidates that are never relevant).
    pub unlabelled_clips: usize,
    /// `p1`, `p10`, `map10`, `queries`.
    #[serde(flatten)]
    pub metrics: ClassRetrieval,
}

/// The clips' classes from `--labels` (or the data folder's labels.csv) and the `--queries`
/// read against them: what class retrieval needs besides the embeddings.
struct ClassQueries {
    queries_file: PathBuf,
    labels_file: PathBuf,
    /// `(class index, query)`, classes sorted as in [`read_class_queries`].
    queries: Vec<(usize, String)>,
    /// Class index of each evaluated clip; `usize::MAX` for a clip without a class.
    clip_class: Vec<usize>,
}

/// The labels file, each evaluated clip's class (if it has one), and the sorted classes.
type ClipLabels = (PathBuf, Vec<Option<String>>, Vec<String>);
/// One embedding per clip (audio) or per text.
type Embeddings = Vec<Vec<f32>>;

/// Each clip's class from the labels file: `(labels file, labels per clip, sorted classes)`;
/// `None` when no labels file is given and the data folder has none.
fn clip_labels(args: &EvalArgs, root: &Path, clips: &[&Clip]) -> Result<Option<ClipLabels>> {
    let path = match &args.labels {
        Some(p) => p.clone(),
        None if root.join(GENERIC_LABELS_FILE).is_file() => root.join(GENERIC_LABELS_FILE),
        None => return Ok(None),
    };
    if !path.is_file() {
        bail!("--labels {}: no such file", path.display());
    }
    let labels = read_labels(&path)?;
    let mut classes: Vec<String> = labels.values().cloned().collect();
    classes.sort();
    classes.dedup();
    let per_clip: Vec<Option<String>> = clips
        .iter()
        .map(|c| labels.get(&c.file_name).cloned())
        .collect();
    if per_clip.iter().all(Option::is_none) {
        bail!(
            "{} gives a class to none of the {} evaluated clips (e.g. {}): its file_name column must name them as the captions file does",
            path.display(),
            clips.len(),
            clips[0].file_name
        );
    }
    Ok(Some((path, per_clip, classes)))
}

pub fn run(args: EvalArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let cache_root = (!args.no_cache).then(|| args.cache.clone().unwrap_or_else(default_cache_dir));
    let run_config = args.run.as_ref().map(|r| RunConfig::read(r)).transpose()?;
    // The clips a run validated on: the run's own, or (for a bundle, e.g. an ensemble of
    // runs) those of the run named by --validation-of.
    let run_data = match (&run_config, &args.validation_of) {
        (Some(c), _) => c.data.clone(),
        (None, Some(r)) => RunConfig::read(r)?.data,
        (None, None) => None,
    };
    let root = match (&args.data, &run_data) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.root.clone(),
        (None, None) => bail!("pass --data DIR"),
    };
    let layout = data_layout(&args, &root, &run_data)?;
    let dataset = Dataset::open(&root, &layout)?;
    let same_data = run_data
        .as_ref()
        .is_some_and(|d| same_path(&d.root, &root) && d.layout == layout.describe());
    let subset = args
        .subset
        .unwrap_or(if same_data { Subset::Val } else { Subset::All });
    let clips: Vec<&Clip> = match subset {
        Subset::All => dataset.clips.iter().collect(),
        Subset::Val => {
            let Some(d) = run_data.as_ref().filter(|_| same_data) else {
                bail!("--subset val needs --run (or --validation-of) and the run's own dataset");
            };
            if d.validation_split.is_some() {
                bail!("the run validated on a split of its own; evaluate it with --layout {} --split {}", d.layout.split(':').next().unwrap_or("clotho"), d.validation_split.clone().unwrap_or_default());
            }
            dataset
                .clips
                .iter()
                .filter(|c| d.validation_files.contains(&c.file_name))
                .collect()
        }
    };
    if clips.is_empty() {
        bail!("no clips to evaluate");
    }
    let data_desc = format!(
        "{} ({}, {} clips: {})",
        root.display(),
        layout.describe(),
        clips.len(),
        match subset {
            Subset::Val => "the run's validation clips",
            Subset::All => "all",
        }
    );

    let labels = clip_labels(&args, &root, &clips)?;
    let class_queries = class_queries(&args, &labels, &clips)?;
    // Clip labels for the class precision: those of --labels (or the data folder's labels.csv)
    // when given, else the dataset's own.
    let clip_label: Vec<Option<&str>> = match &labels {
        Some((_, per_clip, _)) => per_clip.iter().map(Option::as_deref).collect(),
        None => clips.iter().map(|c| c.label.as_deref()).collect(),
    };

    let source = match (&run_config, &args.bundle) {
        (Some(_), _) => format!(
            "run {} ({} checkpoint)",
            args.run.as_ref().unwrap().display(),
            args.checkpoint.file_stem()
        ),
        (None, Some(b)) => format!("bundle {}", b.display()),
        _ => unreachable!("clap requires --run or --bundle"),
    };
    let paths: Vec<&Path> = clips.iter().map(|c| c.path.as_path()).collect();

    // Captions, then the class queries: embedded together, split after.
    let texts: Vec<&str> = clips
        .iter()
        .flat_map(|c| c.captions.iter().map(String::as_str))
        .chain(
            class_queries
                .iter()
                .flat_map(|q| q.queries.iter().map(|(_, query)| query.as_str())),
        )
        .collect();
    let caption_clip: Vec<usize> = clips
        .iter()
        .enumerate()
        .flat_map(|(i, c)| std::iter::repeat_n(i, c.captions.len()))
        .collect();
    let (audio, text) = match (&run_config, &args.bundle) {
        (Some(config), _) => run_embeddings(&args, config, &paths, &texts, cache_root.as_deref())?,
        (None, Some(bundle_dir)) => {
            bundle_embeddings(&args, bundle_dir, &paths, &texts, cache_root.as_deref())?
        }
        _ => unreachable!(),
    };
    let (text, query_text) = text.split_at(caption_clip.len());
    let mut report = evaluate(
        &audio,
        text,
        &caption_clip,
        &clip_label,
        source,
        data_desc,
        started.elapsed().as_secs_f64(),
    );
    if let Some(q) = &class_queries {
        let query_class: Vec<usize> = q.queries.iter().map(|(c, _)| *c).collect();
        let mut classes = query_class.clone();
        classes.sort_unstable();
        classes.dedup();
        report.class_queries = Some(ClassQueryReport {
            queries_file: q.queries_file.display().to_string(),
            labels_file: q.labels_file.display().to_string(),
            classes: classes.len(),
            unlabelled_clips: q.clip_class.iter().filter(|&&c| c == usize::MAX).count(),
            metrics: metrics::class_retrieval(
                &metrics::similarity(query_text, &audio),
                &query_class,
                &q.clip_class,
            ),
        });
        report.seconds = started.elapsed().as_secs_f64();
    }
    print_report(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)? + "\n";
        if path.as_os_str() == "-" {
            print!("{json}");
        } else {
            std::fs::write(path, json)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// The layout of the evaluated dataset: `--layout`, else the run's (for its own data), else
/// what the folder holds (Clotho's or AudioCaps' files, or the generic captions.csv).
fn data_layout(args: &EvalArgs, root: &Path, run_data: &Option<DataInfo>) -> Result<Layout> {
    Ok(match (args.layout, &run_data) {
        (Some(LayoutArg::Generic), _) => Layout::Generic,
        (Some(LayoutArg::Clotho), _) => Layout::Clotho {
            split: args.split.clone(),
        },
        (Some(LayoutArg::AudioCaps), _) => Layout::audiocaps(&args.split),
        (None, Some(d)) if args.data.is_none() => Layout::parse(&d.layout)?.with_split(&args.split),
        (None, _)
            if root.join("clotho_captions_evaluation.csv").is_file()
                || root
                    .join(format!("clotho_captions_{}.csv", args.split))
                    .is_file() =>
        {
            Layout::Clotho {
                split: args.split.clone(),
            }
        }
        (None, _)
            if !root.join("captions.csv").is_file()
                && Layout::audiocaps(&args.split).captions_file(root).is_file() =>
        {
            Layout::audiocaps(&args.split)
        }
        (None, _) => Layout::Generic,
    })
}

/// The held-out class queries (`--queries`), with each evaluated clip's class; warns about
/// clips without a class and classes without a clip.
fn class_queries(
    args: &EvalArgs,
    labels: &Option<ClipLabels>,
    clips: &[&Clip],
) -> Result<Option<ClassQueries>> {
    Ok(match (&args.queries, &labels) {
    (None, _) => None,
    (Some(q), None) => bail!(
        "--queries {} needs the clips' classes: pass --labels FILE (file_name,class) or put {GENERIC_LABELS_FILE} in the data folder",
        q.display()
    ),
    (Some(q), Some((labels_file, per_clip, classes))) => {
        let queries = read_class_queries(q, classes)?;
        let clip_class: Vec<usize> = per_clip
            .iter()
            .map(|l| {
                l.as_ref()
                    .and_then(|l| classes.binary_search(l).ok())
                    .unwrap_or(usize::MAX)
            })
            .collect();
        let unlabelled = clip_class.iter().filter(|&&c| c == usize::MAX).count();
        if unlabelled > 0 {
            eprintln!(
                "warning: {unlabelled} of {} evaluated clips have no class in {}; they rank as clips of no query's class",
                clips.len(),
                labels_file.display()
            );
        }
        let mut absent: Vec<&str> = queries
            .iter()
            .filter(|(c, _)| !clip_class.contains(c))
            .map(|(c, _)| classes[*c].as_str())
            .collect();
        absent.sort_unstable();
        absent.dedup();
        if !absent.is_empty() {
            eprintln!(
                "warning: no evaluated clip is of class {}: the queries of those classes score 0",
                absent.join(", ")
            );
        }
        Some(ClassQueries {
            queries_file: q.clone(),
            labels_file: labels_file.clone(),
            queries,
            clip_class,
        })
    }
})
}

/// Audio and text embeddings by a run's own model (its checkpoint, in the trainer).
fn run_embeddings(
    args: &EvalArgs,
    config: &RunConfig,
    paths: &[&Path],
    texts: &[&str],
    cache_root: Option<&Path>,
) -> Result<(Embeddings, Embeddings)> {
    let run_dir = args.run.as_ref().expect("run");
    let device = device(args.device)?;
    let (model, state) = load_model(run_dir, config, args.checkpoint, &device)?;
    println!("evaluating epoch {} of {}", state.epoch, run_dir.display());
    let bundle = config
        .text_bundle
        .clone()
        .context("the run names no text bundle")?;
    let e = caption_embeddings(&bundle, texts, cache_root, args.ort.as_deref())?;
    let raw: Vec<Vec<f32>> = texts.iter().map(|t| e.by_text[*t].clone()).collect();
    let bar = ProgressBar::new(paths.len() as u64)
        .with_style(bar_style("clips"))
        .with_message("log-mel features");
    let (features, _) = crate::features::dataset_features(
        paths,
        &config.front_end,
        &FeatureCache::new(cache_root),
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    let features = if config.model.encoder.architecture.needs_waveform() {
        crate::features::with_waveforms(features, paths, &config.front_end)?
    } else {
        features
    };
    let feats: Vec<&Features> = features.iter().map(|f| f.as_ref()).collect();
    let bar = ProgressBar::new(feats.len() as u64)
        .with_style(bar_style("windows"))
        .with_message("audio embeddings");
    let audio = embed_clips(&model, &feats, config, args.batch_size, &device, |n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    let mut text = embed_texts(&model, &raw, &device);
    // Queries centred as the run validated them, and as its export will (fit-head --text-centre).
    subtract_centre_from_each(&mut text, config.query_centre());
    Ok((audio, text))
}

/// Audio and text embeddings by an exported bundle, through the extension's own encoders.
fn bundle_embeddings(
    args: &EvalArgs,
    bundle_dir: &Path,
    paths: &[&Path],
    texts: &[&str],
    cache_root: Option<&Path>,
) -> Result<(Embeddings, Embeddings)> {
    let e = caption_embeddings(bundle_dir, texts, cache_root, args.ort.as_deref())?;
    let manifest = Manifest::read(bundle_dir)?;
    // The cache holds the text network's output; the bundle's queries are moved off its centre.
    let mut text: Vec<Vec<f32>> = texts.iter().map(|t| e.by_text[*t].clone()).collect();
    subtract_centre_from_each(
        &mut text,
        manifest.text.as_ref().and_then(|t| t.centre.as_deref()),
    );
    let audio_section = manifest
        .audio
        .context("the bundle has no audio encoder (no audio section in its manifest)")?;
    let bar = ProgressBar::new(paths.len() as u64)
        .with_style(bar_style("clips"))
        .with_message("log-mel windows");
    let windows = crate::features::file_windows(
        paths,
        &audio_section.front_end,
        &audio_section.windowing,
        audio_section.input.waveform.is_some(),
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    let audio =
        bundle_audio_embeddings(bundle_dir, &windows, args.batch_size, args.ort.as_deref())?;
    Ok((audio, text))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Computes the caption metrics from clip and caption embeddings; `clip_label` holds each
/// clip's class, for the class precision (computed when every clip has one).
pub fn evaluate(
    audio: &[Vec<f32>],
    text: &[Vec<f32>],
    caption_clip: &[usize],
    clip_label: &[Option<&str>],
    source: String,
    data: String,
    seconds: f64,
) -> EvalReport {
    let sim = metrics::similarity(text, audio);
    let t2a = metrics::text_to_audio(&sim, caption_clip, audio.len());
    let a2t = metrics::audio_to_text(
        &metrics::transpose(&sim, text.len(), audio.len()),
        caption_clip,
        audio.len(),
    );
    let class_precision = clip_label.iter().all(Option::is_some).then(|| {
        let mut names: Vec<&str> = clip_label.iter().flatten().copied().collect();
        names.sort();
        names.dedup();
        let classes: Vec<usize> = clip_label
            .iter()
            .map(|l| names.binary_search(&l.unwrap_or("")).unwrap_or(0))
            .collect();
        [1, 5, 10].map(|k| metrics::class_precision_at(&sim, caption_clip, &classes, k))
    });
    EvalReport {
        source,
        data,
        clips: audio.len(),
        captions: text.len(),
        text_to_audio: t2a,
        audio_to_text: a2t,
        class_precision,
        class_queries: None,
        seconds,
    }
}

pub fn print_report(r: &EvalReport) {
    println!("{}", r.source);
    println!("data: {}, {} captions", r.data, r.captions);
    println!(
        "{:<15} {:>7} {:>7} {:>7} {:>8} {:>10} {:>8}",
        "", "R@1", "R@5", "R@10", "mAP@10", "mean rank", "queries"
    );
    for (name, m) in [
        ("text-to-audio", &r.text_to_audio),
        ("audio-to-text", &r.audio_to_text),
    ] {
        println!(
            "{name:<15} {:>7.4} {:>7.4} {:>7.4} {:>8.4} {:>10.2} {:>8}",
            m.r1, m.r5, m.r10, m.map10, m.mean_rank, m.queries
        );
    }
    if let Some([p1, p5, p10]) = r.class_precision {
        println!("class precision (text-to-audio, same class as the caption's clip): P@1 {p1:.4}  P@5 {p5:.4}  P@10 {p10:.4}");
    }
    if let Some(q) = &r.class_queries {
        let m = &q.metrics;
        println!(
            "class queries (text-to-audio, every clip of the query's class relevant): P@1 {:.4}  P@10 {:.4}  mAP@10 {:.4}",
            m.p1, m.p10, m.map10
        );
        println!(
            "  {} queries of {} classes from {}, classes from {}{}",
            m.queries,
            q.classes,
            q.queries_file,
            q.labels_file,
            if q.unlabelled_clips > 0 {
                format!(" ({} clips without a class)", q.unlabelled_clips)
            } else {
                String::new()
            }
        );
        if m.without_clips > 0 {
            println!(
                "  {} queries left out: no evaluated clip is of their class",
                m.without_clips
            );
        }
    }
    println!("took {:.1} s", r.seconds);
}

/// Clip embeddings from a bundle's audio.onnx through ONNX Runtime, from each clip's windows.
pub fn bundle_audio_embeddings(
    bundle_dir: &Path,
    windows: &[Vec<Features>],
    batch_size: usize,
    ort: Option<&Path>,
) -> Result<Vec<Vec<f32>>> {
    let manifest = Manifest::read(bundle_dir)?;
    let audio = manifest
        .audio
        .clone()
        .context("the bundle has no audio section")?;
    let channels = audio.front_end.channels();
    if audio.input.layout != crate::audio_graph::input_layout(channels) {
        bail!(
            "the bundle's audio input layout is {:?}; this evaluator reads {:?} for {channels} channel(s)",
            audio.input.layout,
            crate::audio_graph::input_layout(channels)
        );
    }
    let min_frames = audio
        .encoder
        .as_ref()
        .and_then(|e| e.get("min_frames"))
        .and_then(|v| v.as_u64())
        .unwrap_or(16) as usize;
    let rt = ort_runtime(ort)?;
    let (mut session, _) = rt.session(&bundle_dir.join(&audio.onnx))?;
    let bar = ProgressBar::new(windows.iter().map(Vec::len).sum::<usize>() as u64)
        .with_style(bar_style("windows"))
        .with_message("audio embeddings");
    let out = embed_windows(
        windows,
        min_frames,
        pad_value(&audio.front_end),
        manifest.embedding_dim,
        batch_size,
        |values, b, frames, mels, waveform| {
            let shape = crate::audio_graph::input_shape(b, frames, channels, mels / channels);
            let input = ort::value::Tensor::from_array((shape, values))?;
            let outputs = match &audio.input.waveform {
                Some(name) => {
                    if waveform.is_empty() {
                        bail!("the bundle's encoder reads the waveform; these windows carry none");
                    }
                    let n = (waveform.len() / b) as i64;
                    let w = ort::value::Tensor::from_array(([b as i64, n], waveform))?;
                    session
                        .run(ort::inputs![audio.input.name.as_str() => input, name.as_str() => w])?
                }
                None => session.run(ort::inputs![audio.input.name.as_str() => input])?,
            };
            let output = outputs
                .get(audio.output.as_str())
                .context("audio.onnx lacks its output")?;
            let (_, data) = output.try_extract_tensor::<f32>()?;
            Ok(data.to_vec())
        },
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    Ok(out)
}
