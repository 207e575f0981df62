//! PANNs-style CNNs (Kong et al. 2020, `pytorch/models.py` of qiuqiangkong/audioset_tagging_cnn):
//!
//! | variant | blocks | per block | channels (`w` = 64 in PANNs) | pooling |
//! |---|---|---|---|---|
//! | CNN6 | 4 | one 5x5 conv | `w, 2w, 4w, 8w` | 2x2 after each |
//! | CNN10 | 4 | two 3x3 convs | `w, 2w, 4w, 8w` | 2x2 after each |
//! | CNN14 | 6 | two 3x3 convs | `w .. 32w` | 2x2 after the first five, none after the last |
//! | aiSFX | 4 | two 3x3 convs | `w, 2w, 4w, 8w` | 2x2 max after the first three, none after the last |
//!
//! aiSFX (Ma and Lerch, ISMIR 2022; `aisfx/models/cnn2d.py`, `EmbeddingNet('max', 3, 1, 64)`)
//! is the DCASE 2018 cross-task baseline's 9-layer CNN with max pooling, trained on sound-effects
//! libraries; its embedding is the mean over mels then the max over time (`--pooling max`).
//!
//! Output: the frame sequence `[batch, channels, frames / 2^pools]`, averaged over mels. With
//! `taps` > 1 the last `taps` blocks' frames are joined on the channel axis, each earlier one
//! max-pooled over time to the last block's frame rate: aiSFX's middle blocks keep detail
//! (pitch, texture) that its last block, trained to tell sound effects apart, pools away.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::ops::MaxPoolOptions;

use audiotext_onnx::{AttributeProto, GraphBuilder};

use super::blocks::{mean_over_mels, ConvBlock, ConvBlockShape};

/// Which PANNs CNN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CnnVariant {
    Cnn6,
    Cnn10,
    Cnn14,
    Aisfx,
}

impl CnnVariant {
    /// Block shapes for the given channel list, after `in_channels` input channels (1, or one
    /// per window length of a multiscale front end).
    pub fn blocks(self, in_channels: usize, channels: &[usize]) -> Vec<ConvBlockShape> {
        let kernel = if self == CnnVariant::Cnn6 { 5 } else { 3 };
        let last = channels.len().saturating_sub(1);
        let mut c_in = in_channels;
        channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let unpooled_last = matches!(self, CnnVariant::Cnn14 | CnnVariant::Aisfx);
                let pool = if unpooled_last && i == last { 1 } else { 2 };
                let shape = ConvBlockShape {
                    c_in,
                    c_out: c,
                    kernel,
                    pool,
                    max_pool: self == CnnVariant::Aisfx,
                };
                c_in = c;
                shape
            })
            .collect()
    }

    /// Channels of width `w`.
    pub fn channels(self, w: usize) -> Vec<usize> {
        let n = if self == CnnVariant::Cnn14 { 6 } else { 4 };
        (0..n).map(|i| w << i).collect()
    }
}

/// A stack of PANNs conv blocks.
#[derive(Module, Debug)]
pub struct Cnn {
    /// PANNs' `conv_block1..N`.
    pub blocks: Vec<ConvBlock>,
    /// How many of the last blocks' outputs make the frames (1: the last block's only).
    #[module(skip)]
    pub taps: usize,
}

impl Cnn {
    pub fn new(shapes: &[ConvBlockShape], dropout: f64, eps: f64, device: &Device) -> Cnn {
        Cnn {
            blocks: shapes
                .iter()
                .map(|&s| ConvBlock::new(s, dropout, eps, device))
                .collect(),
            taps: 1,
        }
    }

    /// The time pooling between block `i`'s output and the last block's: each later block
    /// pools time by its `pool_size`.
    fn time_factor(&self, i: usize) -> usize {
        self.blocks[i + 1..].iter().map(|b| b.pool_size).product()
    }

    /// The first block whose output is tapped.
    fn first_tap(&self) -> usize {
        self.blocks.len() - self.taps.clamp(1, self.blocks.len())
    }

    /// `[b, c_in, t, m]` -> `[b, c, t', m']` (before averaging over mels).
    pub fn forward_2d(&self, mut x: Tensor<4>) -> Tensor<4> {
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }

    /// `[b, c_in, t, m]` -> `[b, c, t']`, `c` summed over the tapped blocks.
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<3> {
        if self.taps <= 1 {
            return mean_over_mels(self.forward_2d(x));
        }
        let mut tapped = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if i >= self.first_tap() {
                let frames = mean_over_mels(x.clone());
                let f = self.time_factor(i);
                tapped.push(if f > 1 {
                    burn::tensor::module::max_pool1d(
                        frames,
                        MaxPoolOptions::new([f]).with_stride([f]),
                    )
                } else {
                    frames
                });
            }
        }
        Tensor::cat(tapped, 1)
    }

    /// ONNX of [`Cnn::forward_2d`].
    pub fn to_onnx_2d(&self, g: &mut GraphBuilder, x: &str) -> String {
        let blocks: Vec<_> = self.blocks.iter().map(ConvBlock::weights).collect();
        audiotext_assemble::layers::conv_blocks_onnx(g, x, &blocks)
    }

    /// ONNX of [`Cnn::forward`].
    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str) -> String {
        if self.taps <= 1 {
            let x = self.to_onnx_2d(g, x);
            return g.reduce("ReduceMean", &x, &[3], false);
        }
        let mut x = x.to_string();
        let mut tapped = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.to_onnx(g, &format!("conv_block{}", i + 1), &x);
            if i >= self.first_tap() {
                let frames = g.reduce("ReduceMean", &x, &[3], false);
                let f = self.time_factor(i) as i64;
                tapped.push(if f > 1 {
                    g.node(
                        "MaxPool",
                        &[&frames],
                        vec![
                            AttributeProto::ints("kernel_shape", &[f]),
                            AttributeProto::ints("strides", &[f]),
                        ],
                    )
                } else {
                    frames
                });
            }
        }
        let parts: Vec<&str> = tapped.iter().map(String::as_str).collect();
        g.node("Concat", &parts, vec![AttributeProto::int("axis", 1)])
    }
}
