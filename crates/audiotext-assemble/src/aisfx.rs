//! The default audio encoder, `audio.onnx` (float32), assembled without a training framework:
//! the frozen aiSFX backbone from its published checkpoint (the `aisfx` package on PyPI) and
//! the projection head a `fit-head` run trained on it (`head.safetensors`, committed in
//! `models/default/run`).
//!
//! The graph is the one `audiotext-train export` writes for that run, from the same layer
//! functions ([`crate::layers`]), so the bytes are the same: pad to the encoder's minimum
//! length with the front end's silence, four aiSFX conv blocks, the mean over mels, the max
//! over time, `fc`, ReLU, `proj`, L2 normalisation. A test in the trainer checks the two
//! writers agree byte for byte; set-up checks the result against the committed manifest.

use std::path::Path;

use anyhow::{bail, Context, Result};
use audiotext_core::audio::FrontEnd;
use audiotext_onnx::{GraphBuilder, ModelProto};
use serde::Deserialize;

use crate::checkpoint::{read_checkpoint, read_safetensors, StateDict};
use crate::layers::{
    conv_blocks_onnx, embedding_head_onnx, encoder_model_info, log_mel_input_onnx, pad_time_onnx,
    BatchNormWeights, ConvBlockWeights, ConvWeights, LinearWeights, AUDIO_OPSET,
};

/// The first tensor of aiSFX's embedding network, which locates its names in the checkpoint.
const FIRST_TENSOR: &str = "conv_block1.conv1.weight";
/// The kernel of aiSFX's convolutions.
const KERNEL: usize = 3;

/// One line for the manifest and the graph's doc string.
pub fn aisfx_description(channels: &[usize]) -> String {
    let ch: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    format!(
        "aiSFX (Ma and Lerch 2022): 4 blocks of two 3x3 convs, max pooling, channels {}",
        ch.join(", ")
    )
}

/// The fewest frames aiSFX takes: its first three blocks halve time, flooring.
pub fn aisfx_min_frames(channels: &[usize]) -> usize {
    1 << channels.len().saturating_sub(1)
}

/// What the assembly reads from a `fit-head` run's `config.json`.
#[derive(Debug, Deserialize)]
pub struct HeadRun {
    model: ModelSection,
    front_end: FrontEnd,
    pretrained: PretrainedSection,
    head: HeadSection,
}

#[derive(Debug, Deserialize)]
struct ModelSection {
    encoder: EncoderSection,
}

#[derive(Debug, Deserialize)]
struct EncoderSection {
    n_mels: usize,
    input_channels: usize,
    channels: Vec<usize>,
    fc_dim: usize,
    embedding_dim: usize,
    bn_epsilon: f64,
    architecture: Kind,
    pooling: Kind,
    #[serde(default = "one")]
    tapped_blocks: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
struct Kind {
    kind: String,
}

#[derive(Debug, Deserialize)]
struct PretrainedSection {
    sha256: String,
}

#[derive(Debug, Deserialize)]
struct HeadSection {
    head_file: String,
}

impl HeadRun {
    /// Reads `run/config.json` and checks it describes what this assembly builds.
    pub fn read(run: &Path) -> Result<HeadRun> {
        let path = run.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: HeadRun = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not the config.json of a fit-head run",
                path.display()
            )
        })?;
        let enc = &config.model.encoder;
        let built = "builds aiSFX + a head with max pooling over time (the default's recipe); export other runs with audiotext-train export";
        if enc.architecture.kind != "aisfx" || enc.pooling.kind != "max" || enc.tapped_blocks != 1 {
            bail!(
                "{}: the encoder is {} with {} pooling and {} tapped block(s); the assembler {built}",
                path.display(),
                enc.architecture.kind,
                enc.pooling.kind,
                enc.tapped_blocks
            );
        }
        if enc.input_channels != 1 || enc.channels.len() != 4 {
            bail!(
                "{}: aiSFX takes one input channel and has 4 blocks, the config says {} and {:?}",
                path.display(),
                enc.input_channels,
                enc.channels
            );
        }
        Ok(config)
    }

    /// The sha256 of the aiSFX checkpoint the head was trained on.
    pub fn backbone_sha256(&self) -> &str {
        &self.pretrained.sha256
    }

    /// The head's weights file, relative to the run folder.
    pub fn head_file(&self) -> &str {
        &self.head.head_file
    }
}

