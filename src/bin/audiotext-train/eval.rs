//! `audiotext-train eval`: retrieval metrics of a run (burn checkpoint) or of an exported bundle
//! (audio.onnx and text.onnx through ONNX Runtime, as the extension runs them).
//!
//! Metric definitions: see `audiotext0::train::metrics` (DCASE text-to-audio R@k and mAP@10;
//! audio-to-text with all captions of a clip relevant; class precision with labels).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;

use audiotext0::model::manifest::Manifest;
use audiotext0::train::cache::{default_cache_dir, FeatureCache, Features};
use audiotext0::train::data::{Clip, Dataset, Layout};
use audiotext0::train::metrics::{self, RetrievalMetrics};

use crate::embed::{bar_style, caption_embeddings};
use crate::fit::LayoutArg;
use crate::run::{
    device, embed_clips, embed_texts, embed_windows, load_model, ort_runtime, pad_value,
    DeviceKind, RunConfig, Which,
};

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
    pub seconds: f64,
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
    let layout = match (args.layout, &run_data) {
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
                && Layout::audiocaps(&args.split)
                    .captions_file(&root)
                    .is_file() =>
        {
            Layout::audiocaps(&args.split)
        }
        (None, _) => Layout::Generic,
    };
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

    let texts: Vec<&str> = clips
        .iter()
        .flat_map(|c| c.captions.iter().map(String::as_str))
        .collect();
    let caption_clip: Vec<usize> = clips
        .iter()
        .enumerate()
        .flat_map(|(i, c)| std::iter::repeat_n(i, c.captions.len()))
        .collect();
    let (audio, text) = match (&run_config, &args.bundle) {
        (Some(config), _) => {
            let run_dir = args.run.as_ref().expect("run");
            let device = device(args.device)?;
            let (model, state) = load_model(run_dir, config, args.checkpoint, &device)?;
            println!("evaluating epoch {} of {}", state.epoch, run_dir.display());
            let bundle = config
                .text_bundle
                .clone()
                .context("the run names no text bundle")?;
            let e =
                caption_embeddings(&bundle, &texts, cache_root.as_deref(), args.ort.as_deref())?;
            let raw: Vec<Vec<f32>> = texts.iter().map(|t| e.by_text[*t].clone()).collect();
            let bar = ProgressBar::new(paths.len() as u64)
                .with_style(bar_style("clips"))
                .with_message("log-mel features");
            let (features, _) = crate::features::dataset_features(
                &paths,
                &config.front_end,
                &FeatureCache::new(cache_root.as_deref()),
                || bar.inc(1),
            )?;
            bar.finish_and_clear();
            let features = if config.model.encoder.architecture.needs_waveform() {
                crate::features::with_waveforms(features, &paths, &config.front_end)?
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
            (audio, embed_texts(&model, &raw, &device))
        }
        (None, Some(bundle_dir)) => {
            let e = caption_embeddings(
                bundle_dir,
                &texts,
                cache_root.as_deref(),
                args.ort.as_deref(),
            )?;
            let text: Vec<Vec<f32>> = texts.iter().map(|t| e.by_text[*t].clone()).collect();
            let audio_section = Manifest::read(bundle_dir)?
                .audio
                .context("the bundle has no audio encoder (no audio section in its manifest)")?;
            let bar = ProgressBar::new(paths.len() as u64)
                .with_style(bar_style("clips"))
                .with_message("log-mel windows");
            let windows = crate::features::file_windows(
                &paths,
                &audio_section.front_end,
                &audio_section.windowing,
                audio_section.input.waveform.is_some(),
                || bar.inc(1),
            )?;
            bar.finish_and_clear();
            (
                bundle_audio_embeddings(
                    bundle_dir,
                    &windows,
                    args.batch_size,
                    args.ort.as_deref(),
                )?,
                text,
            )
        }
        _ => unreachable!(),
    };
    let report = evaluate(
        &audio,
        &text,
        &caption_clip,
        &clips,
        source,
        data_desc,
        started.elapsed().as_secs_f64(),
    );
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

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Computes every metric from clip and caption embeddings.
pub fn evaluate(
    audio: &[Vec<f32>],
    text: &[Vec<f32>],
    caption_clip: &[usize],
    clips: &[&Clip],
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
    let class_precision = clips.iter().all(|c| c.label.is_some()).then(|| {
        let mut names: Vec<&str> = clips.iter().filter_map(|c| c.label.as_deref()).collect();
        names.sort();
        names.dedup();
        let classes: Vec<usize> = clips
            .iter()
            .map(|c| {
                names
                    .binary_search(&c.label.as_deref().unwrap_or(""))
                    .unwrap_or(0)
            })
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
    if audio.input.layout != crate::export_audio::input_layout(channels) {
        bail!(
            "the bundle's audio input layout is {:?}; this evaluator reads {:?} for {channels} channel(s)",
            audio.input.layout,
            crate::export_audio::input_layout(channels)
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
            let shape = crate::export_audio::input_shape(b, frames, channels, mels / channels);
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
