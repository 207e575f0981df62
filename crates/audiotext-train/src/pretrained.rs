//! `fit --pretrained FILE`: starting the encoder from PANNs' AudioSet weights.
//!
//! The transfer recipe of the DCASE 2023 task 6b baseline (language-based audio retrieval):
//! the audio encoder is a PANNs CNN pretrained on AudioSet tagging (Kong et al. 2020, "PANNs:
//! Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition", IEEE/ACM
//! TASLP 28; checkpoints `Cnn14_mAP=0.431.pth`, `Cnn10_mAP=0.380.pth`, `Cnn6_mAP=0.343.pth` of
//! qiuqiangkong/audioset_tagging_cnn), its classifier is dropped, and a fresh projection to the
//! text embedding space is trained on top of it. The trainer's default front-end
//! (`FrontEnd::panns_32k`: 32 kHz, 1024/320 STFT, 64 Slaney mel bands 50 to 14000 Hz, power
//! in dB) is PANNs', so the pretrained `bn0` sees the features it was trained on.
//!
//! `--encoder cnn6|cnn10|cnn14 --width 64` builds PANNs' sizes; any width imports as long as
//! every shape matches (the tests use a few channels). Names, as `models.py` writes them
//! (a `module.` prefix is removed by the reader; a single other prefix in front of
//! `conv_block1.conv1.weight`, such as a fine-tuning wrapper's `base.`, is removed here):
//!
//! | checkpoint | shape | encoder |
//! |---|---|---|
//! | `bn0.weight`, `bn0.bias` | `[mels]` | `bn0.gamma`, `bn0.beta` |
//! | `bn0.running_mean`, `bn0.running_var` | `[mels]` | `bn0.running_mean`, `bn0.running_var` |
//! | `conv_block{i}.conv1.weight` | `[out, in, k, k]` | `backbone.blocks[i-1].conv1.weight` (the same layout) |
//! | `conv_block{i}.conv2.weight` (CNN10/14) | `[out, out, 3, 3]` | `backbone.blocks[i-1].conv2.weight` |
//! | `conv_block{i}.bn1.*`, `bn2.*` | `[out]` | `backbone.blocks[i-1].bn1`, `bn2`, as `bn0` |
//! | `fc1.weight` | `[out, in]` | `fc.weight`, transposed (burn's `Linear` is `[in, out]`) |
//! | `fc1.bias` | `[out]` | `fc.bias` |
//! | `fc_audioset.*`, `spectrogram_extractor.*`, `logmel_extractor.*`, `*.num_batches_tracked` | | ignored |
//! | | | `proj`: left as initialised (the transfer trains it from scratch) |
//!
//! PANNs pools max + mean over time before `fc1` (`--pooling mean-max`); `mean` and `max` give
//! `fc` the same input size and import with a note, the other heads do not fit `fc1`.
//!
//! The import runs on the training device after `ContrastiveConfig::init`, for fresh runs only
//! (a resumed run's weights come from its checkpoint). The run config records the file and its
//! sha256 ([`PretrainedInfo`]), and a file that changed in between is refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{read_checkpoint, StateDict, Tensor as Stored};
use audiotext_core::model::manifest::sha256_file;

use crate::encoders::pooling::PoolingKind;
use crate::encoders::{Architecture, Backbone};
use crate::model::{AudioEncoder, EncoderConfig};

/// How many names an error or warning lists before it only counts the rest.
const LIST_AT_MOST: usize = 10;

/// The pretrained weights a run started from; stored in the run config and the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedInfo {
    /// The checkpoint (absolute path).
    pub path: PathBuf,
    /// Its sha256 when the run was configured.
    pub sha256: String,
    /// What it was read as, e.g. `PANNs cnn14`.
    pub source: String,
    /// Tensors imported into the encoder.
    pub imported: usize,
    /// Tensors of the file left out (classifier, front-end buffers, counters, unknown names).
    pub ignored: usize,
}

/// What an import takes from a checkpoint and what it leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Checkpoint names imported (without the prefix, if any).
    pub imported: Vec<String>,
    /// Names known to be PANNs' own: classifier, front-end buffers, BatchNorm counters.
    pub ignored: Vec<String>,
    /// Other names the encoder has no place for (warned about, not imported).
    pub unknown: Vec<String>,
    /// The prefix removed from every name (`""` for PANNs' own checkpoints).
    pub prefix: String,
}

/// Reads `path` and checks that it fits `encoder`; nothing is imported (`fit` calls this
/// before computing features, so a wrong flag fails at once).
pub fn check(path: &Path, encoder: &EncoderConfig) -> Result<PretrainedInfo> {
    let state = read_checkpoint(path)
        .with_context(|| format!("--pretrained {}: cannot read it", path.display()))?;
    // Parameters are initialised lazily: the shapes are known without allocating the weights.
    let mut model = encoder.init(&Device::flex());
    let plan = plan(&mut model, encoder, &state, path)?;
    Ok(PretrainedInfo {
        path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        sha256: sha256_file(path)?,
        source: source_name(&encoder.architecture),
        imported: plan.imported.len(),
        ignored: plan.ignored.len() + plan.unknown.len(),
    })
}

/// Imports the checkpoint of `info` into `encoder` (on `device`, the training device), after
/// checking that the file is the one the run was configured with.
pub fn import(
    encoder: AudioEncoder,
    config: &EncoderConfig,
    info: &PretrainedInfo,
    device: &Device,
) -> Result<AudioEncoder> {
    let path = &info.path;
    let sha256 =
        sha256_file(path).with_context(|| format!("the run starts from {}", path.display()))?;
    if sha256 != info.sha256 {
        bail!(
            "{} changed since the run was configured (sha256 {sha256}, the run's config.json \
             records {}); start a new run with --pretrained {}",
            path.display(),
            info.sha256,
            path.display()
        );
    }
    let state = read_checkpoint(path)?;
    let (encoder, _) = load(encoder, config, &state, path, device)?;
    Ok(encoder)
}

