//! Layers shared by the encoders, each with its ONNX counterpart next to its burn forward pass
//! so that the two can be read side by side. The ONNX is written by
//! [`audiotext_assemble::layers`] from the modules' values (the assembler writes the default
//! audio encoder with the same functions from checkpoint files).
//!
//! ONNX conventions used throughout (default domain, opset 17):
//! - BatchNorm after a convolution is folded into the convolution
//!   (`w' = w * g / sqrt(v + eps)`, `b' = beta + (b - m) * g / sqrt(v + eps)`);
//! - burn's `Linear` weight is `[in, out]`, which is `MatMul`'s layout;
//! - burn's `Conv1d`/`Conv2d` weights are `[out, in, k...]`, which is `Conv`'s layout.

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::ops::MaxPoolOptions;

use audiotext_assemble::layers::{
    self, BatchNormWeights, ConvBlockWeights, ConvWeights, LinearWeights,
};
// The layers that take no weights are the assembler's own.
pub use audiotext_assemble::layers::{
    avg_pool_onnx, crop_time_onnx, l2_normalize_onnx, max_pool_onnx, pad_end_onnx, pad_time_onnx,
};
use audiotext_onnx::GraphBuilder;

use crate::tensors::to_vec;

/// A burn BatchNorm's values, for [`audiotext_assemble::layers`].
pub fn batch_norm_weights(bn: &BatchNorm) -> BatchNormWeights {
    BatchNormWeights {
        gamma: to_vec(bn.gamma.val()),
        beta: to_vec(bn.beta.val()),
        mean: to_vec(bn.running_mean.value()),
        var: to_vec(bn.running_var.value()),
        epsilon: bn.epsilon,
    }
}

/// `(scale, shift)` of a BatchNorm in inference mode: `y = x * scale + shift`.
pub fn bn_affine(bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    batch_norm_weights(bn).affine()
}

/// A burn Linear's values (weight `[in, out]`, as MatMul takes it).
pub fn linear_weights(l: &Linear) -> LinearWeights {
    let [inputs, outputs] = l.weight.val().dims();
    LinearWeights {
        weight: to_vec(l.weight.val()),
        inputs,
        outputs,
        bias: l.bias.as_ref().map(|b| to_vec(b.val())),
    }
}

/// A burn convolution's values (weight `[out, in, k...]`, as Conv takes it).
fn conv_weights(weight: Tensor<3>, dims: &[usize], bias: Option<Vec<f32>>) -> ConvWeights {
    ConvWeights {
        weight: to_vec(weight),
        dims: dims.to_vec(),
        bias,
    }
}

/// A `Conv` node from a burn convolution weight `[out, in, k...]` (+ bias) with an optional
/// BatchNorm folded in. `pads` is ONNX's `[begin..., end...]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_onnx(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    weight: Tensor<3>,
    dims: &[usize],
    bias: Option<Vec<f32>>,
    bn: Option<&BatchNorm>,
    strides: &[i64],
    pads: &[i64],
    dilations: &[i64],
) -> String {
    let bn = bn.map(batch_norm_weights);
    layers::conv_onnx(
        g,
        name,
        x,
        &conv_weights(weight, dims, bias),
        bn.as_ref(),
        strides,
        pads,
        dilations,
    )
}

/// A burn `Conv2d`'s values.
fn conv2d_weights(conv: &Conv2d) -> ConvWeights {
    let dims = conv.weight.val().dims();
    conv_weights(
        conv.weight.val().flatten(2, 3),
        &dims,
        conv.bias.as_ref().map(|b| to_vec(b.val())),
    )
}

/// `Conv` for a burn `Conv2d` (stride and padding given; dilation 1) with BatchNorm folded in.
pub fn conv2d_onnx(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
    stride: usize,
    pad: usize,
) -> String {
    let bn = bn.map(batch_norm_weights);
    layers::conv2d_onnx(g, name, x, &conv2d_weights(conv), bn.as_ref(), stride, pad)
}

/// `Conv` for a burn `Conv1d` with explicit `(left, right)` padding and BatchNorm folded in.
pub fn conv1d_onnx(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    conv: &Conv1d,
    bn: Option<&BatchNorm>,
    pads: (usize, usize),
    dilation: usize,
) -> String {
    let dims = conv.weight.val().dims();
    conv_onnx(
        g,
        name,
        x,
        conv.weight.val(),
        &dims,
        conv.bias.as_ref().map(|b| to_vec(b.val())),
        bn,
        &[1],
        &[pads.0 as i64, pads.1 as i64],
        &[dilation as i64],
    )
}

