//! The audio encoders the trainer can build, chosen by configuration (`fit --encoder`).
//!
//! Every encoder is `bn0` (BatchNorm over mel bands), a backbone that turns log-mel
//! `[batch, 1, frames, mels]` into a frame sequence `[batch, channels, frames']`, a pooling
//! head ([`pooling`]) that makes one vector per clip, and the projection head in
//! [`crate::model`]. Each layer has its burn forward pass and, beside it, the same
//! computation as ONNX nodes (`to_onnx`), so `export` can write any combination and check it
//! against the trainer.
//!
//! | `--encoder` | backbone | output frames |
//! |---|---|---|
//! | `cnn6`, `cnn10`, `cnn14` | PANNs CNNs ([`cnn`]) | `t / 16` (CNN14: `t / 32`) |
//! | `resnet38` | PANNs ResNet38 ([`resnet`]) | `t / 32` |
//! | `crnn` | conv front + bidirectional GRU ([`crnn`]) | `t / 8` |
//! | `tcn` | dilated residual `Conv1d` stack ([`tcn`]) | `t` |
//! | `spec2vec` | whole fixed-size spectrogram ([`spec2vec`]) | 1 |
//! | `wavegram-logmel` | waveform conv front end + log-mel, CNN14 ([`wavegram`]) | `t / 32` |
//! | `aisfx` | aiSFX's pretrained sound-effects CNN ([`cnn`]), no `bn0` | `t / 8` |

pub mod blocks;
pub mod cnn;
pub mod crnn;
pub mod pooling;
pub mod resnet;
pub mod rnn;
pub mod spec2vec;
pub mod tcn;
#[cfg(test)]
mod tests;
pub mod wavegram;

use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use audiotext_onnx::GraphBuilder;

use cnn::{Cnn, CnnVariant};
use crnn::Crnn;
use resnet::ResNet;
use spec2vec::Spec2Vec;
use tcn::Tcn;
use wavegram::Wavegram;

/// Which backbone, with the settings that are not widths (widths are `EncoderConfig::channels`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Architecture {
    Cnn6,
    #[default]
    Cnn10,
    Cnn14,
    Resnet38,
    Crnn {
        gru_hidden: usize,
    },
    Tcn {
        kernel: usize,
        dilations: Vec<usize>,
        causal: bool,
    },
    Spec2vec {
        /// Fixed input length; inputs are padded with `silence` or cropped to it.
        frames: usize,
        silence: f32,
    },
    /// PANNs' Wavegram-Logmel-CNN14: also reads the waveform (`hop_length` 320).
    WavegramLogmel,
    /// aiSFX's sound-effects CNN (Ma and Lerch 2022): CNN10's blocks with max pooling, none
    /// after the last, and no `bn0` (its front-end scales the log-mel itself).
    Aisfx,
}

/// Names accepted by `--encoder`.
pub const ENCODER_NAMES: &[&str] = &[
    "cnn6",
    "cnn10",
    "cnn14",
    "resnet38",
    "crnn",
    "tcn",
    "spec2vec",
    "wavegram-logmel",
    "aisfx",
];

impl Architecture {
    /// From an `--encoder` name. `frames` and `silence` are Spec2Vec's fixed input length and
    /// padding value; `hidden` is the CRNN's GRU size.
    pub fn parse(
        name: &str,
        hidden: usize,
        frames: usize,
        silence: f32,
    ) -> Result<Architecture, String> {
        Ok(match name {
            "cnn6" => Architecture::Cnn6,
            "cnn10" => Architecture::Cnn10,
            "cnn14" => Architecture::Cnn14,
            "resnet38" => Architecture::Resnet38,
            "crnn" => Architecture::Crnn { gru_hidden: hidden },
            "tcn" => Architecture::Tcn {
                kernel: 3,
                dilations: vec![1, 2, 4, 8],
                causal: false,
            },
            "spec2vec" => Architecture::Spec2vec { frames, silence },
            "wavegram-logmel" => Architecture::WavegramLogmel,
            "aisfx" => Architecture::Aisfx,
            other => {
                return Err(format!(
                    "unknown encoder {other:?}; choose one of {}",
                    ENCODER_NAMES.join(", ")
                ))
            }
        })
    }

