//! Wavegram-Logmel-CNN14 (PANNs, Kong et al. 2020, `Wavegram_Logmel_Cnn14`): a learned 1-D
//! conv front end on the waveform (the "Wavegram") beside the log-mel, joined after CNN14's
//! first block.
//!
//! - Waveform `[b, T * 320]` (the manifest's `input.waveform`: `hop_length` samples per
//!   log-mel frame): `Conv1d` kernel 11 stride 5, BatchNorm, ReLU; three pre-blocks of two
//!   `Conv1d` (kernel 3; the second dilated 2), BatchNorm, ReLU and max-pooling by 4, widths
//!   `w, 2w, 2 * mels`: 320 samples become one frame, `[b, 2 * mels, T]`.
//! - Reshaped to 4 channels over `mels / 2` "wavegram bands" `[b, 4, T, mels / 2]`, a conv
//!   block (4 -> `w`) and average pooling over time by 2: `[b, w, T / 2, mels / 2]`.
//! - Log-mel `[b, c, T, mels]` through CNN14's first block: the same shape.
//! - Concatenated over channels (`2w`) and on through CNN14's blocks 2..6.

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{BatchNorm, PaddingConfig1d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use audiotext_onnx::{AttributeProto, GraphBuilder};

use super::blocks::{
    avg_pool, avg_pool_onnx, batch_norm, conv1d_onnx, conv_onnx, mean_over_mels, ConvBlock,
    ConvBlockShape,
};
use super::cnn::{Cnn, CnnVariant};
use burn::nn::pool::AvgPool2d;

/// Samples per log-mel frame the front end downsamples by: 5 * 4 * 4 * 4.
pub const WAVEGRAM_HOP: usize = 320;
/// Channels the last pre-block's output is folded into (PANNs: 128 = 4 x 32 bands).
const FOLDS: usize = 4;
const POOL: usize = 4;

/// Two 1-D convs (the second dilated by 2) with BatchNorm and ReLU, then max-pooling by 4
/// (PANNs' `ConvPreWavBlock`).
#[derive(Module, Debug)]
pub struct PreWavBlock {
    pub conv1: Conv1d,
    pub bn1: BatchNorm,
    pub conv2: Conv1d,
    pub bn2: BatchNorm,
}

impl PreWavBlock {
    fn new(c_in: usize, c_out: usize, eps: f64, device: &Device) -> PreWavBlock {
        let conv = |a, b, pad, dilation| {
            Conv1dConfig::new(a, b, 3)
                .with_dilation(dilation)
                .with_padding(PaddingConfig1d::Explicit(pad, pad))
                .with_bias(false)
                .init(device)
        };
        PreWavBlock {
            conv1: conv(c_in, c_out, 1, 1),
            bn1: batch_norm(c_out, eps, device),
            conv2: conv(c_out, c_out, 2, 2),
            bn2: batch_norm(c_out, eps, device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = relu(self.bn1.forward(self.conv1.forward(x)));
        let x = relu(self.bn2.forward(self.conv2.forward(x)));
        // Max over non-overlapping runs of POOL samples; a partial run at the end is dropped
        // (ONNX MaxPool's floor mode).
        let [b, c, l] = x.dims();
        let n = l / POOL;
        x.narrow(2, 0, n * POOL)
            .reshape([b, c, n, POOL])
            .max_dim(3)
            .reshape([b, c, n])
    }

    fn to_onnx(&self, g: &mut GraphBuilder, name: &str, x: &str) -> String {
        let y = conv1d_onnx(
            g,
            &format!("{name}.conv1"),
            x,
            &self.conv1,
            Some(&self.bn1),
            (1, 1),
            1,
        );
        let y = g.node("Relu", &[&y], vec![]);
        let y = conv1d_onnx(
            g,
            &format!("{name}.conv2"),
            &y,
            &self.conv2,
            Some(&self.bn2),
            (2, 2),
            2,
        );
        let y = g.node("Relu", &[&y], vec![]);
        g.node(
            "MaxPool",
            &[&y],
            vec![
                AttributeProto::ints("kernel_shape", &[POOL as i64]),
                AttributeProto::ints("strides", &[POOL as i64]),
            ],
        )
    }
}

#[derive(Module, Debug)]
pub struct Wavegram {
    pub pre_conv0: Conv1d,
    pub pre_bn0: BatchNorm,
    pub pre_blocks: Vec<PreWavBlock>,
    pub pre_block4: ConvBlock,
    pub pre_pool: AvgPool2d,
    /// CNN14's six blocks; the second takes the log-mel and wavegram channels together.
    pub cnn: Cnn,
    /// Wavegram bands: half the mel bands, like CNN14's first block leaves the log-mel.
    #[module(skip)]
    pub bands: usize,
}

impl Wavegram {
    /// `channels`: CNN14's six widths (`w .. 32w`); `n_mels` must be even.
    pub fn new(
        in_channels: usize,
        n_mels: usize,
        channels: &[usize],
        dropout: f64,
        eps: f64,
        device: &Device,
    ) -> Wavegram {
        let w = channels[0];
        let bands = n_mels / 2;
        let mut shapes = CnnVariant::Cnn14.blocks(in_channels, channels);
        shapes[1].c_in = 2 * w;
        Wavegram {
            pre_conv0: Conv1dConfig::new(1, w, 11)
                .with_stride(5)
                .with_padding(PaddingConfig1d::Explicit(5, 5))
                .with_bias(false)
                .init(device),
            pre_bn0: batch_norm(w, eps, device),
            pre_blocks: vec![
                PreWavBlock::new(w, w, eps, device),
                PreWavBlock::new(w, 2 * w, eps, device),
                PreWavBlock::new(2 * w, FOLDS * bands, eps, device),
            ],
            pre_block4: ConvBlock::new(
                ConvBlockShape {
                    c_in: FOLDS,
                    c_out: w,
                    kernel: 3,
                    pool: 1,
                    max_pool: false,
                },
                dropout,
                eps,
                device,
            ),
            pre_pool: avg_pool([2, 1]),
            cnn: Cnn::new(&shapes, dropout, eps, device),
            bands,
        }
    }

    /// Log-mel `[b, c, t, m]` and waveform `[b, t * 320]` -> `[b, c', t / 32]`.
    pub fn forward(&self, x: Tensor<4>, waveform: Tensor<2>) -> Tensor<3> {
        let a = relu(
            self.pre_bn0
                .forward(self.pre_conv0.forward(waveform.unsqueeze_dim(1))),
        );
        let mut a = a;
        for block in &self.pre_blocks {
            a = block.forward(a);
        }
        let [b, _, t] = a.dims();
        let a: Tensor<4> = a.reshape([b, FOLDS, self.bands, t]).swap_dims(2, 3);
        let a = self.pre_pool.forward(self.pre_block4.forward(a));
        let x = self.cnn.blocks[0].forward(x);
        let mut x = Tensor::cat(vec![x, a], 1);
        for block in &self.cnn.blocks[1..] {
            x = block.forward(x);
        }
        mean_over_mels(x)
    }

    /// ONNX of [`Wavegram::forward`]; `waveform` already padded to the log-mel's frames.
    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str, waveform: &str) -> String {
        let a = g.unsqueeze(waveform, &[1]);
        let dims = self.pre_conv0.weight.val().dims();
        let a = conv_onnx(
            g,
            "wavegram.pre_conv0",
            &a,
            self.pre_conv0.weight.val(),
            &dims,
            None,
            Some(&self.pre_bn0),
            &[5],
            &[5, 5],
            &[1],
        );
        let mut a = g.node("Relu", &[&a], vec![]);
        for (i, block) in self.pre_blocks.iter().enumerate() {
            a = block.to_onnx(g, &format!("wavegram.pre_block{}", i + 1), &a);
        }
        let shape = g.const_i64(
            "wavegram.fold_shape",
            &[0, FOLDS as i64, self.bands as i64, -1],
        );
        let a = g.node("Reshape", &[&a, &shape], vec![]);
        let a = g.node(
            "Transpose",
            &[&a],
            vec![AttributeProto::ints("perm", &[0, 1, 3, 2])],
        );
        let a = self.pre_block4.to_onnx(g, "wavegram.pre_block4", &a);
        let a = avg_pool_onnx(g, &a, [2, 1]);
        let x = self.cnn.blocks[0].to_onnx(g, "conv_block1", x);
        let mut x = g.node("Concat", &[&x, &a], vec![AttributeProto::int("axis", 1)]);
        for (i, block) in self.cnn.blocks.iter().enumerate().skip(1) {
            x = block.to_onnx(g, &format!("conv_block{}", i + 1), &x);
        }
        g.reduce("ReduceMean", &x, &[3], false)
    }
}
