//! The audio encoder and the contrastive model around it.
//!
//! The encoder, for an input `[batch, 1, frames, mels]` of log-mel:
//!
//! 1. `bn0`: BatchNorm over the mel bands (each band normalised with its own statistics, as
//!    PANNs' `bn0` on the transposed input): log-mel in dB has a large offset and scale.
//! 2. A backbone ([`crate::encoders`]: PANNs CNN6/10/14, ResNet38, CRNN, TCN, Spec2Vec) that
//!    makes a frame sequence `[batch, channels, frames']`.
//! 3. A pooling head ([`crate::encoders::pooling`]): mean, max, mean + max, LSTM, NetVLAD or
//!    NetRVLAD, one vector per clip.
//! 4. Dropout, `fc` + ReLU, `proj` Linear to the text embedding size, L2 normalisation
//!    (`x / max(|x|, 1e-12)`).
//!
//! The text side is a frozen sentence embedding (computed once, already L2-normalised) with an
//! optional trainable linear head initialised to the identity, then L2 normalisation. The
//! similarity scale `1/temperature` is learnable (stored as its log, CLIP-style) or fixed.

use burn::module::{ModuleVisitor, Param};
use burn::nn::{BatchNorm, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

pub use crate::tensors::{to_vec, NORM_EPS};

use crate::encoders::blocks::batch_norm;
use crate::encoders::cnn::Cnn;
use crate::encoders::pooling::{Pooling, PoolingKind};
use crate::encoders::spec2vec::fit_frames;
use crate::encoders::{Architecture, Backbone};

/// Upper bound of the learnable similarity scale (CLIP clamps `logit_scale` at 100).
pub const MAX_SCALE: f32 = 100.0;

/// Shape of the encoder; stored in the run folder and in the bundle manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Mel bands of the input (the front-end's `n_mels`).
    pub n_mels: usize,
    /// Input channels: 1, or one per window length of a multiscale front end
    /// (`FrontEnd::channels`).
    #[serde(default = "one")]
    pub input_channels: usize,
    /// Widths of the backbone's stages (see [`Architecture::channels`]).
    pub channels: Vec<usize>,
    /// Width of the hidden fully connected layer.
    pub fc_dim: usize,
    /// Output size: the text embedding size.
    pub embedding_dim: usize,
    /// Dropout after each conv block (training only).
    pub block_dropout: f64,
    /// Dropout before the fully connected layer (training only).
    pub head_dropout: f64,
    /// BatchNorm epsilon of every BatchNorm layer.
    pub bn_epsilon: f64,
    /// The backbone (runs written before there was a choice used CNN10).
    #[serde(default)]
    pub architecture: Architecture,
    /// The pooling head (formerly always PANNs' max + mean).
    #[serde(default)]
    pub pooling: PoolingKind,
    /// How many of a CNN backbone's last blocks make its frames (1: the last only; see
    /// [`crate::encoders::cnn`]). Left out of the JSON when 1, so older runs and bundles read
    /// and write as they did.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub tapped_blocks: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl EncoderConfig {
    /// An encoder of base width `width` (64 gives the published PANNs sizes); `fc` is as wide
    /// as the backbone's output.
    pub fn new(
        architecture: Architecture,
        pooling: PoolingKind,
        n_mels: usize,
        embedding_dim: usize,
        width: usize,
    ) -> EncoderConfig {
        let channels = architecture.channels(width);
        EncoderConfig {
            n_mels,
            input_channels: 1,
            fc_dim: architecture.output_channels(&channels),
            channels,
            embedding_dim,
            block_dropout: 0.2,
            head_dropout: 0.5,
            bn_epsilon: 1e-5,
            architecture,
            pooling,
            tapped_blocks: 1,
        }
    }

    /// The CNN10 shape: channels 64, 128, 256, 512, fc 512, max + mean pooling.
    #[cfg(test)]
    pub fn cnn10(n_mels: usize, embedding_dim: usize) -> EncoderConfig {
        EncoderConfig::new(
            Architecture::Cnn10,
            PoolingKind::MeanMax,
            n_mels,
            embedding_dim,
            64,
        )
    }

    /// The same architecture at base width `width`.
    #[cfg(test)]
    pub fn with_width(mut self, width: usize) -> EncoderConfig {
        self.channels = self.architecture.channels(width);
        self.fc_dim = self.architecture.output_channels(&self.channels);
        self
    }

    /// Fewest frames an input must have (shorter inputs are padded with silence).
    pub fn min_frames(&self) -> usize {
        self.architecture.min_frames(&self.channels)
    }

    /// Channels of the backbone's output frames: the last block's, or the tapped blocks'
    /// together.
    pub fn frame_dim(&self) -> usize {
        match self.tapped_blocks {
            0 | 1 => self.architecture.output_channels(&self.channels),
            n => self.channels[self.channels.len().saturating_sub(n)..]
                .iter()
                .sum(),
        }
    }

    /// Length of the pooled vector the head receives.
    pub fn pooled_dim(&self) -> usize {
        self.pooling.output_dim(self.frame_dim())
    }

    /// Number of trainable parameters (BatchNorm running statistics excluded).
    pub fn parameter_count(&self) -> usize {
        trainable_parameters(&self.init(&Device::flex()))
    }

    pub fn init(&self, device: &Device) -> AudioEncoder {
        assert!(!self.channels.is_empty(), "at least one width");
        let backbone = self.architecture.init(
            self.input_channels,
            self.n_mels,
            &self.channels,
            self.block_dropout,
            self.bn_epsilon,
            device,
        );
        let backbone = match backbone {
            Backbone::Cnn(cnn) => Backbone::Cnn(Cnn {
                taps: self.tapped_blocks,
                ..cnn
            }),
            other => {
                assert!(
                    self.tapped_blocks <= 1,
                    "tapped blocks are a CNN backbone's (checked by the commands)"
                );
                other
            }
        };
        let frame_dim = self.frame_dim();
        AudioEncoder {
            bn0: self
                .architecture
                .has_bn0()
                .then(|| batch_norm(self.n_mels, self.bn_epsilon, device)),
            backbone,
            pooling: self.pooling.init(frame_dim, device),
            dropout: DropoutConfig::new(self.head_dropout).init(),
            fc: LinearConfig::new(self.pooling.output_dim(frame_dim), self.fc_dim).init(device),
            proj: LinearConfig::new(self.fc_dim, self.embedding_dim).init(device),
            fixed_frames: self.architecture.fixed_frames(),
        }
    }
}