    /// The `--encoder` name.
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Cnn6 => "cnn6",
            Architecture::Cnn10 => "cnn10",
            Architecture::Cnn14 => "cnn14",
            Architecture::Resnet38 => "resnet38",
            Architecture::Crnn { .. } => "crnn",
            Architecture::Tcn { .. } => "tcn",
            Architecture::Spec2vec { .. } => "spec2vec",
            Architecture::WavegramLogmel => "wavegram-logmel",
            Architecture::Aisfx => "aisfx",
        }
    }

    /// Widths for base width `w` (`w = 64` gives the published PANNs sizes).
    pub fn channels(&self, w: usize) -> Vec<usize> {
        match self {
            Architecture::Cnn6 => CnnVariant::Cnn6.channels(w),
            Architecture::Cnn10 | Architecture::Aisfx => CnnVariant::Cnn10.channels(w),
            Architecture::Cnn14 | Architecture::WavegramLogmel => CnnVariant::Cnn14.channels(w),
            Architecture::Resnet38 => vec![w, 2 * w, 4 * w, 8 * w, 32 * w],
            Architecture::Crnn { .. } => vec![w, 2 * w, 4 * w],
            Architecture::Tcn { dilations, .. } => vec![4 * w; dilations.len()],
            Architecture::Spec2vec { .. } => vec![w, 2 * w, 4 * w, 8 * w],
        }
    }

    /// Channels of the backbone's output frames.
    pub fn output_channels(&self, channels: &[usize]) -> usize {
        match self {
            Architecture::Crnn { gru_hidden } => 2 * gru_hidden,
            _ => *channels.last().expect("at least one width"),
        }
    }

    /// Fewest input frames (each 2x2 pooling halves time, flooring); shorter inputs are padded
    /// with silence.
    pub fn min_frames(&self, channels: &[usize]) -> usize {
        match self {
            Architecture::Cnn6 | Architecture::Cnn10 => 1 << channels.len(),
            Architecture::Cnn14 | Architecture::WavegramLogmel | Architecture::Aisfx => {
                1 << (channels.len() - 1)
            }
            Architecture::Resnet38 => 32,
            Architecture::Crnn { .. } => 1 << channels.len(),
            Architecture::Tcn { .. } | Architecture::Spec2vec { .. } => 1,
        }
    }

    /// Whether the encoder starts with `bn0`, a BatchNorm over mel bands (all but aiSFX, whose
    /// pretrained blocks expect the front-end's own scaling).
    pub fn has_bn0(&self) -> bool {
        !matches!(self, Architecture::Aisfx)
    }

    /// Whether the encoder also reads the waveform (the manifest's `input.waveform`).
    pub fn needs_waveform(&self) -> bool {
        matches!(self, Architecture::WavegramLogmel)
    }

    /// The fixed input length, for encoders that take one.
    pub fn fixed_frames(&self) -> Option<(usize, f32)> {
        match self {
            Architecture::Spec2vec { frames, silence } => Some((*frames, *silence)),
            _ => None,
        }
    }

    /// One line for the manifest.
    pub fn describe(&self, channels: &[usize]) -> String {
        let ch = channels
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            Architecture::Cnn6 => format!("CNN6-style (PANNs): 4 blocks of one 5x5 conv, channels {ch}"),
            Architecture::Cnn10 => format!("CNN10-style (PANNs): 4 blocks of two 3x3 convs, channels {ch}"),
            Architecture::Cnn14 => format!("CNN14-style (PANNs): 6 blocks of two 3x3 convs, channels {ch}"),
            Architecture::Resnet38 => format!("ResNet38-style (PANNs): stem, [3, 4, 6, 3] basic blocks, final conv block; channels {ch}"),
            Architecture::Crnn { gru_hidden } => format!("CRNN: conv blocks {ch}, bidirectional GRU of {gru_hidden} per direction"),
            Architecture::Tcn { kernel, dilations, causal } => format!("TCN: {} residual blocks (kernel {kernel}, dilations {dilations:?}, {}), channels {ch}", dilations.len(), if *causal { "causal" } else { "non-causal" }),
            Architecture::Spec2vec { frames, .. } => format!("Spec2Vec-style: fixed {frames} frames, strided convs {ch}, flatten + Linear"),
            Architecture::Aisfx => audiotext_assemble::aisfx::aisfx_description(channels),
            Architecture::WavegramLogmel => format!("Wavegram-Logmel-CNN14-style (PANNs): 1-D conv front end on the waveform (stride 5, three dilated blocks pooled by 4) joined with the log-mel after CNN14's first block; channels {ch}"),
        }
    }

    /// `in_channels`: 1, or one per window length of a multiscale front end.
    pub fn init(
        &self,
        in_channels: usize,
        n_mels: usize,
        channels: &[usize],
        dropout: f64,
        eps: f64,
        device: &Device,
    ) -> Backbone {
        match self {
            Architecture::Cnn6
            | Architecture::Cnn10
            | Architecture::Cnn14
            | Architecture::Aisfx => {
                let variant = match self {
                    Architecture::Cnn6 => CnnVariant::Cnn6,
                    Architecture::Cnn10 => CnnVariant::Cnn10,
                    Architecture::Aisfx => CnnVariant::Aisfx,
                    _ => CnnVariant::Cnn14,
                };
                Backbone::Cnn(Cnn::new(
                    &variant.blocks(in_channels, channels),
                    dropout,
                    eps,
                    device,
                ))
            }
            Architecture::Resnet38 => {
                Backbone::Resnet(ResNet::new(in_channels, channels, dropout, eps, device))
            }
            Architecture::Crnn { gru_hidden } => Backbone::Crnn(Crnn::new(
                in_channels,
                channels,
                *gru_hidden,
                dropout,
                eps,
                device,
            )),
            Architecture::Tcn {
                kernel,
                dilations,
                causal,
            } => Backbone::Tcn(Tcn::new(
                in_channels * n_mels,
                channels,
                dilations,
                *kernel,
                *causal,
                dropout,
                eps,
                device,
            )),
            Architecture::Spec2vec { frames, .. } => {
                let out = *channels.last().expect("at least one width");
                Backbone::Spec2vec(Spec2Vec::new(
                    in_channels,
                    *frames,
                    n_mels,
                    channels,
                    out,
                    eps,
                    device,
                ))
            }
            Architecture::WavegramLogmel => Backbone::Wavegram(Wavegram::new(
                in_channels,
                n_mels,
                channels,
                dropout,
                eps,
                device,
            )),
        }
    }
}