/// Imports `state` (read from `path`, named in messages) into `encoder`, printing a summary
/// and warning about names it has no place for.
pub fn load(
    mut encoder: AudioEncoder,
    config: &EncoderConfig,
    state: &StateDict,
    path: &Path,
    device: &Device,
) -> Result<(AudioEncoder, Plan)> {
    let plan = plan(&mut encoder, config, state, path)?;
    for (prefix, layer) in layers(&mut encoder)? {
        layer.assign(&prefix, &plan.prefix, state, device);
    }
    if !plan.unknown.is_empty() {
        eprintln!(
            "warning: {}: {} tensors that the {} encoder has no place for were not imported: {}",
            path.display(),
            plan.unknown.len(),
            config.architecture.name(),
            list(&plan.unknown)
        );
    }
    if config.architecture != Architecture::Aisfx && !matches!(config.pooling, PoolingKind::MeanMax)
    {
        eprintln!(
            "note: PANNs' fc1 was trained after max + mean pooling (--pooling mean-max); \
             with --pooling {} it starts from weights made for another input",
            config.pooling.name()
        );
    }
    println!(
        "pretrained: {} tensors imported from {} ({}{}), {} ignored; {} afresh",
        plan.imported.len(),
        path.display(),
        source_name(&config.architecture),
        if plan.prefix.is_empty() {
            String::new()
        } else {
            format!(", names under {:?}", plan.prefix)
        },
        plan.ignored.len() + plan.unknown.len(),
        if config.architecture == Architecture::Aisfx {
            "fc and proj start"
        } else {
            "proj starts"
        }
    );
    Ok((encoder, plan))
}

/// Where checkpoint tensors go: a layer of the encoder, named by its PANNs prefix.
enum Layer<'a> {
    BatchNorm(&'a mut BatchNorm),
    Conv(&'a mut Conv2d),
    Linear(&'a mut Linear),
}

/// Where the weights come from, for messages and the manifest.
fn source_name(architecture: &Architecture) -> String {
    match architecture {
        Architecture::Aisfx => "aiSFX (Ma and Lerch 2022)".into(),
        other => format!("PANNs {}", other.name()),
    }
}

/// The layers a PANNs (or aiSFX) checkpoint fills, with their names there (the table above):
/// aiSFX has no `bn0`, and its classifiers are not `fc1`, so `fc` starts afresh.
fn layers(encoder: &mut AudioEncoder) -> Result<Vec<(String, Layer<'_>)>> {
    let Backbone::Cnn(cnn) = &mut encoder.backbone else {
        bail!("PANNs CNN weights fit only the PANNs CNN encoders (--encoder cnn6, cnn10 or cnn14)")
    };
    let has_fc1 = encoder.bn0.is_some();
    let mut out = Vec::new();
    if let Some(bn0) = &mut encoder.bn0 {
        out.push(("bn0".to_string(), Layer::BatchNorm(bn0)));
    }
    for (i, block) in cnn.blocks.iter_mut().enumerate() {
        let name = format!("conv_block{}", i + 1);
        out.push((format!("{name}.conv1"), Layer::Conv(&mut block.conv1)));
        out.push((format!("{name}.bn1"), Layer::BatchNorm(&mut block.bn1)));
        if let Some(conv) = &mut block.conv2 {
            out.push((format!("{name}.conv2"), Layer::Conv(conv)));
        }
        if let Some(bn) = &mut block.bn2 {
            out.push((format!("{name}.bn2"), Layer::BatchNorm(bn)));
        }
    }
    if has_fc1 {
        out.push(("fc1".to_string(), Layer::Linear(&mut encoder.fc)));
    }
    Ok(out)
}

impl Layer<'_> {
    /// The checkpoint tensors this layer takes, with their shapes in PANNs' layout (read
    /// without initialising the parameters).
    fn expected(&self, prefix: &str) -> Vec<(String, Vec<usize>)> {
        match self {
            Layer::BatchNorm(bn) => {
                let n = bn.gamma.lazy_shape().to_vec();
                ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|s| (format!("{prefix}.{s}"), n.clone()))
                    .collect()
            }
            Layer::Conv(conv) => {
                let mut v = vec![(
                    format!("{prefix}.weight"),
                    conv.weight.lazy_shape().to_vec(),
                )];
                if let Some(b) = &conv.bias {
                    v.push((format!("{prefix}.bias"), b.lazy_shape().to_vec()));
                }
                v
            }
            Layer::Linear(l) => {
                let [i, o] = l.weight.lazy_shape().dims::<2>();
                let mut v = vec![(format!("{prefix}.weight"), vec![o, i])];
                if l.bias.is_some() {
                    v.push((format!("{prefix}.bias"), vec![o]));
                }
                v
            }
        }
    }

    /// Sets this layer's tensors from `state` (checked by [`plan`] beforehand).
    fn assign(self, prefix: &str, file_prefix: &str, state: &StateDict, device: &Device) {
        let get = |name: &str| &state[&format!("{file_prefix}{prefix}.{name}")];
        match self {
            Layer::BatchNorm(bn) => {
                bn.gamma = Param::from_tensor(tensor(get("weight"), device));
                bn.beta = Param::from_tensor(tensor(get("bias"), device));
                bn.running_mean = RunningState::new(tensor(get("running_mean"), device));
                bn.running_var = RunningState::new(tensor(get("running_var"), device));
            }
            Layer::Conv(conv) => {
                conv.weight = Param::from_tensor(tensor(get("weight"), device));
                if conv.bias.is_some() {
                    conv.bias = Some(Param::from_tensor(tensor(get("bias"), device)));
                }
            }
            Layer::Linear(l) => {
                let w = get("weight");
                let (o, i) = (w.shape[0], w.shape[1]);
                let t = audiotext_assemble::layers::transpose(&w.data, o, i);
                l.weight =
                    Param::from_tensor(Tensor::from_data(TensorData::new(t, [i, o]), device));
                if l.bias.is_some() {
                    l.bias = Some(Param::from_tensor(tensor(get("bias"), device)));
                }
            }
        }
    }
}

