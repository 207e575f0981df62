//! `audiotext-train export`: a run's audio encoder becomes `audio.onnx` plus the manifest's
//! `audio` section in a bundle folder that holds (or receives) the text encoder it was trained
//! against; then the export checks itself against the trainer.
//!
//! The graph itself is [`crate::audio_graph`]'s.
//!
//! A trained text head is appended to the bundle's `text.onnx` (the frozen sentence encoder's
//! graph, unchanged, then `MatMul` + `Add` and L2 normalisation), so text and audio embeddings
//! of the bundle live in the same space.
//!
//! The check runs `audio.onnx` in ONNX Runtime on real features (batch 1 and batch 3, two frame
//! counts, and batch 2 shorter than the minimum) and compares with the trainer's own forward pass in validation mode; with a text
//! head, it also compares the bundle's text encoder with the trainer's head on a few captions.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::cache::{default_cache_dir, text_encoder_key, FeatureCache, Features};
use crate::data::Dataset;
use audiotext_core::model::manifest::{
    AudioInput, AudioSection, Manifest, TextSection, MANIFEST_FILE,
};
use audiotext_onnx::proto::NodeProto;
use audiotext_onnx::{AttributeProto, ModelProto, TensorProto};

use crate::audio_graph::{
    build_audio_onnx, generated_features, input_layout, input_shape, max_abs_diff, AUDIO_OPSET,
    INPUT_NAME, OUTPUT_NAME, PARITY_TOLERANCE, WAVEFORM_NAME,
};
use crate::encoders::Architecture;
use crate::model::{input_tensor, to_vec, waveform_tensor, Contrastive, EncoderConfig, NORM_EPS};
use crate::run::{device, ort_runtime, pad_value, DeviceKind, RunConfig, Which};
use crate::trained::load_model;

pub const AUDIO_ONNX_FILE: &str = "audio.onnx";

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run folder written by `fit`.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Bundle folder to write audio.onnx into. A folder without a manifest receives the text
    /// encoder of the run's text bundle as well.
    #[arg(long, value_name = "BUNDLE_DIR")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "best")]
    pub checkpoint: Which,
    /// Bundle name for a new manifest [default: the text bundle's name + "-" + the run's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Text bundle the run trained against [default: the one in the run's config].
    #[arg(long, value_name = "DIR")]
    pub text_bundle: Option<PathBuf>,
    /// Cache folder of features (to check the export on real clips).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub ort: Option<PathBuf>,
    /// The cross-validation of the run's recipe: a folder of fold runs (`fold*/metrics.jsonl`,
    /// as scripts/compare-pretrained.sh writes them); their last epochs' validation metrics,
    /// mean and standard error, go into the manifest.
    #[arg(long, value_name = "DIR")]
    pub cross_validation: Option<PathBuf>,
}

/// Mean and standard error over the folds in `dir` of each validation metric of their last
/// epoch (`fold*/metrics.jsonl`).
pub fn cross_validation_summary(dir: &Path) -> Result<Value> {
    let mut folds = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let is_fold = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("fold"));
        if is_fold {
            if let Some(last) = crate::fit::read_metrics(&path)?.pop() {
                folds.push((path, last));
            }
        }
    }
    if folds.len() < 2 {
        bail!("{} holds {} finished fold runs (fold*/metrics.jsonl): a cross-validation needs at least 2", dir.display(), folds.len());
    }
    folds.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = json!({
        "runs": dir.display().to_string(),
        "folds": folds.len(),
    });
    let values: Vec<Value> = folds
        .iter()
        .map(|(_, l)| serde_json::to_value(l))
        .collect::<Result<_, _>>()?;
    for key in [
        "class_p1",
        "class_map10",
        "class_p10",
        "t2a_r1",
        "t2a_r5",
        "t2a_r10",
        "t2a_map10",
    ] {
        let v: Vec<f64> = values
            .iter()
            .filter_map(|l| l.get(key).and_then(Value::as_f64))
            .collect();
        if v.len() != folds.len() {
            continue;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let se = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt();
        summary[key] = json!({ "mean": mean, "standard_error": se, "folds": v });
    }
    Ok(summary)
}

