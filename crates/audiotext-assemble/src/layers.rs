//! ONNX layers written from plain float32 tensors: the one implementation behind the trainer's
//! exporters (which hand over their burn modules' values) and the assembler (which reads them
//! from checkpoint files), so the two write the same graph byte for byte.
//!
//! Conventions (default domain, opset 17):
//! - BatchNorm after a convolution is folded into the convolution
//!   (`w' = w * g / sqrt(v + eps)`, `b' = beta + (b - m) * g / sqrt(v + eps)`);
//! - a linear layer's weight is `[in, out]`, `MatMul`'s layout (PyTorch stores `[out, in]`:
//!   [`transpose`]);
//! - convolution weights are `[out, in, k...]`, which is `Conv`'s layout.

use audiotext_onnx::{AttributeProto, DataType, GraphBuilder, ModelInfo};

/// Opset of every audio graph (as `text.onnx`).
pub const AUDIO_OPSET: i64 = 17;
/// The log-mel input of an audio graph.
pub const INPUT_NAME: &str = "log_mel";
/// The output of an audio graph.
pub const OUTPUT_NAME: &str = "embedding";
pub const INPUT_LAYOUT: &str = "batch,1,frames,mels";
/// The input layout of a multiscale front end (one channel per window length), as the
/// front end writes its rows.
pub const MULTISCALE_INPUT_LAYOUT: &str = "batch,frames,channels,mels";
/// The floor of the L2 normalisation: `x / max(|x|, NORM_EPS)`.
pub const NORM_EPS: f32 = 1e-12;

/// The manifest's input layout for an encoder of `channels` input channels.
pub fn input_layout(channels: usize) -> &'static str {
    if channels == 1 {
        INPUT_LAYOUT
    } else {
        MULTISCALE_INPUT_LAYOUT
    }
}

/// A BatchNorm's parameters and running statistics.
#[derive(Debug, Clone)]
pub struct BatchNormWeights {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub epsilon: f64,
}

impl BatchNormWeights {
    /// `(scale, shift)` in inference mode: `y = x * scale + shift` (computed in f64).
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.gamma.len();
        let mut scale = Vec::with_capacity(n);
        let mut shift = Vec::with_capacity(n);
        for i in 0..n {
            let s = self.gamma[i] as f64 / (self.var[i] as f64 + self.epsilon).sqrt();
            scale.push(s as f32);
            shift.push((self.beta[i] as f64 - self.mean[i] as f64 * s) as f32);
        }
        (scale, shift)
    }
}

/// A convolution: weight `[out, in, k...]` (row-major) and an optional bias.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    pub weight: Vec<f32>,
    pub dims: Vec<usize>,
    pub bias: Option<Vec<f32>>,
}

/// A linear layer: weight `[inputs, outputs]` (row-major, `MatMul`'s layout) and an optional bias.
#[derive(Debug, Clone)]
pub struct LinearWeights {
    pub weight: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    pub bias: Option<Vec<f32>>,
}

impl LinearWeights {
    /// From PyTorch's layout: weight `[outputs, inputs]`.
    pub fn from_out_in(
        weight: &[f32],
        outputs: usize,
        inputs: usize,
        bias: Option<Vec<f32>>,
    ) -> Self {
        LinearWeights {
            weight: transpose(weight, outputs, inputs),
            inputs,
            outputs,
            bias,
        }
    }
}

/// `rows x cols` row-major -> `cols x rows` row-major.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