/// Sizes of the trainable float tensors of a module, leaving out BatchNorm's running
/// statistics (which burn keeps as parameters too, without gradients).
pub fn trainable_tensor_sizes<M: Module>(module: &M) -> Vec<usize> {
    #[derive(Default)]
    struct Sizes {
        path: Vec<String>,
        sizes: Vec<usize>,
    }
    impl ModuleVisitor for Sizes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let last = self.path.last().map(String::as_str).unwrap_or("");
            if last != "running_mean" && last != "running_var" {
                self.sizes.push(param.lazy_shape().num_elements());
            }
        }
    }
    let mut sizes = Sizes::default();
    module.visit(&mut sizes);
    sizes.sizes
}

/// Number of trainable parameters (see [`trainable_tensor_sizes`]).
pub fn trainable_parameters<M: Module>(module: &M) -> usize {
    trainable_tensor_sizes(module).iter().sum()
}

/// The audio encoder: log-mel `[batch, channels, frames, mels]` to an L2-normalised embedding.
#[derive(Module, Debug)]
pub struct AudioEncoder {
    /// Absent for backbones that take the front-end's scale as it is (aiSFX).
    pub bn0: Option<BatchNorm>,
    pub backbone: Backbone,
    pub pooling: Pooling,
    pub dropout: Dropout,
    pub fc: Linear,
    pub proj: Linear,
    /// Spec2Vec's fixed input length and padding value.
    #[module(skip)]
    pub fixed_frames: Option<(usize, f32)>,
}

impl AudioEncoder {
    /// `[batch, channels, frames, mels]` -> `[batch, embedding_dim]`, L2-normalised.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, None)
    }

    /// [`AudioEncoder::forward`] with the waveform `[batch, frames * hop]` that waveform
    /// encoders also read (ignored by the others).
    pub fn forward_with(&self, x: Tensor<4>, waveform: Option<Tensor<2>>) -> Tensor<2> {
        self.head(self.pooled(x, waveform))
    }

    /// The pooling head's output `[batch, pooled_dim]`: what the projection head receives
    /// (aiSFX's published embedding, for `--encoder aisfx --pooling max`).
    pub fn pooled(&self, x: Tensor<4>, waveform: Option<Tensor<2>>) -> Tensor<2> {
        let x = match self.fixed_frames {
            Some((frames, silence)) => fit_frames(x, frames, silence),
            None => x,
        };
        // bn0 normalises each mel band: move mels to the channel axis and back.
        let x = match &self.bn0 {
            Some(bn0) => bn0.forward(x.swap_dims(1, 3)).swap_dims(1, 3),
            None => x,
        };
        self.pooling.forward(self.backbone.forward(x, waveform))
    }

    /// The projection head on pooled vectors: dropout, `fc` + ReLU, `proj`, L2 normalisation.
    pub fn head(&self, pooled: Tensor<2>) -> Tensor<2> {
        let x = relu(self.fc.forward(self.dropout.forward(pooled)));
        l2_normalize(self.proj.forward(x))
    }
}

/// `x / max(|x|, 1e-12)` along the last axis of a `[batch, dim]` tensor.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(NORM_EPS);
    x / norm
}

/// Everything that trains: the audio encoder, the optional text head, the similarity scale.
#[derive(Module, Debug)]
pub struct Contrastive {
    pub audio: AudioEncoder,
    /// Linear map applied to the (normalised) sentence embedding, then normalised again.
    pub text_head: Option<Linear>,
    /// `ln(1/temperature)`, learnable; `None` when the temperature is fixed.
    pub log_scale: Option<Param<Tensor<1>>>,
}