pub fn run(args: ExportArgs) -> Result<()> {
    let config = RunConfig::read(&args.run)?;
    let device = device(DeviceKind::Flex)?;
    let (model, state) = load_model(&args.run, &config, args.checkpoint, &device)?;
    let text_bundle = args
        .text_bundle
        .clone()
        .or(config.text_bundle.clone())
        .context("the run names no text bundle; pass --text-bundle")?;
    let inputs = parity_inputs(&config, args.cache.as_deref());
    let cross_validation = args
        .cross_validation
        .as_deref()
        .map(cross_validation_summary)
        .transpose()?;
    let report = export(&ExportJob {
        run_dir: &args.run,
        config: &config,
        model: &model,
        epoch: state.epoch,
        out: &args.out,
        name: args.name.clone(),
        text_bundle: &text_bundle,
        parity_inputs: inputs,
        ort: args.ort.as_deref(),
        cross_validation,
    })?;
    println!(
        "exported {} (epoch {}) to {}",
        args.run.display(),
        state.epoch,
        args.out.display()
    );
    println!(
        "  {}: {:.1} MB, {:.2} M parameters, opset {AUDIO_OPSET}",
        report.onnx_path.display(),
        report.onnx_bytes as f64 / 1e6,
        report.parameters as f64 / 1e6
    );
    if report.text_head {
        println!(
            "  text.onnx: the trained text head appended (text max |diff| {:.2e})",
            report.text_max_diff.unwrap_or(0.0)
        );
    }
    println!("  license: {}", report.license);
    for line in &report.parity_lines {
        println!("  parity: {line}");
    }
    println!(
        "  parity: max |diff| {:.2e} (tolerance {PARITY_TOLERANCE:.0e}) on {}",
        report.max_diff, report.parity_source
    );
    Ok(())
}

/// What to export.
pub struct ExportJob<'a> {
    pub run_dir: &'a Path,
    pub config: &'a RunConfig,
    /// The model in validation mode.
    pub model: &'a Contrastive,
    pub epoch: usize,
    pub out: &'a Path,
    pub name: Option<String>,
    pub text_bundle: &'a Path,
    /// Feature tensors for the parity check (and where they came from).
    pub parity_inputs: (Vec<Features>, String),
    pub ort: Option<&'a Path>,
    /// The recipe's cross-validated metrics ([`cross_validation_summary`]), for the manifest.
    pub cross_validation: Option<Value>,
}

/// What was exported, and how well ONNX Runtime agrees with the trainer.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub onnx_path: PathBuf,
    pub onnx_bytes: u64,
    pub parameters: u64,
    pub max_diff: f32,
    pub parity_lines: Vec<String>,
    pub parity_source: String,
    pub text_head: bool,
    pub text_max_diff: Option<f32>,
    pub license: String,
}

/// Features for the parity check: up to three validation (else training) clips of the run's
/// dataset from the feature cache or the front-end; generated features when the data is gone.
pub fn parity_inputs(config: &RunConfig, cache: Option<&Path>) -> (Vec<Features>, String) {
    let fe = &config.front_end;
    let from_data = || -> Result<Vec<Features>> {
        let data = config.data.as_ref().context("no data")?;
        let layout = crate::data::Layout::parse(&data.layout)?;
        let set = Dataset::open(&data.root, &layout)?;
        let mut picked: Vec<&Path> = set
            .clips
            .iter()
            .filter(|c| data.validation_files.contains(&c.file_name))
            .map(|c| c.path.as_path())
            .take(3)
            .collect();
        if picked.len() < 3 {
            picked = set.clips.iter().map(|c| c.path.as_path()).take(3).collect();
        }
        let cache = FeatureCache::new(Some(
            &cache
                .map(Path::to_path_buf)
                .unwrap_or_else(default_cache_dir),
        ));
        let (f, _) = crate::features::dataset_features(&picked, fe, &cache, || {})?;
        let f = if config.model.encoder.architecture.needs_waveform() {
            crate::features::with_waveforms(f, &picked, fe)?
        } else {
            f
        };
        Ok(f.iter().map(|a| (**a).clone()).collect())
    };
    match from_data() {
        Ok(f) if !f.is_empty() => (f, "clips of the training data".into()),
        other => {
            if let Err(e) = other {
                eprintln!("note: checking the export on generated features ({e:#})");
            }
            let mut f = generated_features(fe.n_mels * fe.channels(), 3, 320);
            if config.model.encoder.architecture.needs_waveform() {
                for (c, clip) in f.iter_mut().enumerate() {
                    let samples: Vec<f32> = (0..clip.frames * fe.hop_length)
                        .map(|i| (i as f32 * 0.01 * (c + 1) as f32).sin() * 0.3)
                        .collect();
                    *clip = clip.clone().with_waveform(&samples, fe.hop_length);
                }
            }
            (f, "generated features".into())
        }
    }
}

