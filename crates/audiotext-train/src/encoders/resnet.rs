//! ResNet38-style encoder (PANNs `ResNet38`, after He et al. 2016):
//!
//! 1. a stem conv block (two 3x3 convs, `w` channels) with 2x2 average pooling;
//! 2. four stages of basic residual blocks, `[3, 4, 6, 3]` blocks with `w, 2w, 4w, 8w`
//!    channels; the first block of stages 2-4 halves time and mels with 2x2 average pooling on
//!    both paths, and its shortcut is a 1x1 conv + BatchNorm (PANNs' `downsample`);
//! 3. a final conv block (two 3x3 convs, `32w` channels, PANNs' `conv_block_after1`) with 2x2
//!    average pooling.
//!
//! 2 + 2 * 16 + 2 convs, plus the head's two linear layers, make the 38 layers. Time is
//! downsampled 32 times. Output: `[batch, 32w, frames / 32]`, averaged over mels.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::AvgPool2d;
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::activation::relu;

use audiotext_onnx::GraphBuilder;

use super::blocks::{
    avg_pool, avg_pool_onnx, batch_norm, conv2d, conv2d_onnx, mean_over_mels, ConvBlock,
    ConvBlockShape,
};

/// Blocks per stage of ResNet38.
pub const STAGES: [usize; 4] = [3, 4, 6, 3];

/// The 1x1 conv + BatchNorm of a downsampling shortcut.
#[derive(Module, Debug)]
pub struct Shortcut {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// `relu(bn2(conv2(relu(bn1(conv1(x'))))) + shortcut(x'))`, with `x'` = `x` pooled 2x2 when
/// the block downsamples.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub shortcut: Option<Shortcut>,
    pub pool: Option<AvgPool2d>,
}

impl BasicBlock {
    fn new(c_in: usize, c_out: usize, downsample: bool, eps: f64, device: &Device) -> BasicBlock {
        let shortcut = (downsample || c_in != c_out).then(|| Shortcut {
            conv: Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_bias(false)
                .init(device),
            bn: batch_norm(c_out, eps, device),
        });
        BasicBlock {
            conv1: conv2d(c_in, c_out, 3, 1, device),
            bn1: batch_norm(c_out, eps, device),
            conv2: conv2d(c_out, c_out, 3, 1, device),
            bn2: batch_norm(c_out, eps, device),
            shortcut,
            pool: downsample.then(|| avg_pool([2, 2])),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = match &self.pool {
            Some(pool) => pool.forward(x),
            None => x,
        };
        let y = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let y = self.bn2.forward(self.conv2.forward(y));
        let s = match &self.shortcut {
            Some(s) => s.bn.forward(s.conv.forward(x)),
            None => x,
        };
        relu(y + s)
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, name: &str, x: &str) -> String {
        let x = match &self.pool {
            Some(_) => avg_pool_onnx(g, x, [2, 2]),
            None => x.to_string(),
        };
        let y = conv2d_onnx(
            g,
            &format!("{name}.conv1"),
            &x,
            &self.conv1,
            Some(&self.bn1),
            1,
            1,
        );
        let y = g.node("Relu", &[&y], vec![]);
        let y = conv2d_onnx(
            g,
            &format!("{name}.conv2"),
            &y,
            &self.conv2,
            Some(&self.bn2),
            1,
            1,
        );
        let s = match &self.shortcut {
            Some(s) => conv2d_onnx(
                g,
                &format!("{name}.shortcut"),
                &x,
                &s.conv,
                Some(&s.bn),
                1,
                0,
            ),
            None => x,
        };
        let sum = g.node("Add", &[&y, &s], vec![]);
        g.node("Relu", &[&sum], vec![])
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: ConvBlock,
    pub blocks: Vec<BasicBlock>,
    pub after: ConvBlock,
}

impl ResNet {
    /// `channels`: the four stage widths then the final block's width.
    pub fn new(
        in_channels: usize,
        channels: &[usize],
        dropout: f64,
        eps: f64,
        device: &Device,
    ) -> ResNet {
        assert_eq!(
            channels.len(),
            5,
            "ResNet38 takes 4 stage widths + 1 final width"
        );
        let stem = ConvBlock::new(
            ConvBlockShape {
                c_in: in_channels,
                c_out: channels[0],
                kernel: 3,
                pool: 2,
                max_pool: false,
            },
            dropout,
            eps,
            device,
        );
        let mut blocks = Vec::new();
        let mut c_in = channels[0];
        for (stage, &n) in STAGES.iter().enumerate() {
            let c = channels[stage];
            for i in 0..n {
                blocks.push(BasicBlock::new(c_in, c, stage > 0 && i == 0, eps, device));
                c_in = c;
            }
        }
        let after = ConvBlock::new(
            ConvBlockShape {
                c_in,
                c_out: channels[4],
                kernel: 3,
                pool: 2,
                max_pool: false,
            },
            dropout,
            eps,
            device,
        );
        ResNet {
            stem,
            blocks,
            after,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let mut x = self.stem.forward(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        mean_over_mels(self.after.forward(x))
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str) -> String {
        let mut x = self.stem.to_onnx(g, "stem", x);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.to_onnx(g, &format!("res{}", i + 1), &x);
        }
        let x = self.after.to_onnx(g, "conv_block_after1", &x);
        g.reduce("ReduceMean", &x, &[3], false)
    }
}
