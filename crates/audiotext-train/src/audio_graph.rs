//! The ONNX graph of an audio encoder, written from the trainer's own modules: what
//! `export` writes as `audio.onnx`, and `export-backbone` as `backbone.onnx` (the pooled output
//! only), with the helpers their parity checks share.
//!
//! The graph (default domain, opset 17 like `text.onnx`):
//!
//! - input `log_mel`, float32 `[batch, 1, frames, n_mels]` (batch and frames dynamic); inputs
//!   shorter than the encoder's minimum (the product of its time poolings) are padded at the
//!   end with silence (the front-end's floor, -100 dB), as the trainer pads them; Spec2Vec's
//!   fixed length is reached by padding then `Slice`;
//! - `bn0` folded into a per-mel `Mul` + `Add` (broadcast over the last axis);
//! - the backbone and the pooling head, each layer written by its own `to_onnx` next to its
//!   burn forward pass (see [`crate::encoders`]): `Conv` with BatchNorm folded in,
//!   `AveragePool`, `GRU`/`LSTM`, `Softmax` + `MatMul` for NetVLAD;
//! - `MatMul` + `Add` (burn's Linear weight is `[in, out]`, which is MatMul's layout), `Relu`,
//!   `MatMul` + `Add`;
//! - `x / max(ReduceL2(x), 1e-12)`; output `embedding`, float32 `[batch, embedding_dim]`.

use audiotext_onnx::{AttributeProto, DataType, GraphBuilder, ModelInfo, ModelProto};

use crate::cache::Features;
use crate::encoders::blocks::{
    bn_affine, crop_time_onnx, linear_onnx, pad_end_onnx, pad_time_onnx,
};
use crate::encoders::wavegram::WAVEGRAM_HOP;
use crate::model::{AudioEncoder, EncoderConfig, NORM_EPS};

pub const AUDIO_OPSET: i64 = 17;
pub const INPUT_NAME: &str = "log_mel";
/// The second input of waveform encoders: `[batch, frames * hop_length]` samples.
pub const WAVEFORM_NAME: &str = "waveform";
pub const INPUT_LAYOUT: &str = "batch,1,frames,mels";
/// The input layout of a multiscale front end (one channel per window length), as the
/// front end writes its rows.
pub const MULTISCALE_INPUT_LAYOUT: &str = "batch,frames,channels,mels";

/// The manifest's input layout for an encoder of `channels` input channels.
pub fn input_layout(channels: usize) -> &'static str {
    if channels == 1 {
        INPUT_LAYOUT
    } else {
        MULTISCALE_INPUT_LAYOUT
    }
}

/// The shape of `audio.onnx`'s log-mel input (see [`input_layout`]).
pub fn input_shape(batch: usize, frames: usize, channels: usize, mels: usize) -> Vec<i64> {
    let (b, t, c, m) = (batch as i64, frames as i64, channels as i64, mels as i64);
    if channels == 1 {
        vec![b, 1, t, m]
    } else {
        vec![b, t, c, m]
    }
}
pub const OUTPUT_NAME: &str = "embedding";
/// Largest accepted |ONNX Runtime - trainer| over every embedding component.
pub const PARITY_TOLERANCE: f32 = 1e-4;

/// What an exported graph outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphOutput {
    /// The L2-normalised embedding (`audio.onnx`).
    Embedding,
    /// The pooling head's output, before the projection head (`export-backbone`).
    Pooled,
}

/// The ONNX graph of an encoder (see the module docs).
pub fn build_audio_onnx(model: &AudioEncoder, enc: &EncoderConfig, silence: f32) -> ModelProto {
    build_encoder_onnx(model, enc, silence, GraphOutput::Embedding)
}

