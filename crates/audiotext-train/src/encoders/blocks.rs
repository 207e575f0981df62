//! Layers shared by the encoders, each with its ONNX counterpart next to its burn forward pass
//! so that the two can be read side by side.
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

use audiotext_onnx::{AttributeProto, GraphBuilder};

use crate::tensors::to_vec;

/// `(scale, shift)` of a BatchNorm in inference mode: `y = x * scale + shift`.
pub fn bn_affine(bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let gamma = to_vec(bn.gamma.val());
    let beta = to_vec(bn.beta.val());
    let mean = to_vec(bn.running_mean.value());
    let var = to_vec(bn.running_var.value());
    let mut scale = Vec::with_capacity(gamma.len());
    let mut shift = Vec::with_capacity(gamma.len());
    for i in 0..gamma.len() {
        let s = gamma[i] as f64 / (var[i] as f64 + bn.epsilon).sqrt();
        scale.push(s as f32);
        shift.push((beta[i] as f64 - mean[i] as f64 * s) as f32);
    }
    (scale, shift)
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
    let w = to_vec(weight);
    let out = dims[0];
    let per_out = w.len() / out;
    let (scale, shift) = match bn {
        Some(bn) => bn_affine(bn),
        None => (vec![1.0; out], vec![0.0; out]),
    };
    let folded: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(k, v)| v * scale[k / per_out])
        .collect();
    let mut b = shift;
    if let Some(bias) = bias {
        for (o, v) in bias.into_iter().enumerate() {
            b[o] += v * scale[o];
        }
    }
    let wd: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let w = g.initializer_f32(&format!("{name}.weight"), &wd, &folded);
    let b = g.initializer_f32(&format!("{name}.bias"), &[wd[0]], &b);
    g.node(
        "Conv",
        &[x, &w, &b],
        vec![
            AttributeProto::ints("kernel_shape", &wd[2..]),
            AttributeProto::ints("pads", pads),
            AttributeProto::ints("strides", strides),
            AttributeProto::ints("dilations", dilations),
            AttributeProto::int("group", 1),
        ],
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
    let dims = conv.weight.val().dims();
    let flat: Tensor<3> = conv.weight.val().flatten(2, 3);
    let (s, p) = (stride as i64, pad as i64);
    conv_onnx(
        g,
        name,
        x,
        flat,
        &dims,
        conv.bias.as_ref().map(|b| to_vec(b.val())),
        bn,
        &[s, s],
        &[p, p, p, p],
        &[1, 1],
    )
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
    let dims = l.weight.val().dims();
    let w = g.initializer_f32(
        &format!("{name}.weight"),
        &[dims[0] as i64, dims[1] as i64],
        &to_vec(l.weight.val()),
    );
    let y = g.node("MatMul", &[x, &w], vec![]);
    match &l.bias {
        Some(b) => {
            let b = g.initializer_f32(&format!("{name}.bias"), &[dims[1] as i64], &to_vec(b.val()));
            g.node("Add", &[&y, &b], vec![])
        }
        None => y,
    }
}

/// `AveragePool` with a 2-D kernel equal to its stride (floor, as burn's `AvgPool2d`).
pub fn avg_pool_onnx(g: &mut GraphBuilder, x: &str, kernel: [usize; 2]) -> String {
    let k = [kernel[0] as i64, kernel[1] as i64];
    g.node(
        "AveragePool",
        &[x],
        vec![
            AttributeProto::ints("kernel_shape", &k),
            AttributeProto::ints("strides", &k),
        ],
    )
}

/// `MaxPool` with a 2-D kernel equal to its stride (floor, as PyTorch's `max_pool2d`).
pub fn max_pool_onnx(g: &mut GraphBuilder, x: &str, kernel: [usize; 2]) -> String {
    let k = [kernel[0] as i64, kernel[1] as i64];
    g.node(
        "MaxPool",
        &[x],
        vec![
            AttributeProto::ints("kernel_shape", &k),
            AttributeProto::ints("strides", &k),
        ],
    )
}

/// `x / max(|x|, 1e-12)` over axis `axis`.
pub fn l2_normalize_onnx(g: &mut GraphBuilder, x: &str, axis: i64) -> String {
    let norm = g.node(
        "ReduceL2",
        &[x],
        vec![
            AttributeProto::ints("axes", &[axis]),
            AttributeProto::int("keepdims", 1),
        ],
    );
    let eps = g.scalar_f32("norm_eps", crate::tensors::NORM_EPS);
    let norm = g.node("Max", &[&norm, &eps], vec![]);
    g.node("Div", &[x, &norm], vec![])
}