/// A burn tensor of a checkpoint tensor's shape and values.
fn tensor<const D: usize>(t: &Stored, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// Names of PANNs' own tensors that the encoder does not take.
fn is_panns_only(name: &str) -> bool {
    [
        "fc_audioset.",
        "spectrogram_extractor.",
        "logmel_extractor.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || name == "num_batches_tracked"
        || name.ends_with(".num_batches_tracked")
}

/// Checks every name and shape the encoder needs against `state`; errors name the file, the
/// tensors and the flags that would fit.
pub fn plan(
    encoder: &mut AudioEncoder,
    config: &EncoderConfig,
    state: &StateDict,
    path: &Path,
) -> Result<Plan> {
    let file = path.display();
    let prefix = find_prefix(state);
    let seen = Seen::of(state, &prefix);
    let flags = format!(
        "--encoder {} --width {}",
        config.architecture.name(),
        config.channels.first().copied().unwrap_or(0)
    );
    if !matches!(
        config.architecture,
        Architecture::Cnn6 | Architecture::Cnn10 | Architecture::Cnn14 | Architecture::Aisfx
    ) {
        bail!(
            "--pretrained {file}: PANNs weights fit only the PANNs CNN encoders (--encoder \
             cnn6, cnn10 or cnn14) and aiSFX's (--encoder aisfx), not --encoder {}{}",
            config.architecture.name(),
            seen.advice(config)
        );
    }
    let mut expected = Vec::new();
    for (name, layer) in layers(encoder)? {
        expected.extend(layer.expected(&name));
    }
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, shape) in &expected {
        match state.get(&format!("{prefix}{name}")) {
            None => missing.push(name.clone()),
            Some(t) if &t.shape != shape => mismatched.push(format!(
                "{name}: the file has {:?}, the encoder needs {shape:?}",
                t.shape
            )),
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() {
        let mut message = format!(
            "--pretrained {file} does not fit {flags} ({} mel bands)",
            config.n_mels
        );
        if !mismatched.is_empty() {
            message += &format!(
                "\n  {} tensors of other shapes:\n    {}",
                mismatched.len(),
                mismatched
                    .iter()
                    .take(LIST_AT_MOST)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            );
            if mismatched.len() > LIST_AT_MOST {
                message += &format!("\n    (and {} more)", mismatched.len() - LIST_AT_MOST);
            }
        }
        if !missing.is_empty() {
            message += &format!("\n  {} tensors missing: {}", missing.len(), list(&missing));
        }
        message += &seen.advice(config);
        bail!(message);
    }
    let wanted: BTreeSet<String> = expected.into_iter().map(|(n, _)| n).collect();
    let mut plan = Plan {
        imported: wanted.iter().cloned().collect(),
        ignored: Vec::new(),
        unknown: Vec::new(),
        prefix: prefix.clone(),
    };
    for key in state.keys() {
        match key.strip_prefix(prefix.as_str()) {
            Some(name) if wanted.contains(name) => {}
            Some(name) if is_panns_only(name) => plan.ignored.push(key.clone()),
            // aiSFX's CrossNet classifiers, one per training library: not part of the embedding.
            _ if config.architecture == Architecture::Aisfx && key.starts_with("fc.") => {
                plan.ignored.push(key.clone())
            }
            _ => plan.unknown.push(key.clone()),
        }
    }
    Ok(plan)
}

/// The prefix in front of PANNs' names: `""` when `conv_block1.conv1.weight` is there, else the
/// one prefix of a `*.conv_block1.conv1.weight` (a model that wraps a PANNs CNN).
fn find_prefix(state: &StateDict) -> String {
    const FIRST: &str = "conv_block1.conv1.weight";
    if state.contains_key(FIRST) {
        return String::new();
    }
    let found: Vec<&str> = state
        .keys()
        .filter_map(|k| k.strip_suffix(FIRST))
        .filter(|p| p.ends_with('.'))
        .collect();
    match found.as_slice() {
        [one] => one.to_string(),
        _ => String::new(),
    }
}

/// What a checkpoint looks like, for the advice in errors.
struct Seen {
    /// `cnn6`, `cnn10` or `cnn14` when the blocks are those of one.
    architecture: Option<&'static str>,
    /// Base width: the first block's output channels.
    width: Option<usize>,
    /// Mel bands: the size of `bn0`.
    n_mels: Option<usize>,
    /// `fc1`'s input size.
    fc_in: Option<usize>,
    /// A few of the file's names, when it holds no PANNs CNN.
    sample: Vec<String>,
}

impl Seen {
    fn of(state: &StateDict, prefix: &str) -> Seen {
        let get = |name: &str| state.get(&format!("{prefix}{name}"));
        let blocks = (1..)
            .take_while(|i| get(&format!("conv_block{i}.conv1.weight")).is_some())
            .count();
        let first = get("conv_block1.conv1.weight");
        let kernel = first.and_then(|t| t.shape.get(2).copied());
        let double = get("conv_block1.conv2.weight").is_some();
        Seen {
            architecture: match (blocks, double, kernel) {
                (6, true, Some(3)) => Some("cnn14"),
                (4, true, Some(3)) if get("bn0.weight").is_none() => Some("aisfx"),
                (4, true, Some(3)) => Some("cnn10"),
                (4, false, Some(5)) => Some("cnn6"),
                _ => None,
            },
            width: first.and_then(|t| t.shape.first().copied()),
            n_mels: get("bn0.weight").and_then(|t| t.shape.first().copied()),
            fc_in: get("fc1.weight").and_then(|t| t.shape.get(1).copied()),
            sample: state.keys().take(5).cloned().collect(),
        }
    }

    /// The flags that would fit, or what the file seems to be.
    fn advice(&self, config: &EncoderConfig) -> String {
        let Some(architecture) = self.architecture else {
            return format!(
                "\nthe file holds no PANNs Cnn6, Cnn10 or Cnn14 state dict (names like \
                 conv_block1.conv1.weight, bn0.weight, fc1.weight; its first names: {}); PANNs' \
                 checkpoints are Cnn6_mAP=0.343.pth, Cnn10_mAP=0.380.pth, Cnn14_mAP=0.431.pth, \
                 whose sizes are --width 64",
                self.sample.join(", ")
            );
        };
        let width = self.width.unwrap_or(64);
        let mut advice = format!(
            "\nthe file looks like PANNs {} at base width {width}: pass --encoder \
             {architecture} --width {width}",
            architecture.to_uppercase()
        );
        if let Some(m) = self.n_mels.filter(|&m| m != config.n_mels) {
            advice += &format!(
                "; it was trained on {m} mel bands, the front-end gives {}",
                config.n_mels
            );
        }
        let same_backbone =
            architecture == config.architecture.name() && config.channels.first() == Some(&width);
        let frame_dim = config.frame_dim();
        if same_backbone && self.fc_in == Some(frame_dim) && config.pooled_dim() != frame_dim {
            advice += &format!(
                "; fc1 takes the {frame_dim} channels of max + mean pooling, --pooling {} gives \
                 {}: pass --pooling mean-max",
                config.pooling.name(),
                config.pooled_dim()
            );
        }
        advice
    }
}

/// Up to [`LIST_AT_MOST`] names, then a count of the rest.
fn list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LIST_AT_MOST)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LIST_AT_MOST {
        s += &format!(" (and {} more)", names.len() - LIST_AT_MOST);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, OnceLock};

    use crate::cache::Features;
    use audiotext_core::audio::{FrontEnd, Windowing};

    use crate::fit::{train, ClipData, Prepared};
    use crate::model::{to_vec, ContrastiveConfig};
    use crate::run::{DeviceKind, RunConfig, TrainOptions, Which, RUN_FORMAT_VERSION};
    use crate::specaug::SpecAugment;
    use crate::trained::load_model;

    /// CNN14 pools the mel axis five times.
    const MELS: usize = 32;
    const DIM: usize = 8;
    /// The checkpoints written: architecture and base width (CNN14 is narrower: six blocks).
    const FILES: [(Architecture, usize); 3] = [
        (Architecture::Cnn6, 4),
        (Architecture::Cnn10, 4),
        (Architecture::Cnn14, 2),
    ];

    use crate::testing::{fresh_dir, make_checkpoints};

    /// The PANNs-shaped checkpoints of tests/python/helpers/make_checkpoints.py (`.pth` and its
    /// values as `.json`), plus the same tensors as `.safetensors`, written once per test run;
    /// `None` (with a message) when there is no Python.
    fn checkpoints() -> Option<&'static Path> {
        static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
        DIR.get_or_init(|| {
            let args: Vec<String> = std::iter::once(MELS.to_string())
                .chain(FILES.iter().map(|(a, w)| format!("{}:{w}", a.name())))
                .collect();
            let dir = make_checkpoints(&["--panns"], &args)?;
            for (a, w) in FILES {
                let values = expected(&dir, a.clone(), w);
                write_safetensors(&file(&dir, a, w, "safetensors"), &values);
            }
            Some(dir)
        })
        .as_deref()
    }

    fn file(dir: &Path, a: Architecture, width: usize, ext: &str) -> PathBuf {
        dir.join(format!("panns_{}_w{width}.{ext}", a.name()))
    }

    /// A tensor as the Python script wrote it: shape, values, and whether it is int64.
    #[derive(Debug, Clone)]
    struct Values {
        shape: Vec<usize>,
        data: Vec<f32>,
        long: bool,
    }

    fn expected(dir: &Path, a: Architecture, width: usize) -> BTreeMap<String, Values> {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file(dir, a, width, "json")).unwrap()).unwrap();
        json.as_object()
            .unwrap()
            .iter()
            .map(|(name, t)| {
                let numbers = |k: &str| -> Vec<f64> {
                    t[k].as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                };
                let values = Values {
                    shape: numbers("shape").iter().map(|&v| v as usize).collect(),
                    data: numbers("data").iter().map(|&v| v as f32).collect(),
                    long: t["dtype"] == "i64",
                };
                (name.clone(), values)
            })
            .collect()
    }

    /// Writes `tensors` with the safetensors crate (f32, and int64 counters as in PANNs).
    fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Values>) {
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        let bytes: Vec<(String, Vec<u8>, &Values)> = tensors
            .iter()
            .map(|(name, t)| {
                let b: Vec<u8> = if t.long {
                    t.data
                        .iter()
                        .flat_map(|&v| (v as i64).to_le_bytes())
                        .collect()
                } else {
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect()
                };
                (name.clone(), b, t)
            })
            .collect();
        let views = bytes.iter().map(|(name, b, t)| {
            let dtype = if t.long { Dtype::I64 } else { Dtype::F32 };
            (
                name.clone(),
                TensorView::new(dtype, t.shape.clone(), b).unwrap(),
            )
        });
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn config(a: Architecture, width: usize) -> EncoderConfig {
        EncoderConfig::new(a, PoolingKind::MeanMax, MELS, DIM, width)
    }

    fn blocks(encoder: &AudioEncoder) -> &[crate::encoders::blocks::ConvBlock] {
        match &encoder.backbone {
            Backbone::Cnn(cnn) => &cnn.blocks,
            _ => panic!("not a CNN"),
        }
    }

    fn assert_bn(bn: &BatchNorm, name: &str, want: &BTreeMap<String, Values>, what: &str) {
        let got = [
            ("weight", to_vec(bn.gamma.val())),
            ("bias", to_vec(bn.beta.val())),
            ("running_mean", to_vec(bn.running_mean.value())),
            ("running_var", to_vec(bn.running_var.value())),
        ];
        for (suffix, values) in got {
            let key = format!("{name}.{suffix}");
            assert_eq!(values, want[&key].data, "{what}: {key}");
        }
    }

    #[test]
    fn every_tensor_lands_in_its_place_from_both_formats() {
        let _rng = crate::burn_rng_lock();
        let Some(dir) = checkpoints() else {
            return;
        };
        let device = Device::flex();
        for (a, width) in FILES {
            let want = expected(dir, a.clone(), width);
            for ext in ["pth", "safetensors"] {
                let path = file(dir, a.clone(), width, ext);
                let what = path.display().to_string();
                let config = config(a.clone(), width);
                let encoder = config.init(&device);
                let proj = (
                    to_vec(encoder.proj.weight.val()),
                    to_vec(encoder.proj.bias.as_ref().unwrap().val()),
                );
                let state = read_checkpoint(&path).unwrap();
                let (encoder, plan) = load(encoder, &config, &state, &path, &device).unwrap();

                let n_blocks = config.channels.len();
                let double = a != Architecture::Cnn6;
                let per_block = if double { 2 + 8 } else { 1 + 4 };
                assert_eq!(plan.imported.len(), 4 + n_blocks * per_block + 2, "{what}");
                // fc_audioset (2), the STFT and mel buffers (3), one counter per BatchNorm.
                let bns = 1 + n_blocks * if double { 2 } else { 1 };
                assert_eq!(plan.ignored.len(), 2 + 3 + bns, "{what}");
                assert!(plan.unknown.is_empty() && plan.prefix.is_empty(), "{what}");
                assert_eq!(
                    plan.imported.len() + plan.ignored.len(),
                    want.len(),
                    "{what}"
                );

                assert_bn(encoder.bn0.as_ref().unwrap(), "bn0", &want, &what);
                let blocks = blocks(&encoder);
                assert_eq!(blocks.len(), n_blocks);
                for (i, block) in blocks.iter().enumerate() {
                    let name = format!("conv_block{}", i + 1);
                    let w = &want[&format!("{name}.conv1.weight")];
                    assert_eq!(block.conv1.weight.val().dims().to_vec(), w.shape, "{what}");
                    assert_eq!(to_vec(block.conv1.weight.val()), w.data, "{what}: {name}");
                    assert_bn(&block.bn1, &format!("{name}.bn1"), &want, &what);
                    assert_eq!(block.conv2.is_some(), double);
                    if let (Some(conv), Some(bn)) = (&block.conv2, &block.bn2) {
                        let w = &want[&format!("{name}.conv2.weight")];
                        assert_eq!(conv.weight.val().dims().to_vec(), w.shape);
                        assert_eq!(to_vec(conv.weight.val()), w.data, "{what}: {name}.conv2");
                        assert_bn(bn, &format!("{name}.bn2"), &want, &what);
                    }
                }
                // fc: burn's [in, out] holds PANNs' [out, in] transposed.
                let w = &want["fc1.weight"];
                let (o, i) = (w.shape[0], w.shape[1]);
                assert_eq!(encoder.fc.weight.val().dims(), [i, o]);
                let fc = to_vec(encoder.fc.weight.val());
                for r in 0..i {
                    for c in 0..o {
                        assert_eq!(fc[r * o + c], w.data[c * i + r], "{what}: fc [{r}, {c}]");
                    }
                }
                assert_eq!(
                    to_vec(encoder.fc.bias.as_ref().unwrap().val()),
                    want["fc1.bias"].data
                );
                assert_eq!(to_vec(encoder.proj.weight.val()), proj.0, "{what}: proj");
                assert_eq!(
                    to_vec(encoder.proj.bias.as_ref().unwrap().val()),
                    proj.1,
                    "{what}: proj bias"
                );
            }
        }
    }

    /// PANNs' forward pass written out with loops, from the file's values (and the encoder's
    /// own `proj`): `[frames][mels]` clips -> L2-normalised embeddings.
    fn reference(
        want: &BTreeMap<String, Values>,
        a: &Architecture,
        proj: (&[f32], &[f32]),
        clip: &[f32],
        frames: usize,
    ) -> Vec<f32> {
        let eps = 1e-5f32;
        let bn = |x: &mut [f32], name: &str, c: usize, per: usize| {
            let g = &want[&format!("{name}.weight")].data;
            let b = &want[&format!("{name}.bias")].data;
            let m = &want[&format!("{name}.running_mean")].data;
            let v = &want[&format!("{name}.running_var")].data;
            for ch in 0..c {
                let s = g[ch] / (v[ch] + eps).sqrt();
                for e in &mut x[ch * per..(ch + 1) * per] {
                    *e = (*e - m[ch]) * s + b[ch];
                }
            }
        };
        // bn0 normalises each mel band.
        let mut x = clip.to_vec();
        {
            let g = &want["bn0.weight"].data;
            let b = &want["bn0.bias"].data;
            let m = &want["bn0.running_mean"].data;
            let v = &want["bn0.running_var"].data;
            for t in 0..frames {
                for f in 0..MELS {
                    let e = &mut x[t * MELS + f];
                    *e = (*e - m[f]) / (v[f] + eps).sqrt() * g[f] + b[f];
                }
            }
        }
        let (mut c, mut h, mut w) = (1usize, frames, MELS);
        let conv = |x: &[f32], c: usize, h: usize, w: usize, weight: &Values| -> Vec<f32> {
            let (o, k) = (weight.shape[0], weight.shape[2]);
            let p = (k / 2) as isize;
            let mut y = vec![0f32; o * h * w];
            for oc in 0..o {
                for i in 0..h {
                    for j in 0..w {
                        let mut s = 0f32;
                        for ic in 0..c {
                            for di in 0..k {
                                for dj in 0..k {
                                    let (ii, jj) = (
                                        i as isize + di as isize - p,
                                        j as isize + dj as isize - p,
                                    );
                                    if ii < 0 || jj < 0 || ii >= h as isize || jj >= w as isize {
                                        continue;
                                    }
                                    s += weight.data[((oc * c + ic) * k + di) * k + dj]
                                        * x[(ic * h + ii as usize) * w + jj as usize];
                                }
                            }
                        }
                        y[(oc * h + i) * w + j] = s;
                    }
                }
            }
            y
        };
        let n_blocks = if *a == Architecture::Cnn14 { 6 } else { 4 };
        for blk in 1..=n_blocks {
            let convs: &[&str] = if *a == Architecture::Cnn6 {
                &["1"]
            } else {
                &["1", "2"]
            };
            for n in convs {
                let weight = &want[&format!("conv_block{blk}.conv{n}.weight")];
                x = conv(&x, c, h, w, weight);
                c = weight.shape[0];
                bn(&mut x, &format!("conv_block{blk}.bn{n}"), c, h * w);
                x.iter_mut().for_each(|e| *e = e.max(0.0));
            }
            // 2x2 average pooling (flooring), except after CNN14's last block.
            if !(*a == Architecture::Cnn14 && blk == 6) {
                let (h2, w2) = (h / 2, w / 2);
                let mut y = vec![0f32; c * h2 * w2];
                for ch in 0..c {
                    for i in 0..h2 {
                        for j in 0..w2 {
                            let at =
                                |di: usize, dj: usize| x[(ch * h + 2 * i + di) * w + 2 * j + dj];
                            y[(ch * h2 + i) * w2 + j] =
                                (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0;
                        }
                    }
                }
                (x, h, w) = (y, h2, w2);
            }
        }
        // Mean over mels, then max + mean over time.
        let pooled: Vec<f32> = (0..c)
            .map(|ch| {
                let t: Vec<f32> = (0..h)
                    .map(|i| (0..w).map(|j| x[(ch * h + i) * w + j]).sum::<f32>() / w as f32)
                    .collect();
                t.iter().cloned().fold(f32::MIN, f32::max) + t.iter().sum::<f32>() / h as f32
            })
            .collect();
        let fw = &want["fc1.weight"];
        let fb = &want["fc1.bias"].data;
        let hidden: Vec<f32> = (0..fw.shape[0])
            .map(|r| {
                let s: f32 = (0..c).map(|k| fw.data[r * c + k] * pooled[k]).sum();
                (s + fb[r]).max(0.0)
            })
            .collect();
        // proj is burn's [in, out].
        let (pw, pb) = proj;
        let mut out: Vec<f32> = (0..DIM)
            .map(|o| {
                pb[o]
                    + (0..hidden.len())
                        .map(|k| hidden[k] * pw[k * DIM + o])
                        .sum::<f32>()
            })
            .collect();
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        out.iter_mut().for_each(|v| *v /= norm);
        out
    }

    #[test]
    fn imported_encoder_computes_panns_forward_pass() {
        let _rng = crate::burn_rng_lock();
        let Some(dir) = checkpoints() else {
            return;
        };
        let device = Device::flex();
        for (a, width) in FILES {
            let want = expected(dir, a.clone(), width);
            let path = file(dir, a.clone(), width, "pth");
            let config = config(a.clone(), width);
            let state = read_checkpoint(&path).unwrap();
            let (encoder, _) = load(config.init(&device), &config, &state, &path, &device).unwrap();
            let encoder = encoder.valid();
            // Enough frames for every pooling, and an odd count that pooling floors.
            let frames = if a == Architecture::Cnn14 { 70 } else { 37 };
            let batch = 2;
            let values: Vec<f32> = (0..batch * frames * MELS)
                .map(|i| (i as f32 * 0.37).sin() * 2.0 + (i % 7) as f32 * 0.1)
                .collect();
            let got = to_vec(encoder.forward(crate::model::input_tensor(
                values.clone(),
                batch,
                frames,
                MELS,
                1,
                &device,
            )));
            let pw = to_vec(encoder.proj.weight.val());
            let pb = to_vec(encoder.proj.bias.as_ref().unwrap().val());
            for b in 0..batch {
                let clip = &values[b * frames * MELS..(b + 1) * frames * MELS];
                let r = reference(&want, &a, (&pw, &pb), clip, frames);
                let g = &got[b * DIM..(b + 1) * DIM];
                let diff = r
                    .iter()
                    .zip(g)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-4,
                    "{}: clip {b}: {g:?} vs reference {r:?}",
                    a.name()
                );
            }
        }
    }

    /// The error of importing `state` into `config`, as one string.
    fn error(config: &EncoderConfig, state: &StateDict, path: &Path) -> String {
        let device = Device::flex();
        match load(config.init(&device), config, state, path, &device) {
            Ok(_) => panic!("{} imported into {config:?}", path.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    fn assert_contains(message: &str, parts: &[&str]) {
        for p in parts {
            assert!(message.contains(p), "{p:?} not in:\n{message}");
        }
    }

    #[test]
    fn mismatches_and_missing_tensors_are_errors_that_say_what_fits() {
        let _rng = crate::burn_rng_lock();
        let Some(dir) = checkpoints() else {
            return;
        };
        let cnn10 = file(dir, Architecture::Cnn10, 4, "pth");
        let name = cnn10.display().to_string();
        let state = read_checkpoint(&cnn10).unwrap();

        // Another width: shapes side by side, and the width the file has.
        let e = error(&config(Architecture::Cnn10, 8), &state, &cnn10);
        assert_contains(
            &e,
            &[
                &name,
                "does not fit --encoder cnn10 --width 8",
                "conv_block1.conv1.weight: the file has [4, 1, 3, 3]",
                "needs [8, 1, 3, 3]",
                "(and ",
                "pass --encoder cnn10 --width 4",
            ],
        );
        // Another CNN: CNN6's 5x5 convs, CNN14's six blocks.
        let e = error(&config(Architecture::Cnn6, 4), &state, &cnn10);
        assert_contains(
            &e,
            &[
                "[4, 1, 3, 3]",
                "[4, 1, 5, 5]",
                "PANNs CNN10",
                "--encoder cnn10 --width 4",
            ],
        );
        let e = error(&config(Architecture::Cnn14, 4), &state, &cnn10);
        assert_contains(
            &e,
            &[
                "20 tensors missing: conv_block5.conv1.weight",
                "(and 10 more)",
                "fc1.weight: the file has [32, 32]",
                "--encoder cnn10 --width 4",
            ],
        );
        // Not a PANNs CNN encoder at all.
        let e = error(&config(Architecture::Resnet38, 4), &state, &cnn10);
        assert_contains(
            &e,
            &[
                "cnn6, cnn10 or cnn14",
                "not --encoder resnet38",
                "--encoder cnn10 --width 4",
            ],
        );
        // A pooling head that changes fc's input.
        let netvlad = EncoderConfig::new(
            Architecture::Cnn10,
            PoolingKind::Netvlad { clusters: 2 },
            MELS,
            DIM,
            4,
        );
        let e = error(&netvlad, &state, &cnn10);
        assert_contains(
            &e,
            &["fc1.weight", "needs [32, 64]", "pass --pooling mean-max"],
        );
        // Another front-end.
        let mut mels = config(Architecture::Cnn10, 4);
        mels.n_mels = 64;
        let e = error(&mels, &state, &cnn10);
        assert_contains(
            &e,
            &[
                "bn0.weight: the file has [32]",
                "trained on 32 mel bands, the front-end gives 64",
            ],
        );

        // Missing tensors, listed (ten at most), from a safetensors file.
        let mut values = expected(dir, Architecture::Cnn10, 4);
        values.remove("bn0.running_var");
        values.remove("conv_block3.bn2.bias");
        let path = dir.join("missing.safetensors");
        write_safetensors(&path, &values);
        let e = error(
            &config(Architecture::Cnn10, 4),
            &read_checkpoint(&path).unwrap(),
            &path,
        );
        assert_contains(
            &e,
            &[
                &path.display().to_string(),
                "2 tensors missing: bn0.running_var, conv_block3.bn2.bias",
            ],
        );
        assert!(!e.contains("other shapes"), "{e}");
        values.retain(|k, _| !k.starts_with("conv_block4.") && !k.starts_with("fc1."));
        write_safetensors(&path, &values);
        let e = error(
            &config(Architecture::Cnn10, 4),
            &read_checkpoint(&path).unwrap(),
            &path,
        );
        assert_contains(&e, &["14 tensors missing: bn0.running_var", "(and 4 more)"]);
        // No PANNs names at all.
        let mut other = StateDict::new();
        other.insert(
            "encoder.layer.0.weight".into(),
            Stored {
                shape: vec![2],
                data: vec![1.0, 2.0],
            },
        );
        let e = error(&config(Architecture::Cnn10, 4), &other, &path);
        assert_contains(
            &e,
            &[
                "holds no PANNs Cnn6, Cnn10 or Cnn14",
                "encoder.layer.0.weight",
                "--width 64",
            ],
        );
        // The same checks run from `fit` before anything is computed.
        let e = format!(
            "{:#}",
            check(&cnn10, &config(Architecture::Cnn10, 8)).unwrap_err()
        );
        assert_contains(&e, &["--width 4"]);
    }

    #[test]
    fn unknown_names_are_left_out_and_wrapped_models_import() {
        let _rng = crate::burn_rng_lock();
        let Some(dir) = checkpoints() else {
            return;
        };
        let device = Device::flex();
        let config = config(Architecture::Cnn10, 4);
        let want = expected(dir, Architecture::Cnn10, 4);
        // A fine-tuning wrapper (`self.base = Cnn10(...)`) with a head of its own.
        let mut state: StateDict = read_checkpoint(&file(dir, Architecture::Cnn10, 4, "pth"))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (format!("base.{k}"), v))
            .collect();
        let extra = Stored {
            shape: vec![3],
            data: vec![1.0, 2.0, 3.0],
        };
        state.insert("fc_transfer.weight".into(), extra.clone());
        state.insert("base.conv_block1.conv3.weight".into(), extra);
        let path = Path::new("wrapped.pth");
        let (encoder, plan) = load(config.init(&device), &config, &state, path, &device).unwrap();
        assert_eq!(plan.prefix, "base.");
        assert_eq!(
            plan.unknown,
            ["base.conv_block1.conv3.weight", "fc_transfer.weight"]
        );
        assert_eq!(plan.imported.len(), 4 + 4 * 10 + 2);
        assert_eq!(
            to_vec(blocks(&encoder)[3].conv2.as_ref().unwrap().weight.val()),
            want["conv_block4.conv2.weight"].data
        );
    }

    #[test]
    fn fit_starts_from_the_imported_weights_and_trains_them() {
        let _rng = crate::burn_rng_lock();
        let Some(dir) = checkpoints() else {
            return;
        };
        let path = file(dir, Architecture::Cnn10, 4, "safetensors");
        let want = expected(dir, Architecture::Cnn10, 4);
        let encoder = EncoderConfig {
            block_dropout: 0.0,
            head_dropout: 0.0,
            ..config(Architecture::Cnn10, 4)
        };
        let info = check(&path, &encoder).unwrap();
        assert_eq!((info.imported, info.ignored), (46, 14));
        assert_eq!(info.sha256, sha256_file(&path).unwrap());
        let mut config = RunConfig {
            format_version: RUN_FORMAT_VERSION,
            model: ContrastiveConfig {
                encoder,
                text_head: false,
                temperature: 0.1,
                learn_temperature: false,
            },
            train: TrainOptions {
                epochs: 1,
                batch_size: 4,
                lr: 1e-3,
                min_lr_ratio: 1.0,
                warmup_epochs: 0.0,
                weight_decay: 0.0,
                seed: 5,
                max_frames: 32,
                specaug: SpecAugment::off(),
                clip_grad_norm: 0.0,
                keep_checkpoints: 0,
                validate_every: 1,
                loss: Default::default(),
                mix: Default::default(),
            },
            front_end: FrontEnd {
                n_mels: MELS,
                ..FrontEnd::panns_32k()
            },
            windowing: Windowing::ten_seconds(),
            data: None,
            text_bundle: None,
            text_key: None,
            text_model: None,
            pretrained: Some(info.clone()),
            head: None,
        };
        let clips = (0..4)
            .map(|c| {
                let mut caption = vec![0f32; DIM];
                caption[c] = 1.0;
                ClipData {
                    name: format!("clip{c}.wav"),
                    features: Arc::new(Features {
                        waveform: Vec::new(),
                        samples: 0,
                        frames: 32,
                        n_mels: MELS,
                        data: (0..32 * MELS)
                            .map(|i| ((i * (c + 3)) as f32 * 0.21).sin() * 3.0)
                            .collect(),
                    }),
                    captions: vec![caption],
                    caption_key: c as u64,
                    class: None,
                }
            })
            .collect();
        let data = Prepared {
            clips,
            train: vec![0, 1, 2, 3],
            validation: Vec::new(),
            mixes: Vec::new(),
        };
        let run_dir = fresh_dir("fit");
        config.write(&run_dir).unwrap();
        assert_eq!(RunConfig::read(&run_dir).unwrap(), config);
        let summary = train(
            &config,
            &data,
            &run_dir,
            false,
            DeviceKind::Flex,
            Some(1),
            false,
        )
        .unwrap();
        assert_eq!(summary.step_losses.len(), 1);

        // One AdamW step moves each weight by about the learning rate: the trained weights are
        // the imported ones, moved.
        let (model, _) = load_model(&run_dir, &config, Which::Last, &Device::flex()).unwrap();
        let encoder = &model.audio;
        for (got, name) in [
            (
                to_vec(blocks(encoder)[0].conv1.weight.val()),
                "conv_block1.conv1.weight",
            ),
            (
                to_vec(blocks(encoder)[2].conv2.as_ref().unwrap().weight.val()),
                "conv_block3.conv2.weight",
            ),
            (
                to_vec(encoder.bn0.as_ref().unwrap().gamma.val()),
                "bn0.weight",
            ),
            (to_vec(encoder.fc.bias.as_ref().unwrap().val()), "fc1.bias"),
        ] {
            let file = &want[name].data;
            let moved = got.iter().zip(file).map(|(g, f)| (g - f).abs());
            let largest = moved.clone().fold(0f32, f32::max);
            assert!(
                largest <= 1.5e-3,
                "{name}: moved {largest} from the imported values"
            );
            assert!(
                moved.filter(|&d| d > 1e-4).count() > 0,
                "{name} was not trained"
            );
        }

        // A checkpoint that changed since the run was configured is refused.
        config.pretrained.as_mut().unwrap().sha256 = "0".repeat(64);
        let e = train(
            &config,
            &data,
            &fresh_dir("fit-changed"),
            false,
            DeviceKind::Flex,
            Some(1),
            false,
        )
        .unwrap_err();
        assert_contains(
            &format!("{e:#}"),
            &["changed since the run was configured", "--pretrained"],
        );
    }
}