/// A `Conv` node with an optional BatchNorm folded in. `pads` is ONNX's `[begin..., end...]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_onnx(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    conv: &ConvWeights,
    bn: Option<&BatchNormWeights>,
    strides: &[i64],
    pads: &[i64],
    dilations: &[i64],
) -> String {
    let out = conv.dims[0];
    let per_out = conv.weight.len() / out;
    let (scale, shift) = match bn {
        Some(bn) => bn.affine(),
        None => (vec![1.0; out], vec![0.0; out]),
    };
    let folded: Vec<f32> = conv
        .weight
        .iter()
        .enumerate()
        .map(|(k, v)| v * scale[k / per_out])
        .collect();
    let mut b = shift;
    if let Some(bias) = &conv.bias {
        for (o, v) in bias.iter().enumerate() {
            b[o] += v * scale[o];
        }
    }
    let wd: Vec<i64> = conv.dims.iter().map(|&d| d as i64).collect();
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

/// A 2-D `Conv` with square stride and padding, dilation 1.
pub fn conv2d_onnx(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    conv: &ConvWeights,
    bn: Option<&BatchNormWeights>,
    stride: usize,
    pad: usize,
) -> String {
    let (s, p) = (stride as i64, pad as i64);
    conv_onnx(g, name, x, conv, bn, &[s, s], &[p, p, p, p], &[1, 1])
}

/// `x @ W + b`.
pub fn linear_onnx(g: &mut GraphBuilder, name: &str, x: &str, l: &LinearWeights) -> String {
    let (i, o) = (l.inputs as i64, l.outputs as i64);
    let w = g.initializer_f32(&format!("{name}.weight"), &[i, o], &l.weight);
    let y = g.node("MatMul", &[x, &w], vec![]);
    match &l.bias {
        Some(b) => {
            let b = g.initializer_f32(&format!("{name}.bias"), &[o], b);
            g.node("Add", &[&y, &b], vec![])
        }
        None => y,
    }
}

/// `AveragePool` with a 2-D kernel equal to its stride (floor, as burn's `AvgPool2d`).
pub fn avg_pool_onnx(g: &mut GraphBuilder, x: &str, kernel: [usize; 2]) -> String {
    pool_onnx(g, "AveragePool", x, kernel)
}

/// `MaxPool` with a 2-D kernel equal to its stride (floor, as PyTorch's `max_pool2d`).
pub fn max_pool_onnx(g: &mut GraphBuilder, x: &str, kernel: [usize; 2]) -> String {
    pool_onnx(g, "MaxPool", x, kernel)
}

fn pool_onnx(g: &mut GraphBuilder, op: &str, x: &str, kernel: [usize; 2]) -> String {
    let k = [kernel[0] as i64, kernel[1] as i64];
    g.node(
        op,
        &[x],
        vec![
            AttributeProto::ints("kernel_shape", &k),
            AttributeProto::ints("strides", &k),
        ],
    )
}

/// `x / max(|x|, 1e-12)` over axis `axis`.
pub fn l2_normalize_onnx(g: &mut GraphBuilder, x: &str, axis: i64) -> String {
    l2_normalize_to(g, x, axis, None)
}

/// [`l2_normalize_onnx`], its result named `output` when given.
fn l2_normalize_to(g: &mut GraphBuilder, x: &str, axis: i64, output: Option<&str>) -> String {
    let norm = g.node(
        "ReduceL2",
        &[x],
        vec![
            AttributeProto::ints("axes", &[axis]),
            AttributeProto::int("keepdims", 1),
        ],
    );
    let eps = g.scalar_f32("norm_eps", NORM_EPS);
    let norm = g.node("Max", &[&norm, &eps], vec![]);
    match output {
        Some(name) => {
            g.node_to("Div", &[x, &norm], vec![], &[name]);
            name.to_string()
        }
        None => g.node("Div", &[x, &norm], vec![]),
    }
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

/// PANNs' conv block (and aiSFX's): one 5x5 or two 3x3 conv + BatchNorm + ReLU, then 2x2
/// average or max pooling (or none).
#[derive(Debug, Clone)]
pub struct ConvBlockWeights {
    pub conv1: ConvWeights,
    pub bn1: BatchNormWeights,
    pub second: Option<(ConvWeights, BatchNormWeights)>,
    pub kernel: usize,
    pub pool_size: usize,
    pub max_pool: bool,
}

/// The ONNX of one [`ConvBlockWeights`] named `name` (`conv_block1`...).
pub fn conv_block_onnx(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    block: &ConvBlockWeights,
) -> String {
    let pad = block.kernel / 2;
    let y = conv2d_onnx(
        g,
        &format!("{name}.conv1"),
        x,
        &block.conv1,
        Some(&block.bn1),
        1,
        pad,
    );
    let mut y = g.node("Relu", &[&y], vec![]);
    if let Some((conv, bn)) = &block.second {
        let z = conv2d_onnx(g, &format!("{name}.conv2"), &y, conv, Some(bn), 1, 1);
        y = g.node("Relu", &[&z], vec![]);
    }
    if block.pool_size > 1 {
        let k = [block.pool_size, block.pool_size];
        y = if block.max_pool {
            max_pool_onnx(g, &y, k)
        } else {
            avg_pool_onnx(g, &y, k)
        };
    }
    y
}

/// The blocks in order (`conv_block1`...), `[b, c_in, t, m]` -> `[b, c, t', m']`.
pub fn conv_blocks_onnx(g: &mut GraphBuilder, x: &str, blocks: &[ConvBlockWeights]) -> String {
    let mut x = x.to_string();
    for (i, block) in blocks.iter().enumerate() {
        x = conv_block_onnx(g, &format!("conv_block{}", i + 1), &x, block);
    }
    x
}

/// The graph's log-mel input (`[batch, 1, frames, mels]`, or a multiscale front end's
/// `[batch, frames, channels, mels]` transposed to channels first).
pub fn log_mel_input_onnx(g: &mut GraphBuilder, n_mels: usize, channels: usize) -> String {
    let n_mels = n_mels as i64;
    if channels == 1 {
        return g.input(
            INPUT_NAME,
            DataType::Float,
            &["batch".into(), 1i64.into(), "frames".into(), n_mels.into()],
        );
    }
    let x = g.input(
        INPUT_NAME,
        DataType::Float,
        &[
            "batch".into(),
            "frames".into(),
            (channels as i64).into(),
            n_mels.into(),
        ],
    );
    g.node(
        "Transpose",
        &[&x],
        vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
    )
}

/// The projection head and the graph's output: `fc`, ReLU, `proj`, L2 normalisation, named
/// [`OUTPUT_NAME`] `[batch, proj.outputs]`.
pub fn embedding_head_onnx(
    g: &mut GraphBuilder,
    pooled: &str,
    fc: &LinearWeights,
    proj: &LinearWeights,
) {
    let x = linear_onnx(g, "fc", pooled, fc);
    let x = g.node("Relu", &[&x], vec![]);
    let x = linear_onnx(g, "proj", &x, proj);
    l2_normalize_to(g, &x, 1, Some(OUTPUT_NAME));
    g.output(
        OUTPUT_NAME,
        DataType::Float,
        &["batch".into(), (proj.outputs as i64).into()],
    );
}

/// The metadata of an audio encoder graph: what it maps to what, and its input layout.
pub fn encoder_model_info(
    channels: usize,
    backbone: &str,
    pooling: &str,
    output: &str,
) -> ModelInfo {
    ModelInfo {
        // The bundles' producer since the first export; the assembler writes the same bytes.
        producer_name: "audiotext-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: Some(format!(
            "log-mel [{}] -> {output}; {backbone}; {pooling}",
            input_layout(channels)
        )),
        metadata: vec![("layout".into(), input_layout(channels).into())],
    }
}