/// `audio.onnx` from the run in `run` and the aiSFX checkpoint at `checkpoint`, which must be
/// the one the run trained on (its sha256 is in the run's config).
pub fn assemble_audio_onnx(run: &Path, checkpoint: &Path) -> Result<ModelProto> {
    let config = HeadRun::read(run)?;
    let sha256 = audiotext_core::model::manifest::sha256_file(checkpoint)
        .with_context(|| format!("cannot read the aiSFX checkpoint {}", checkpoint.display()))?;
    if sha256 != config.backbone_sha256() {
        bail!(
            "{} has sha256 {sha256}, the head in {} was trained on the aiSFX checkpoint with sha256 {}: \
             use models/checkpoint.pth of aisfx 0.1.2 from PyPI",
            checkpoint.display(),
            run.display(),
            config.backbone_sha256()
        );
    }
    let backbone = read_checkpoint(checkpoint)?;
    let head_path = run.join(config.head_file());
    let head = read_safetensors(&head_path)
        .with_context(|| format!("cannot read the head {}", head_path.display()))?;
    build_aisfx_onnx(&config, &backbone, &head).with_context(|| {
        format!(
            "assembling aiSFX ({}) with the head in {}",
            checkpoint.display(),
            run.display()
        )
    })
}

/// The graph from tensors already read (see the module docs).
pub fn build_aisfx_onnx(
    config: &HeadRun,
    backbone: &StateDict,
    head: &StateDict,
) -> Result<ModelProto> {
    let enc = &config.model.encoder;
    let blocks = aisfx_blocks(backbone, &enc.channels, enc.bn_epsilon)?;
    let last = *enc.channels.last().expect("checked: 4 blocks");
    let fc = head_linear(head, "fc", enc.fc_dim, last)?;
    let proj = head_linear(head, "proj", enc.embedding_dim, enc.fc_dim)?;

    let mut g = GraphBuilder::new("audio_encoder", AUDIO_OPSET);
    let x = log_mel_input_onnx(&mut g, enc.n_mels, 1);
    let x = pad_time_onnx(
        &mut g,
        &x,
        aisfx_min_frames(&enc.channels),
        config.front_end.silence_value(),
    );
    let x = conv_blocks_onnx(&mut g, &x, &blocks);
    let frames = g.reduce("ReduceMean", &x, &[3], false);
    let pooled = g.reduce("ReduceMax", &frames, &[2], false);
    embedding_head_onnx(&mut g, &pooled, &fc, &proj);
    Ok(g.finish(encoder_model_info(
        1,
        &aisfx_description(&enc.channels),
        "max over time",
        "L2-normalised audio embedding",
    )))
}

/// aiSFX's four conv blocks from its checkpoint (names under whatever prefix wraps
/// `conv_block1.conv1.weight`).
fn aisfx_blocks(
    state: &StateDict,
    channels: &[usize],
    epsilon: f64,
) -> Result<Vec<ConvBlockWeights>> {
    let prefix = tensor_prefix(state)?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let key = format!("{prefix}{name}");
        let t = state
            .get(&key)
            .with_context(|| format!("the checkpoint has no {key}: is it aiSFX's?"))?;
        if t.shape != shape {
            bail!("{key} is {:?}, aiSFX's is {shape:?}", t.shape);
        }
        Ok(t.data.clone())
    };
    let conv = |name: &str, c_out: usize, c_in: usize| -> Result<ConvWeights> {
        let dims = vec![c_out, c_in, KERNEL, KERNEL];
        Ok(ConvWeights {
            weight: get(&format!("{name}.weight"), &dims)?,
            dims,
            bias: None,
        })
    };
    let bn = |name: &str, c: usize| -> Result<BatchNormWeights> {
        Ok(BatchNormWeights {
            gamma: get(&format!("{name}.weight"), &[c])?,
            beta: get(&format!("{name}.bias"), &[c])?,
            mean: get(&format!("{name}.running_mean"), &[c])?,
            var: get(&format!("{name}.running_var"), &[c])?,
            epsilon,
        })
    };
    let mut c_in = 1;
    let mut blocks = Vec::new();
    for (i, &c) in channels.iter().enumerate() {
        let name = format!("conv_block{}", i + 1);
        blocks.push(ConvBlockWeights {
            conv1: conv(&format!("{name}.conv1"), c, c_in)?,
            bn1: bn(&format!("{name}.bn1"), c)?,
            second: Some((
                conv(&format!("{name}.conv2"), c, c)?,
                bn(&format!("{name}.bn2"), c)?,
            )),
            kernel: KERNEL,
            // 2x2 max pooling after every block but the last.
            pool_size: if i + 1 == channels.len() { 1 } else { 2 },
            max_pool: true,
        });
        c_in = c;
    }
    Ok(blocks)
}

/// The one prefix in front of [`FIRST_TENSOR`].
fn tensor_prefix(state: &StateDict) -> Result<String> {
    let found: Vec<&str> = state
        .keys()
        .filter_map(|k| k.strip_suffix(FIRST_TENSOR))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "the checkpoint holds no {FIRST_TENSOR} (its first names: {}): it is not aiSFX's",
            state.keys().take(5).cloned().collect::<Vec<_>>().join(", ")
        ),
        many => bail!(
            "the checkpoint holds {} networks ({many:?} + {FIRST_TENSOR}): expected aiSFX's one",
            many.len()
        ),
    }
}