/// Writes the bundle and checks it.
pub fn export(job: &ExportJob) -> Result<ExportReport> {
    let config = job.config;
    let enc = &config.model.encoder;
    std::fs::create_dir_all(job.out)
        .with_context(|| format!("cannot create {}", job.out.display()))?;
    let src_manifest = Manifest::read(job.text_bundle)
        .with_context(|| format!("cannot read the text bundle {}", job.text_bundle.display()))?;
    let src_key = text_encoder_key(&src_manifest)?;
    if config.text_key.as_deref().is_some_and(|k| k != src_key) {
        bail!("the text bundle {} changed since the run was trained (its text encoder differs); pass the original with --text-bundle", job.text_bundle.display());
    }
    let same_folder = same_dir(job.out, job.text_bundle);
    let has_head = job.model.text_head.is_some();
    if same_folder && has_head {
        bail!("the run trained a text head, which rewrites text.onnx: export into a new folder, not into the text bundle {}", job.text_bundle.display());
    }

    // The manifest to extend: the bundle's own, or a copy of the text bundle's.
    let mut manifest = target_manifest(job, &src_manifest, &src_key, has_head)?;
    let text_section = copy_text_encoder(job, &src_manifest, same_folder, has_head)?;
    manifest.text = Some(text_section);

    // audio.onnx
    let onnx = build_audio_onnx(&job.model.audio, enc, pad_value(&config.front_end));
    let onnx_path = job.out.join(AUDIO_ONNX_FILE);
    let bytes = onnx.to_bytes();
    std::fs::write(&onnx_path, &bytes)
        .with_context(|| format!("cannot write {}", onnx_path.display()))?;

    let license = license_text(
        config,
        manifest
            .license
            .as_deref()
            .or(src_manifest.license.as_deref()),
    );
    manifest.license = Some(license.clone());
    manifest.audio = Some(AudioSection {
        onnx: AUDIO_ONNX_FILE.into(),
        front_end: config.front_end.clone(),
        windowing: config.windowing.clone(),
        input: AudioInput {
            waveform: enc
                .architecture
                .needs_waveform()
                .then(|| WAVEFORM_NAME.into()),
            name: INPUT_NAME.into(),
            layout: input_layout(enc.input_channels).into(),
        },
        output: OUTPUT_NAME.into(),
        encoder: Some(encoder_json(enc, config)),
        quantization: None,
    });
    let training = manifest.training.take();
    manifest.training = Some(training_record(job, training));
    manifest.write(job.out)?;

    // Checks.
    let (max_diff, lines, text_max_diff) = check_export(job, &onnx_path, &src_manifest, has_head)?;
    Ok(ExportReport {
        onnx_path,
        onnx_bytes: bytes.len() as u64,
        parameters: enc.parameter_count() as u64,
        max_diff,
        parity_lines: lines,
        parity_source: job.parity_inputs.1.clone(),
        text_head: has_head,
        text_max_diff,
        license,
    })
}