/// The values of a burn `Linear` weight `[in, out]` as PyTorch's `[out, in]` (row-major).
pub fn out_in(l: &Linear) -> Vec<f32> {
    let [i, o] = l.weight.val().dims();
    let w = to_vec(l.weight.val());
    let mut t = vec![0f32; w.len()];
    for r in 0..i {
        for c in 0..o {
            t[c * i + r] = w[r * o + c];
        }
    }
    t
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

    pub fn to_onnx(&self, g: &mut GraphBuilder, name: &str, x: &str) -> String {
        let pad = self.kernel / 2;
        let y = conv2d_onnx(
            g,
            &format!("{name}.conv1"),
            x,
            &self.conv1,
            Some(&self.bn1),
            1,
            pad,
        );
        let mut y = g.node("Relu", &[&y], vec![]);
        if let (Some(conv), Some(bn)) = (&self.conv2, &self.bn2) {
            let z = conv2d_onnx(g, &format!("{name}.conv2"), &y, conv, Some(bn), 1, 1);
            y = g.node("Relu", &[&z], vec![]);
        }
        if self.pool.is_some() {
            y = avg_pool_onnx(g, &y, [self.pool_size, self.pool_size]);
        }
        if self.max_pool && self.pool_size > 1 {
            y = max_pool_onnx(g, &y, [self.pool_size, self.pool_size]);
        }
        y
    }
}

/// `[b, c, t, m]` -> `[b, c, t]`: mean over the mel axis (PANNs' `torch.mean(x, dim=3)`).
pub fn mean_over_mels(x: Tensor<4>) -> Tensor<3> {
    x.mean_dim(3).squeeze_dim(3)
}

/// Pads `x` `[b, c, t, m]` at the end of the time axis with `value` up to `min_frames` frames
/// (nothing when it is long enough): `pads = [0, 0, 0, 0, 0, 0, max(min - t, 0), 0]`.
pub fn pad_time_onnx(g: &mut GraphBuilder, x: &str, min_frames: usize, value: f32) -> String {
    pad_end_onnx(g, x, 4, 2, min_frames, value)
}

/// Pads axis `axis` of a rank-`rank` tensor at its end with `value` to at least `min` entries
/// (the length is only known at run time, so the amount is computed in the graph).
pub fn pad_end_onnx(
    g: &mut GraphBuilder,
    x: &str,
    rank: usize,
    axis: usize,
    min: usize,
    value: f32,
) -> String {
    let shape = g.node("Shape", &[x], vec![]);
    let axis_index = g.const_i64("pad_axis", &[axis as i64]);
    let length = g.node(
        "Gather",
        &[&shape, &axis_index],
        vec![AttributeProto::int("axis", 0)],
    );
    let min = g.const_i64("pad_min", &[min as i64]);
    let missing = g.node("Sub", &[&min, &length], vec![]);
    let zero = g.const_i64("zero", &[0]);
    let missing = g.node("Max", &[&missing, &zero], vec![]);
    // ONNX pads: every axis's start, then every axis's end; only `axis`'s end is non-zero.
    let before = g.const_i64("pads_before", &vec![0; rank + axis]);
    let after = (axis + 1 < rank).then(|| g.const_i64("pads_after", &vec![0; rank - axis - 1]));
    let mut parts = vec![before.as_str(), missing.as_str()];
    parts.extend(after.as_deref());
    let pads = g.node("Concat", &parts, vec![AttributeProto::int("axis", 0)]);
    let value = g.scalar_f32("pad_value", value);
    g.node(
        "Pad",
        &[x, &pads, &value],
        vec![AttributeProto::string("mode", "constant")],
    )
}

/// The first `frames` frames of `x` `[b, c, t, m]` (`t >= frames`).
pub fn crop_time_onnx(g: &mut GraphBuilder, x: &str, frames: usize) -> String {
    let starts = g.const_i64("crop_starts", &[0]);
    let ends = g.const_i64("crop_ends", &[frames as i64]);
    let axes = g.const_i64("crop_axes", &[2]);
    g.node("Slice", &[x, &starts, &ends, &axes], vec![])
}