/// A built backbone. One exists per model, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    Cnn(Cnn),
    Resnet(ResNet),
    Crnn(Crnn),
    Tcn(Tcn),
    Spec2vec(Spec2Vec),
    Wavegram(Wavegram),
}

impl Backbone {
    /// `[b, c_in, t, m]` (after `bn0`) -> `[b, c, t']`; `waveform` `[b, t * 320]` for the
    /// encoders that read it.
    pub fn forward(&self, x: Tensor<4>, waveform: Option<Tensor<2>>) -> Tensor<3> {
        match self {
            Backbone::Wavegram(m) => m.forward(
                x,
                waveform.expect("the trainer passes the waveform to a wavegram encoder"),
            ),
            Backbone::Cnn(m) => m.forward(x),
            Backbone::Resnet(m) => m.forward(x),
            Backbone::Crnn(m) => m.forward(x),
            Backbone::Tcn(m) => m.forward(x),
            Backbone::Spec2vec(m) => m.forward(x),
        }
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str, waveform: Option<&str>) -> String {
        match self {
            Backbone::Wavegram(m) => m.to_onnx(
                g,
                x,
                waveform.expect("the export declares a waveform input for a wavegram encoder"),
            ),
            Backbone::Cnn(m) => m.to_onnx(g, x),
            Backbone::Resnet(m) => m.to_onnx(g, x),
            Backbone::Crnn(m) => m.to_onnx(g, x),
            Backbone::Tcn(m) => m.to_onnx(g, x),
            Backbone::Spec2vec(m) => m.to_onnx(g, x),
        }
    }
}