/// The manifest the export extends: the output folder's own (checked against the run), or
/// a copy of the text bundle's named for the run.
fn target_manifest(
    job: &ExportJob,
    src_manifest: &Manifest,
    src_key: &str,
    has_head: bool,
) -> Result<Manifest> {
    let enc = &job.config.model.encoder;
    let mut manifest = if job.out.join(MANIFEST_FILE).is_file() {
        let m = Manifest::read(job.out)?;
        if m.embedding_dim != enc.embedding_dim {
            bail!(
                "{} holds {}-dim embeddings, while the audio encoder outputs {}",
                job.out.display(),
                m.embedding_dim,
                enc.embedding_dim
            );
        }
        if m.text.is_some() && !has_head && text_encoder_key(&m)? != src_key {
            bail!(
                "the text encoder in {} is not the one the audio encoder was trained against ({}); export into a new folder",
                job.out.display(),
                job.text_bundle.display()
            );
        }
        m
    } else {
        let mut m = src_manifest.clone();
        m.name = job.name.clone().unwrap_or_else(|| {
            let run = job
                .run_dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(String::from))
                .unwrap_or_else(|| "audio".into());
            // The text model's own name (its source folder), not the bundle's, which may
            // describe an earlier audio encoder.
            let text_name = src_manifest
                .text
                .as_ref()
                .and_then(|t| t.source.as_ref())
                .and_then(|s| s.get("folder"))
                .and_then(|f| f.as_str())
                .map(String::from)
                .unwrap_or_else(|| src_manifest.name.clone());
            format!("{run} (audio) + {text_name} (text)")
        });
        m.audio = None;
        m.training = None;
        m
    };
    if let Some(name) = &job.name {
        manifest.name = name.clone();
    }
    Ok(manifest)
}

/// The text encoder's files in the output folder (unless it is the text bundle), `text.onnx`
/// with the trained text head appended when the run has one; returns its manifest section.
fn copy_text_encoder(
    job: &ExportJob,
    src_manifest: &Manifest,
    same_folder: bool,
    has_head: bool,
) -> Result<TextSection> {
    let enc = &job.config.model.encoder;
    let text = src_manifest
        .text
        .clone()
        .context("the text bundle has no text section")?;
    if !same_folder {
        for file in [&text.onnx, &text.tokenizer] {
            if !(has_head && file == &text.onnx) {
                std::fs::copy(job.text_bundle.join(file), job.out.join(file)).with_context(
                    || format!("cannot copy {file} from {}", job.text_bundle.display()),
                )?;
            }
        }
    }
    let mut text_section = text.clone();
    // The run's centre, or none: the text bundle's own was not what this run validated with.
    text_section.centre = job.config.query_centre().map(<[f32]>::to_vec);
    if let Some(head) = &job.model.text_head {
        let original = ModelProto::from_bytes(&std::fs::read(job.text_bundle.join(&text.onnx))?)
            .with_context(|| format!("cannot parse {}", text.onnx))?;
        let weight = to_vec(head.weight.val());
        let bias = head
            .bias
            .as_ref()
            .map(|b| to_vec(b.val()))
            .unwrap_or_else(|| vec![0.0; enc.embedding_dim]);
        let patched = append_text_head(original, &text.output, &weight, &bias, enc.embedding_dim)?;
        std::fs::write(job.out.join(&text.onnx), patched.to_bytes())?;
        let mut source = text.source.clone().unwrap_or_else(|| json!({}));
        source["trained_head"] = json!({"run": job.run_dir.display().to_string(), "epoch": job.epoch, "in": enc.embedding_dim, "out": enc.embedding_dim});
        text_section.source = Some(source);
    }
    Ok(text_section)
}

