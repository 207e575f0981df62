//! Frozen pretrained backbones: `export-backbone`, and the per-window backbone outputs that
//! `fit-head` trains a projection head on.
//!
//! A frozen backbone computes the same vector for a window in every epoch, so `fit-head` runs
//! it once per window through ONNX Runtime (the graph `export-backbone` writes, checked against
//! the trainer's own forward pass) and caches the result; training then touches only the head.
//! The windows are the extension's own (`features::file_windows`: each window's log-mel from its
//! own samples), so the head learns on exactly what `audio_embed` feeds it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use clap::Args;
use ort::session::Session;

use crate::cache::Features;
use audiotext_core::audio_encoder::equal_length_batches;

use crate::audio_graph::{
    build_encoder_onnx, generated_features, input_shape, max_abs_diff, GraphOutput, INPUT_NAME,
    OUTPUT_NAME, PARITY_TOLERANCE,
};
use crate::encoders::pooling::PoolingKind;
use crate::encoders::Architecture;
use crate::model::{input_tensor, to_vec, AudioEncoder, EncoderConfig};
use crate::pretrained::PretrainedInfo;
use crate::run::{ort_runtime, pad_frames};

/// File name of the backbone graph in `export-backbone`'s output folder.
pub const BACKBONE_ONNX_FILE: &str = "backbone.onnx";
/// Where set-up (`scripts/fetch-python-assets.sh`) puts aiSFX's checkpoint, under the repo.
pub const AISFX_CHECKPOINT: &str = ".cache/pretrained/aisfx/checkpoint.pth";
/// aiSFX's mel bands and embedding size.
pub const AISFX_MELS: usize = 96;
/// Windows per ONNX Runtime call.
const BATCH_WINDOWS: usize = 64;

#[derive(Debug, Args)]
pub struct ExportBackboneArgs {
    /// Backbone: aisfx (the only pretrained backbone `fit-head` trains on so far).
    #[arg(long, default_value = "aisfx")]
    pub encoder: String,
    /// Checkpoint [default: .cache/pretrained/aisfx/checkpoint.pth, from set-up].
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,
    /// Folder to write backbone.onnx into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, value_name = "FILE")]
    pub ort: Option<PathBuf>,
}

/// The encoder config of a pretrained backbone with a head into `embedding_dim` dimensions.
pub fn pretrained_encoder(name: &str, embedding_dim: usize) -> Result<EncoderConfig> {
    match name {
        "aisfx" => {
            // aiSFX's embedding: the mean over mels, then the max over time.
            let mut config = EncoderConfig::new(
                Architecture::Aisfx,
                PoolingKind::Max,
                AISFX_MELS,
                embedding_dim,
                64,
            );
            // Its blocks had no dropout; the head's dropout is set by `fit-head`.
            config.block_dropout = 0.0;
            Ok(config)
        }
        other => bail!("--encoder {other}: the pretrained backbone for fit-head is aisfx"),
    }
}

/// The checkpoint to use: `flag`, else set-up's copy of aiSFX's, looked for in the working
/// folder and next to the trainer (`dist/..`).
pub fn checkpoint_path(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from(AISFX_CHECKPOINT)];
    if let Some(root) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        candidates.push(root.join(AISFX_CHECKPOINT));
    }
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no aiSFX checkpoint at {}: run scripts/fetch-python-assets.sh (set-up fetches it from PyPI's aisfx 0.1.2), or pass --pretrained FILE",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )
    })
}

/// The recorded checkpoint of a run, found again: its own path when that file still has the
/// recorded sha256, else set-up's copy with the same sha256 (a run folder moved to another
/// clone, such as the committed default's).
pub fn resolve_checkpoint(info: &PretrainedInfo) -> Result<PretrainedInfo> {
    let mut candidates = vec![info.path.clone()];
    if let Ok(p) = checkpoint_path(None) {
        candidates.push(p);
    }
    for path in candidates {
        if path.is_file()
            && audiotext_core::model::manifest::sha256_file(&path)
                .ok()
                .as_deref()
                == Some(info.sha256.as_str())
        {
            return Ok(PretrainedInfo {
                path: path.canonicalize().unwrap_or(path),
                ..info.clone()
            });
        }
    }
    bail!(
        "the run starts from {} (sha256 {}), and neither that file nor set-up's copy has that sha256: run scripts/fetch-python-assets.sh, or put the checkpoint back",
        info.path.display(),
        info.sha256
    )
}

/// The backbone with the pretrained weights, in inference mode, on the CPU.
pub fn load_backbone(config: &EncoderConfig, info: &PretrainedInfo) -> Result<AudioEncoder> {
    let device = Device::flex();
    let encoder = config.init(&device);
    crate::pretrained::import(encoder, config, info, &device)
}

/// `export-backbone`: writes backbone.onnx and checks it against the trainer's forward pass.
pub fn run_export(args: ExportBackboneArgs) -> Result<()> {
    let config = pretrained_encoder(&args.encoder, 1)?;
    let path = checkpoint_path(args.pretrained.as_deref())?;
    let info = crate::pretrained::check(&path, &config)?;
    let encoder = load_backbone(&config, &info)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let onnx = args.out.join(BACKBONE_ONNX_FILE);
    write_backbone_onnx(&encoder, &config, &onnx)?;
    let rt = ort_runtime(args.ort.as_deref())?;
    let (worst, lines) = backbone_parity(&encoder, &config, &onnx, rt)?;
    println!(
        "exported the {} backbone ({}) to {}",
        args.encoder,
        info.source,
        onnx.display()
    );
    for line in lines {
        println!("  parity: {line}");
    }
    println!("  parity: max |diff| {worst:.2e} (tolerance {PARITY_TOLERANCE:.0e})");
    Ok(())
}