/// `x @ W + b` for a burn `Linear` (weight `[in, out]`).
pub fn linear_onnx(g: &mut GraphBuilder, name: &str, x: &str, l: &Linear) -> String {
    layers::linear_onnx(g, name, x, &linear_weights(l))
}

/// The values of a burn `Linear` weight `[in, out]` as PyTorch's `[out, in]` (row-major).
pub fn out_in(l: &Linear) -> Vec<f32> {
    let [i, o] = l.weight.val().dims();
    layers::transpose(&to_vec(l.weight.val()), i, o)
}

/// A BatchNorm over `channels` with the encoder's epsilon.
pub fn batch_norm(channels: usize, epsilon: f64, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(epsilon)
        .init(device)
}

/// A `k x k` conv without bias (BatchNorm follows), `stride`, padding `k / 2`.
pub fn conv2d(c_in: usize, c_out: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .init(device)
}

/// `AvgPool2d` with kernel = stride = `k`.
pub fn avg_pool(k: [usize; 2]) -> AvgPool2d {
    AvgPool2dConfig::new(k).with_strides(k).init()
}

/// PANNs' conv block: one 5x5 (`ConvBlock5x5`, CNN6) or two 3x3 (`ConvBlock`, CNN10/14)
/// conv + BatchNorm + ReLU, then average pooling (2x2, or none in CNN14's last block) and
/// dropout. aiSFX's blocks (the DCASE cross-task baseline's `ConvBlock`) are the same with
/// max pooling. Field names follow PANNs (`conv1`, `bn1`, `conv2`, `bn2`) so that pretrained
/// weights map one to one.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Option<Conv2d>,
    pub bn2: Option<BatchNorm>,
    pub pool: Option<AvgPool2d>,
    pub dropout: Dropout,
    #[module(skip)]
    pub pool_size: usize,
    #[module(skip)]
    pub kernel: usize,
    /// Max pooling instead of average pooling (aiSFX).
    #[module(skip)]
    pub max_pool: bool,
}

/// Shape of a [`ConvBlock`].
#[derive(Debug, Clone, Copy)]
pub struct ConvBlockShape {
    pub c_in: usize,
    pub c_out: usize,
    /// 5 for a single 5x5 conv, 3 for two 3x3 convs.
    pub kernel: usize,
    /// 1 (no pooling) or 2.
    pub pool: usize,
    /// Max pooling instead of average pooling.
    pub max_pool: bool,
}

impl ConvBlock {
    pub fn new(shape: ConvBlockShape, dropout: f64, eps: f64, device: &Device) -> ConvBlock {
        let double = shape.kernel == 3;
        ConvBlock {
            conv1: conv2d(shape.c_in, shape.c_out, shape.kernel, 1, device),
            bn1: batch_norm(shape.c_out, eps, device),
            conv2: double.then(|| conv2d(shape.c_out, shape.c_out, 3, 1, device)),
            bn2: double.then(|| batch_norm(shape.c_out, eps, device)),
            pool: (shape.pool > 1 && !shape.max_pool).then(|| avg_pool([shape.pool, shape.pool])),
            dropout: DropoutConfig::new(dropout).init(),
            pool_size: shape.pool,
            kernel: shape.kernel,
            max_pool: shape.max_pool,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = relu(self.bn1.forward(self.conv1.forward(x)));
        if let (Some(conv), Some(bn)) = (&self.conv2, &self.bn2) {
            x = relu(bn.forward(conv.forward(x)));
        }
        if let Some(pool) = &self.pool {
            x = pool.forward(x);
        }
        if self.max_pool && self.pool_size > 1 {
            let k = [self.pool_size, self.pool_size];
            x = burn::tensor::module::max_pool2d(x, MaxPoolOptions::new(k).with_stride(k));
        }
        self.dropout.forward(x)
    }

    /// The block's values, for [`audiotext_assemble::layers::conv_block_onnx`].
    pub fn weights(&self) -> ConvBlockWeights {
        ConvBlockWeights {
            conv1: conv2d_weights(&self.conv1),
            bn1: batch_norm_weights(&self.bn1),
            second: match (&self.conv2, &self.bn2) {
                (Some(conv), Some(bn)) => Some((conv2d_weights(conv), batch_norm_weights(bn))),
                _ => None,
            },
            kernel: self.kernel,
            pool_size: self.pool_size,
            max_pool: self.max_pool,
        }
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, name: &str, x: &str) -> String {
        layers::conv_block_onnx(g, name, x, &self.weights())
    }
}

/// `[b, c, t, m]` -> `[b, c, t]`: mean over the mel axis (PANNs' `torch.mean(x, dim=3)`).
pub fn mean_over_mels(x: Tensor<4>) -> Tensor<3> {
    x.mean_dim(3).squeeze_dim(3)
}