/// The manifest's `training` record, with this run's `audio_encoder` entry.
fn training_record(job: &ExportJob, earlier: Option<Value>) -> Value {
    let config = job.config;
    let metrics = crate::fit::read_metrics(job.run_dir).unwrap_or_default();
    let epoch_metrics = metrics
        .iter()
        .find(|l| l.epoch == job.epoch)
        .map(|l| serde_json::to_value(l).unwrap_or(Value::Null));
    let mut training = match earlier {
        Some(Value::Object(map)) => Value::Object(map),
        _ => json!({}),
    };
    training["audio_encoder"] = json!({
        "run": job.run_dir.display().to_string(),
        "epoch": job.epoch,
        "epochs": config.train.epochs,
        "data": config.data.as_ref().map(|d| json!({
            "root": d.root.display().to_string(),
            "layout": d.layout,
            "train_clips": d.train_clips,
            "validation_clips": d.validation_files.len(),
            "validation": match &d.validation_split {
                Some(s) => format!("the {s} split"),
                None => match d.fold {
                    Some(f) => format!("fold {} of {} class-balanced folds of the recordings, seed {}", f.index, f.count, d.split_seed),
                    None => format!("{:.0}% of the recordings (clips of one recording on one side), seed {}", d.validation_fraction * 100.0, d.split_seed),
                },
            },
            "license": d.license,
        })),
        "text_targets": config.text_model,
        "pretrained": config.pretrained,
        "loss": config.train.loss.describe(),
        "temperature": job.model.temperature(config.model.temperature),
        "hyperparameters": config.train,
        "validation_metrics": epoch_metrics,
        "cross_validation": job.cross_validation,
        "metric_definitions": "text-to-audio: per caption, rank of its clip; R@k = rank <= k; mAP@10 = mean of 1/rank if rank <= 10 else 0 (DCASE). audio-to-text: per clip, R@k = any of its captions within k; AP@10 over its captions",
    });
    training
}