/// How the contrastive model is built around the encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContrastiveConfig {
    pub encoder: EncoderConfig,
    /// Train a linear head on the text side (initialised to the identity).
    pub text_head: bool,
    /// Initial (or fixed) temperature of the softmax over similarities.
    pub temperature: f64,
    /// Whether the temperature is learned.
    pub learn_temperature: bool,
}

impl ContrastiveConfig {
    pub fn init(&self, device: &Device) -> Contrastive {
        let d = self.encoder.embedding_dim;
        let text_head = self.text_head.then(|| {
            let mut head = LinearConfig::new(d, d).init(device);
            head.weight = Param::from_tensor(Tensor::eye(d, device));
            head.bias = Some(Param::from_tensor(Tensor::zeros([d], device)));
            head
        });
        let log_scale = self.learn_temperature.then(|| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![(1.0 / self.temperature).ln() as f32], [1]),
                device,
            ))
        });
        Contrastive {
            audio: self.encoder.init(device),
            text_head,
            log_scale,
        }
    }
}

impl Contrastive {
    /// Text embeddings `[batch, dim]` through the head (if any), L2-normalised.
    pub fn text(&self, text: Tensor<2>) -> Tensor<2> {
        match &self.text_head {
            Some(head) => l2_normalize(head.forward(text)),
            None => text,
        }
    }

    /// The similarity scale `1/temperature` as a `[1]` tensor (clamped at [`MAX_SCALE`]).
    pub fn scale(&self, fixed_temperature: f64, device: &Device) -> Tensor<1> {
        match &self.log_scale {
            Some(p) => p.val().exp().clamp_max(MAX_SCALE),
            None => Tensor::from_data(
                TensorData::new(vec![(1.0 / fixed_temperature) as f32], [1]),
                device,
            ),
        }
    }

    /// The current temperature as a number (for logs).
    pub fn temperature(&self, fixed_temperature: f64) -> f64 {
        match &self.log_scale {
            Some(p) => {
                let v = to_vec(p.val())[0] as f64;
                1.0 / v.exp().min(MAX_SCALE as f64)
            }
            None => fixed_temperature,
        }
    }
}

/// The waveform `[batch, samples]` of a batch, when it has one.
pub fn waveform_tensor(values: Vec<f32>, batch: usize, device: &Device) -> Option<Tensor<2>> {
    if values.is_empty() {
        return None;
    }
    let samples = values.len() / batch;
    Some(Tensor::from_data(
        TensorData::new(values, [batch, samples]),
        device,
    ))
}

/// The encoder's `[batch, channels, frames, mels]` input from row-major values laid out as
/// the front end writes them, `[batch, frames, channels, mels]` (`row` = channels x mels
/// values per frame).
pub fn input_tensor(
    values: Vec<f32>,
    batch: usize,
    frames: usize,
    row: usize,
    channels: usize,
    device: &Device,
) -> Tensor<4> {
    let mels = row / channels;
    let x = Tensor::from_data(
        TensorData::new(values, [batch, frames, channels, mels]),
        device,
    );
    if channels == 1 {
        x.reshape([batch, 1, frames, mels])
    } else {
        x.swap_dims(1, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn tiny() -> EncoderConfig {
        EncoderConfig {
            n_mels: 16,
            embedding_dim: 8,
            ..EncoderConfig::cnn10(16, 8)
        }
        .with_width(4)
    }

    #[test]
    fn shapes_norms_and_parameter_count() {
        let _rng = crate::burn_rng_lock();
        let device = Device::flex();
        let config = tiny();
        let encoder = config.init(&device).valid();
        for frames in [16, 37, 64] {
            let x = input_tensor(
                (0..3 * frames * 16)
                    .map(|i| ((i * 7919) % 23) as f32 - 11.0)
                    .collect(),
                3,
                frames,
                16,
                1,
                &device,
            );
            let y = encoder.forward(x);
            assert_eq!(y.dims(), [3, 8]);
            for row in to_vec(y).chunks(8) {
                let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((n - 1.0).abs() < 1e-5, "norm {n}");
            }
        }
        assert_eq!(
            config.parameter_count(),
            encoder.num_params() - 2 * (16 + 4 + 4 + 8 + 8 + 16 + 16 + 32 + 32)
        );
        assert_eq!(
            EncoderConfig::cnn10(64, 384).with_width(64),
            EncoderConfig::cnn10(64, 384)
        );
    }

    #[test]
    fn text_head_starts_as_identity() {
        let _rng = crate::burn_rng_lock();
        let device = Device::flex();
        let config = ContrastiveConfig {
            encoder: tiny(),
            text_head: true,
            temperature: 0.07,
            learn_temperature: true,
        };
        let model = config.init(&device);
        let t = l2_normalize(Tensor::from_data(
            TensorData::new(
                (0..16).map(|i| i as f32 - 3.0).collect::<Vec<f32>>(),
                [2, 8],
            ),
            &device,
        ));
        let a = to_vec(t.clone());
        let b = to_vec(model.text(t));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
        assert!((model.temperature(0.5) - 0.07).abs() < 1e-6);
        assert!((to_vec(model.scale(0.5, &device))[0] - 1.0 / 0.07).abs() < 1e-3);
    }
}