/// The ONNX graph of an encoder up to `output`.
pub fn build_encoder_onnx(
    model: &AudioEncoder,
    enc: &EncoderConfig,
    silence: f32,
    output: GraphOutput,
) -> ModelProto {
    let mut g = GraphBuilder::new("audio_encoder", AUDIO_OPSET);
    let n_mels = enc.n_mels as i64;
    let x = if enc.input_channels == 1 {
        g.input(
            INPUT_NAME,
            DataType::Float,
            &["batch".into(), 1i64.into(), "frames".into(), n_mels.into()],
        )
    } else {
        // Rows hold every channel's bands: [b, t, c, m] -> [b, c, t, m].
        let x = g.input(
            INPUT_NAME,
            DataType::Float,
            &[
                "batch".into(),
                "frames".into(),
                (enc.input_channels as i64).into(),
                n_mels.into(),
            ],
        );
        g.node(
            "Transpose",
            &[&x],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        )
    };
    // Inputs shorter than the encoder's minimum are padded with silence at the end, as the
    // trainer pads them; encoders with a fixed input length also crop.
    let mut x = pad_time_onnx(&mut g, &x, enc.min_frames(), silence);
    if let Some((frames, fixed_silence)) = model.fixed_frames {
        x = pad_time_onnx(&mut g, &x, frames, fixed_silence);
        x = crop_time_onnx(&mut g, &x, frames);
    }
    if let Some(bn0) = &model.bn0 {
        let (s0, b0) = bn_affine(bn0);
        let s0 = g.initializer_f32("bn0.scale", &[n_mels], &s0);
        let b0 = g.initializer_f32("bn0.shift", &[n_mels], &b0);
        x = g.node("Mul", &[&x, &s0], vec![]);
        x = g.node("Add", &[&x, &b0], vec![]);
    }
    // Waveform encoders: the samples of the same frames, zero-padded like the log-mel.
    let waveform = enc.architecture.needs_waveform().then(|| {
        let w = g.input(
            WAVEFORM_NAME,
            DataType::Float,
            &["batch".into(), "samples".into()],
        );
        pad_end_onnx(&mut g, &w, 2, 1, enc.min_frames() * WAVEGRAM_HOP, 0.0)
    });
    let frames = model.backbone.to_onnx(&mut g, &x, waveform.as_deref());
    let pooled = model.pooling.to_onnx(&mut g, &frames);
    if output == GraphOutput::Pooled {
        g.node_to("Identity", &[&pooled], vec![], &[OUTPUT_NAME]);
        g.output(
            OUTPUT_NAME,
            DataType::Float,
            &["batch".into(), (enc.pooled_dim() as i64).into()],
        );
        return g.finish(model_info(enc, "pooled backbone output (not normalised)"));
    }
    let x = linear_onnx(&mut g, "fc", &pooled, &model.fc);
    let x = g.node("Relu", &[&x], vec![]);
    let x = linear_onnx(&mut g, "proj", &x, &model.proj);
    let norm = g.node(
        "ReduceL2",
        &[&x],
        vec![
            AttributeProto::ints("axes", &[1]),
            AttributeProto::int("keepdims", 1),
        ],
    );
    let eps = g.scalar_f32("norm_eps", NORM_EPS);
    let norm = g.node("Max", &[&norm, &eps], vec![]);
    g.node_to("Div", &[&x, &norm], vec![], &[OUTPUT_NAME]);
    g.output(
        OUTPUT_NAME,
        DataType::Float,
        &["batch".into(), (enc.embedding_dim as i64).into()],
    );
    g.finish(model_info(enc, "L2-normalised audio embedding"))
}

/// The metadata of an encoder graph whose output is `output`.
fn model_info(enc: &EncoderConfig, output: &str) -> ModelInfo {
    ModelInfo {
        producer_name: "audiotext-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: Some(format!(
            "log-mel [{}] -> {output}; {}; {}",
            input_layout(enc.input_channels),
            enc.architecture.describe(&enc.channels),
            enc.pooling.describe()
        )),
        metadata: vec![("layout".into(), input_layout(enc.input_channels).into())],
    }
}

/// Log-mel-like values (dB in [-100, 0]) with some structure, for checks without data.
pub fn generated_features(n_mels: usize, clips: usize, frames: usize) -> Vec<Features> {
    let mut rng = crate::split::SplitMix64::new(17);
    (0..clips)
        .map(|c| Features {
            waveform: Vec::new(),
            samples: 0,
            frames,
            n_mels,
            data: (0..frames * n_mels)
                .map(|i| {
                    let (t, m) = (i / n_mels, i % n_mels);
                    let tone = ((t as f64 * 0.05 * (c + 1) as f64).sin() * 20.0) as f32;
                    -60.0 + tone - m as f32 * 0.3 + (rng.next_f64() as f32 - 0.5) * 10.0
                })
                .collect(),
        })
        .collect()
}

/// The largest `|a[i] - b[i]|` (parity checks).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