/// `audio.onnx` (and a patched `text.onnx`) against the trainer's forward pass: the largest
/// differences and the lines that report them. Fails above [`PARITY_TOLERANCE`].
fn check_export(
    job: &ExportJob,
    onnx_path: &Path,
    src_manifest: &Manifest,
    has_head: bool,
) -> Result<(f32, Vec<String>, Option<f32>)> {
    let config = job.config;
    let enc = &config.model.encoder;
    let rt = ort_runtime(job.ort)?;
    let (inputs, _source) = &job.parity_inputs;
    let (max_diff, lines) = audio_parity(
        job.model,
        onnx_path,
        inputs,
        enc,
        pad_value(&config.front_end),
        rt,
    )?;
    if max_diff > PARITY_TOLERANCE {
        bail!("audio.onnx differs from the trainer by {max_diff:.2e} (> {PARITY_TOLERANCE:.0e}); the export is wrong, do not use {}", job.out.display());
    }
    let text_max_diff = if has_head {
        Some(text_parity(job, src_manifest)?)
    } else {
        None
    };
    if let Some(d) = text_max_diff {
        if d > PARITY_TOLERANCE {
            bail!("the text.onnx with the trained head differs from the trainer by {d:.2e} (> {PARITY_TOLERANCE:.0e})");
        }
    }
    Ok((max_diff, lines, text_max_diff))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Attribution of aiSFX's weights (CC BY 4.0 asks for it): PyPI's aisfx 0.1.2 wheel ships them;
/// its classifier line says MIT, its LICENSE file says CC BY 4.0, which we follow.
pub const AISFX_ATTRIBUTION: &str = "aiSFX by Alison B. Ma and Alexander Lerch (\"Representation Learning for the Automatic Indexing of Sound Effects Libraries\", ISMIR 2022), CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), weights from PyPI's aisfx 0.1.2 (aisfx/models/checkpoint.pth; the wheel's classifier says MIT, its LICENSE file CC BY 4.0, followed here), unmodified";

/// The licence of the bundle: the audio encoder inherits the terms of its training data.
fn license_text(config: &RunConfig, text_license: Option<&str>) -> String {
    let text_part = text_license.map(|t| {
        // A re-export replaces the audio part of an earlier combined licence.
        t.split_once("; text encoder: ")
            .map(|(_, t)| t.to_string())
            .unwrap_or_else(|| t.to_string())
    });
    let data = config.data.as_ref();
    let data_license = data.and_then(|d| d.license.clone());
    let root = data
        .map(|d| d.root.display().to_string())
        .unwrap_or_default();
    let audio = match data_license {
        Some(l) if l.contains("NC") => format!(
            "audio encoder: {l}, inherited from its training data ({root}): non-commercial use only, with attribution"
        ),
        Some(l) => format!("audio encoder: {l}, inherited from its training data ({root})"),
        None => format!("audio encoder: trained on {root}, whose licence is not recorded; check the data's terms before use"),
    };
    // Pretrained weights carry their own terms, next to the data's.
    let audio = match &config.pretrained {
        Some(p) if config.model.encoder.architecture == Architecture::Aisfx => format!(
            "{audio}; its backbone: {AISFX_ATTRIBUTION} (sha256 {})",
            p.sha256
        ),
        _ => audio,
    };
    match text_part {
        Some(t) => format!("{audio}; text encoder: {t}"),
        None => audio,
    }
}

fn encoder_json(enc: &EncoderConfig, config: &RunConfig) -> Value {
    json!({
        "architecture": enc.architecture.describe(&enc.channels),
        "input_norm": if enc.architecture.has_bn0() {
            "BatchNorm over mel bands (folded into Mul + Add)"
        } else {
            "none: the front-end's scaling (log_multiplier, log_divisor) is the backbone's"
        },
        "batchnorm": "folded into the preceding convolution",
        "pooling": enc.pooling.describe(),
        "head": format!("Linear {} -> {} + ReLU, Linear {} -> {}, L2-normalised", enc.pooled_dim(), enc.fc_dim, enc.fc_dim, enc.embedding_dim),
        "min_frames": enc.min_frames(),
        "short_inputs": "padded at the end to min_frames with the front-end's silence value, inside the graph",
        "parameters": enc.parameter_count(),
        "batchnorm_epsilon": enc.bn_epsilon,
        "config": enc,
        "text_head": config.model.text_head,
        "opset": AUDIO_OPSET,
        "exported_by": format!("audiotext-train {}", env!("CARGO_PKG_VERSION")),
    })
}

/// Appends `normalize(x @ weight + bias)` after the output `output` of a text graph.
/// `weight` is `[dim, dim]` in MatMul layout (burn's Linear layout).
pub fn append_text_head(
    mut model: ModelProto,
    output: &str,
    weight: &[f32],
    bias: &[f32],
    dim: usize,
) -> Result<ModelProto> {
    let graph = model.graph.as_mut().context("text.onnx has no graph")?;
    let base = format!("{output}_sentence");
    let mut found = false;
    for node in &mut graph.node {
        for o in &mut node.output {
            if o == output {
                *o = base.clone();
                found = true;
            }
        }
    }
    if !found {
        bail!("text.onnx has no node producing {output:?}");
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
        .and_then(|o| o.version)
        .unwrap_or(17);
    if opset >= 18 {
        bail!("text.onnx uses opset {opset}; appending a head is implemented for opset 13-17");
    }
    let w = TensorProto::from_f32("text_head.weight", &[dim as i64, dim as i64], weight);
    let b = TensorProto::from_f32("text_head.bias", &[dim as i64], bias);
    let eps = TensorProto::from_f32("text_head.norm_eps", &[], &[NORM_EPS]);
    graph.initializer.extend([w, b, eps]);
    let node =
        |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(format!("text_head.{op}.{output}")),
            op_type: Some(op.to_string()),
            attribute,
            ..Default::default()
        };
    graph.node.extend([
        node(
            "MatMul",
            &[&base, "text_head.weight"],
            "text_head.matmul",
            vec![],
        ),
        node(
            "Add",
            &["text_head.matmul", "text_head.bias"],
            "text_head.linear",
            vec![],
        ),
        node(
            "ReduceL2",
            &["text_head.linear"],
            "text_head.norm",
            vec![
                AttributeProto::ints("axes", &[1]),
                AttributeProto::int("keepdims", 1),
            ],
        ),
        node(
            "Max",
            &["text_head.norm", "text_head.norm_eps"],
            "text_head.norm_clamped",
            vec![],
        ),
        node(
            "Div",
            &["text_head.linear", "text_head.norm_clamped"],
            output,
            vec![],
        ),
    ]);
    Ok(model)
}

/// Runs `audio.onnx` in ONNX Runtime and the trainer's encoder on the same inputs: batch 1 at
/// full length, and batch 3 (clips repeated if needed) cropped to a shorter common length.
pub fn audio_parity(
    model: &Contrastive,
    onnx_path: &Path,
    clips: &[Features],
    enc: &EncoderConfig,
    silence: f32,
    rt: &audiotext_core::model::runtime::Runtime,
) -> Result<(f32, Vec<String>)> {
    if clips.is_empty() {
        bail!("no features to check the export with");
    }
    let device = model.audio.fc.weight.val().device();
    let (mut session, placement) = rt.session(onnx_path)?;
    // Values per frame: every channel's mel bands.
    let mels = enc.n_mels * enc.input_channels;
    let first = &clips[0];
    let short = (first.frames * 3 / 5).max(enc.min_frames());
    // Each case: a batch of clips of equal length (with their samples, for waveform encoders).
    let mut cases: Vec<Vec<Features>> = vec![vec![first.clone()]];
    let mut batch = Vec::new();
    for i in 0..3 {
        let c = &clips[i % clips.len()];
        let offset = if i >= clips.len() {
            c.frames.saturating_sub(short)
        } else {
            0
        };
        batch.push(crate::run::pad_frames(
            &c.crop(offset, short),
            short,
            silence,
        ));
    }
    cases.push(batch);
    // Shorter than the encoder's minimum: the graph pads like the trainer.
    let tiny = enc.min_frames().saturating_sub(5).max(1).min(first.frames);
    cases.push(
        (0..2)
            .map(|i| clips[i % clips.len()].crop(0, tiny))
            .collect(),
    );
    let mut worst = 0f32;
    let mut lines = Vec::new();
    for case in cases {
        let (b, frames) = (case.len(), case[0].frames);
        // The trainer pads short inputs before the model (see `run::embed_windows`).
        let padded: Vec<Features> = case
            .iter()
            .map(|f| crate::run::pad_frames(f, enc.min_frames(), silence))
            .collect();
        let padded_frames = padded[0].frames;
        let expected = to_vec(model.audio.forward_with(
            input_tensor(
                padded.iter().flat_map(|f| f.data.clone()).collect(),
                b,
                padded_frames,
                mels,
                enc.input_channels,
                &device,
            ),
            waveform_tensor(
                padded.iter().flat_map(|f| f.waveform.clone()).collect(),
                b,
                &device,
            ),
        ));
        let shape = input_shape(b, frames, enc.input_channels, enc.n_mels);
        let values: Vec<f32> = case.iter().flat_map(|f| f.data.clone()).collect();
        let input = ort::value::Tensor::from_array((shape, values))?;
        let outputs = if enc.architecture.needs_waveform() {
            let samples: Vec<f32> = case.iter().flat_map(|f| f.waveform.clone()).collect();
            let n = samples.len() / b;
            let waveform = ort::value::Tensor::from_array(([b as i64, n as i64], samples))?;
            session.run(ort::inputs![INPUT_NAME => input, WAVEFORM_NAME => waveform])?
        } else {
            session.run(ort::inputs![INPUT_NAME => input])?
        };
        let output = outputs
            .get(OUTPUT_NAME)
            .context("audio.onnx has no output \"embedding\"")?;
        let (shape, got) = output.try_extract_tensor::<f32>()?;
        if shape.len() != 2 || shape[0] as usize != b || shape[1] as usize != enc.embedding_dim {
            bail!(
                "audio.onnx returned shape {:?}, expected [{b}, {}]",
                shape.to_vec(),
                enc.embedding_dim
            );
        }
        let diff = max_abs_diff(&expected, got);
        worst = worst.max(diff);
        lines.push(format!(
            "batch {b} x {frames} frames: max |diff| {diff:.2e} ({})",
            placement.provider
        ));
    }
    Ok((worst, lines))
}

/// Embeds a few captions with the bundle's (patched) text encoder and with the trainer's head
/// on the text bundle's embeddings; returns the largest difference.
fn text_parity(job: &ExportJob, _src: &Manifest) -> Result<f32> {
    let captions = [
        "a dog barks",
        "rain falls on a tin roof",
        "a car passes by on a wet road",
    ];
    let original = audiotext_core::Bundle::open(job.text_bundle)?
        .text_encoder()?
        .embed_network(&captions)?;
    let exported = audiotext_core::Bundle::open(job.out)?
        .text_encoder()?
        .embed(&captions)?;
    let device = job.model.audio.fc.weight.val().device();
    let expected = crate::run::embed_texts(job.model, &original, &device);
    Ok(expected
        .iter()
        .flatten()
        .zip(exported.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max))
}
