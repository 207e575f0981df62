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
//!   burn forward pass (see [`crate::encoders`]; the layers with weights through
//!   [`audiotext_assemble::layers`], which the default bundle's assembler shares): `Conv` with BatchNorm folded in,
//!   `AveragePool`, `GRU`/`LSTM`, `Softmax` + `MatMul` for NetVLAD;
//! - `MatMul` + `Add` (burn's Linear weight is `[in, out]`, which is MatMul's layout), `Relu`,
//!   `MatMul` + `Add`;
//! - `x / max(ReduceL2(x), 1e-12)`; output `embedding`, float32 `[batch, embedding_dim]`.

use audiotext_assemble::layers::{embedding_head_onnx, encoder_model_info, log_mel_input_onnx};
use audiotext_onnx::{DataType, GraphBuilder, ModelInfo, ModelProto};

use crate::cache::Features;
use crate::encoders::blocks::{
    bn_affine, crop_time_onnx, linear_weights, pad_end_onnx, pad_time_onnx,
};
use crate::encoders::wavegram::WAVEGRAM_HOP;
use crate::model::{AudioEncoder, EncoderConfig};

pub use audiotext_assemble::layers::{
    input_layout, AUDIO_OPSET, INPUT_LAYOUT, INPUT_NAME, MULTISCALE_INPUT_LAYOUT, OUTPUT_NAME,
};
/// The second input of waveform encoders: `[batch, frames * hop_length]` samples.
pub const WAVEFORM_NAME: &str = "waveform";

/// The shape of `audio.onnx`'s log-mel input (see [`input_layout`]).
pub fn input_shape(batch: usize, frames: usize, channels: usize, mels: usize) -> Vec<i64> {
    let (b, t, c, m) = (batch as i64, frames as i64, channels as i64, mels as i64);
    if channels == 1 {
        vec![b, 1, t, m]
    } else {
        vec![b, t, c, m]
    }
}
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
    let x = log_mel_input_onnx(&mut g, enc.n_mels, enc.input_channels);
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
    embedding_head_onnx(
        &mut g,
        &pooled,
        &linear_weights(&model.fc),
        &linear_weights(&model.proj),
    );
    g.finish(model_info(enc, "L2-normalised audio embedding"))
}

/// The metadata of an encoder graph whose output is `output`.
fn model_info(enc: &EncoderConfig, output: &str) -> ModelInfo {
    encoder_model_info(
        enc.input_channels,
        &enc.architecture.describe(&enc.channels),
        &enc.pooling.describe(),
        output,
    )
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