/// A head layer `name` (`fc` or `proj`) stored in PyTorch's layout `[outputs, inputs]`.
fn head_linear(
    head: &StateDict,
    name: &str,
    outputs: usize,
    inputs: usize,
) -> Result<LinearWeights> {
    let weight = head
        .get(&format!("{name}.weight"))
        .with_context(|| format!("the head has no {name}.weight"))?;
    if weight.shape != [outputs, inputs] {
        bail!(
            "the head's {name}.weight is {:?}, the run's encoder needs [{outputs}, {inputs}]",
            weight.shape
        );
    }
    let bias = head
        .get(&format!("{name}.bias"))
        .with_context(|| format!("the head has no {name}.bias"))?;
    if bias.shape != [outputs] {
        bail!(
            "the head's {name}.bias is {:?}, the run's encoder needs [{outputs}]",
            bias.shape
        );
    }
    Ok(LinearWeights::from_out_in(
        &weight.data,
        outputs,
        inputs,
        Some(bias.data.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    /// A run folder whose config.json is the committed default's with `edit` applied.
    fn run_with(edit: impl FnOnce(&mut serde_json::Value)) -> TempDir {
        let committed =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/run/config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(committed).unwrap()).unwrap();
        edit(&mut config);
        let dir = TempDir::new("assemble-run");
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        dir
    }

    #[test]
    fn reads_the_committed_default_run() {
        let run = run_with(|_| {});
        let config = HeadRun::read(run.path()).unwrap();
        assert_eq!(config.head_file(), "head.safetensors");
        assert_eq!(config.backbone_sha256().len(), 64);
        assert_eq!(config.model.encoder.channels, [64, 128, 256, 512]);
    }

    #[test]
    fn refuses_runs_it_cannot_build_and_names_the_trainer() {
        for (key, value) in [("architecture", "cnn10"), ("pooling", "mean-max")] {
            let run = run_with(|c| c["model"]["encoder"][key]["kind"] = value.into());
            let e = format!("{:#}", HeadRun::read(run.path()).unwrap_err());
            assert!(
                e.contains(value) && e.contains("audiotext-train export"),
                "{e}"
            );
        }
        let run = run_with(|c| c["model"]["encoder"]["tapped_blocks"] = 2.into());
        let e = format!("{:#}", HeadRun::read(run.path()).unwrap_err());
        assert!(e.contains("2 tapped block"), "{e}");
        let missing = TempDir::new("assemble-empty");
        let e = format!("{:#}", HeadRun::read(missing.path()).unwrap_err());
        assert!(
            e.contains("cannot read") && e.contains("config.json"),
            "{e}"
        );
    }

    #[test]
    fn refuses_a_checkpoint_other_than_the_one_the_head_was_trained_on() {
        let run = run_with(|_| {});
        let other = run.path().join("other.pth");
        std::fs::write(&other, b"not aiSFX").unwrap();
        let e = format!("{:#}", assemble_audio_onnx(run.path(), &other).unwrap_err());
        assert!(
            e.contains("was trained on the aiSFX checkpoint with sha256")
                && e.contains("aisfx 0.1.2"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            assemble_audio_onnx(run.path(), &run.path().join("gone.pth")).unwrap_err()
        );
        assert!(e.contains("cannot read the aiSFX checkpoint"), "{e}");
    }

    #[test]
    fn finds_the_one_prefix_and_names_what_is_wrong() {
        let t = |shape: Vec<usize>| crate::checkpoint::Tensor {
            data: vec![0.0; shape.iter().product()],
            shape,
        };
        let mut state = StateDict::new();
        state.insert("net.conv_block1.conv1.weight".into(), t(vec![64, 1, 3, 3]));
        assert_eq!(tensor_prefix(&state).unwrap(), "net.");
        state.insert(
            "other.conv_block1.conv1.weight".into(),
            t(vec![64, 1, 3, 3]),
        );
        assert!(format!("{:#}", tensor_prefix(&state).unwrap_err()).contains("2 networks"));
        let e = format!("{:#}", tensor_prefix(&StateDict::new()).unwrap_err());
        assert!(e.contains("not aiSFX's"), "{e}");
        // A wrong shape names the tensor and both shapes.
        let mut state = StateDict::new();
        state.insert("conv_block1.conv1.weight".into(), t(vec![32, 1, 3, 3]));
        let e = format!(
            "{:#}",
            aisfx_blocks(&state, &[64, 128, 256, 512], 1e-5).unwrap_err()
        );
        assert!(
            e.contains("conv_block1.conv1.weight is [32, 1, 3, 3], aiSFX's is [64, 1, 3, 3]"),
            "{e}"
        );
    }
}