pub fn write_backbone_onnx(
    encoder: &AudioEncoder,
    config: &EncoderConfig,
    path: &Path,
) -> Result<()> {
    let model = build_encoder_onnx(encoder, config, 0.0, GraphOutput::Pooled);
    std::fs::write(path, model.to_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The trainer's pooled output against ONNX Runtime's on generated log-mels of several lengths
/// (one window, a short one, a long one); fails above [`PARITY_TOLERANCE`].
pub fn backbone_parity(
    encoder: &AudioEncoder,
    config: &EncoderConfig,
    onnx: &Path,
    rt: &audiotext_core::model::runtime::Runtime,
) -> Result<(f32, Vec<String>)> {
    let (mut session, placement) = rt.session(onnx)?;
    let mut worst = 0f32;
    let mut lines = Vec::new();
    for (batch, frames) in [(2, 100), (1, 37), (3, 215)] {
        let mut clips = generated_features(config.n_mels, batch, frames);
        // The aiSFX front-end's values lie in [0, 1.2]: scale the dB-like test values there.
        for c in &mut clips {
            for v in &mut c.data {
                *v = (*v + 100.0) / 100.0;
            }
        }
        let values: Vec<f32> = clips.iter().flat_map(|f| f.data.clone()).collect();
        let expected = to_vec(encoder.pooled(
            input_tensor(
                values.clone(),
                batch,
                frames,
                config.n_mels,
                1,
                &Device::flex(),
            ),
            None,
        ));
        let got = run_session(&mut session, values, batch, frames, config)?;
        let diff = max_abs_diff(&expected, &got);
        worst = worst.max(diff);
        lines.push(format!(
            "batch {batch} x {frames} frames: max |diff| {diff:.2e} ({})",
            placement.provider
        ));
    }
    if worst > PARITY_TOLERANCE {
        bail!(
            "{} differs from the trainer's forward pass by {worst:.2e} (tolerance {PARITY_TOLERANCE:.0e})",
            onnx.display()
        );
    }
    Ok((worst, lines))
}

fn run_session(
    session: &mut Session,
    values: Vec<f32>,
    batch: usize,
    frames: usize,
    config: &EncoderConfig,
) -> Result<Vec<f32>> {
    let shape = input_shape(batch, frames, 1, config.n_mels);
    let input = ort::value::Tensor::from_array((shape, values))?;
    let outputs = session.run(ort::inputs![INPUT_NAME => input])?;
    let output = outputs
        .get(OUTPUT_NAME)
        .context("backbone.onnx has no output \"embedding\"")?;
    let (shape, got) = output.try_extract_tensor::<f32>()?;
    let dim = config.pooled_dim();
    if shape.len() != 2 || shape[0] as usize != batch || shape[1] as usize != dim {
        bail!(
            "backbone.onnx returned shape {:?}, expected [{batch}, {dim}]",
            shape.to_vec()
        );
    }
    Ok(got.to_vec())
}

/// A backbone graph in ONNX Runtime, for embedding windows.
pub struct BackboneRunner {
    session: Mutex<Session>,
    config: EncoderConfig,
    pub provider: &'static str,
}

impl BackboneRunner {
    pub fn new(
        onnx: &Path,
        config: &EncoderConfig,
        rt: &audiotext_core::model::runtime::Runtime,
    ) -> Result<BackboneRunner> {
        let (session, placement) = rt.session(onnx)?;
        Ok(BackboneRunner {
            session: Mutex::new(session),
            config: config.clone(),
            provider: placement.provider,
        })
    }

    /// Values per window: the backbone's pooled output size.
    pub fn dim(&self) -> usize {
        self.config.pooled_dim()
    }

    /// The pooled backbone output of each window (`pooled_dim` values each), in order. Windows
    /// shorter than the encoder's minimum are padded with silence (0 on aiSFX's scale), as the
    /// exported bundle pads them.
    pub fn embed(&self, windows: &[&Features]) -> Result<Vec<Vec<f32>>> {
        let min = self.config.min_frames();
        let dim = self.config.pooled_dim();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; windows.len()];
        let frames: Vec<usize> = windows.iter().map(|w| w.frames.max(min)).collect();
        for batch in equal_length_batches(&frames, BATCH_WINDOWS) {
            let mut values =
                Vec::with_capacity(batch.len() * frames[batch[0]] * self.config.n_mels);
            for &i in &batch {
                values.extend_from_slice(&pad_frames(windows[i], min, 0.0).data);
            }
            let got = {
                let mut session = self.session.lock().expect("session lock");
                run_session(
                    &mut session,
                    values,
                    batch.len(),
                    frames[batch[0]],
                    &self.config,
                )?
            };
            for (&i, v) in batch.iter().zip(got.chunks(dim)) {
                out[i] = Some(v.to_vec());
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.expect("every window embedded"))
            .collect())
    }
}
