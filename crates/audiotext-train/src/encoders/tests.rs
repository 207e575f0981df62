//! Every encoder and every pooling head: a training step on generated data gives a finite
//! loss that decreases over a few steps on a fixed batch, the gradients reach every layer,
//! and the exported ONNX graph agrees with the trainer's forward pass in ONNX Runtime.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;

use super::pooling::PoolingKind;
use super::Architecture;
use crate::audio_graph::{build_audio_onnx, INPUT_NAME, OUTPUT_NAME, WAVEFORM_NAME};
use crate::loss::{info_nce, soft_targets};
use crate::model::{
    input_tensor, l2_normalize, to_vec, trainable_parameters, waveform_tensor, EncoderConfig,
};

const MELS: usize = 32;
const DIM: usize = 8;
const SILENCE: f32 = -100.0;
/// Largest accepted |ONNX Runtime - trainer| per embedding component.
const TOLERANCE: f32 = 1e-4;

/// A small encoder: width 4, no dropout (so the loss curve is deterministic).
fn tiny(encoder: &str, pooling: &str) -> EncoderConfig {
    let architecture = Architecture::parse(encoder, 6, 40, SILENCE).unwrap();
    let frame_dim = architecture.output_channels(&architecture.channels(4));
    let pooling = PoolingKind::parse(pooling, frame_dim, 3).unwrap();
    EncoderConfig {
        block_dropout: 0.0,
        head_dropout: 0.0,
        ..EncoderConfig::new(architecture, pooling, MELS, DIM, 4)
    }
}

/// Log-mel-like values with `row` values per frame (`MELS` per channel): a different tone
/// and level per clip, in dB.
fn features(batch: usize, frames: usize, row: usize, seed: usize) -> Vec<f32> {
    (0..batch * frames * row)
        .map(|i| {
            let (b, t, m) = (i / (frames * row), (i / row) % frames, i % row);
            let band = ((b * 7 + seed * 3) % MELS + (m / MELS) * 5) as f32;
            let m = m % MELS;
            let tone = (-(m as f32 - band).powi(2) / 8.0).exp() * 40.0;
            let wobble = ((t * (b + 2) + m * 5 + seed) % 11) as f32;
            -70.0 + tone + wobble + (t as f32 * 0.3 * (b + 1) as f32).sin() * 4.0
        })
        .collect()
}

/// Waveforms for waveform encoders (`frames * 320` samples per clip: a tone per clip and a
/// little deterministic noise), else empty.
fn waveforms(config: &EncoderConfig, batch: usize, frames: usize, seed: usize) -> Vec<f32> {
    if !config.architecture.needs_waveform() {
        return Vec::new();
    }
    let n = frames * super::wavegram::WAVEGRAM_HOP;
    (0..batch * n)
        .map(|i| {
            let (b, s) = (i / n, i % n);
            let hz = 200.0 + 300.0 * ((b + seed) % 5) as f32;
            0.5 * (s as f32 * hz / 32_000.0 * std::f32::consts::TAU).sin()
                + 0.05 * (((s * 7919 + b * 31) % 101) as f32 / 50.0 - 1.0)
        })
        .collect()
}

/// Unit text targets, one per clip.
fn targets(batch: usize, device: &Device) -> Tensor<2> {
    let values: Vec<f32> = (0..batch * DIM)
        .map(|i| (((i * 37 + 11) % 17) as f32 - 8.0) / 8.0)
        .collect();
    l2_normalize(Tensor::from_data(
        TensorData::new(values, [batch, DIM]),
        device,
    ))
}

/// Trains `config` for `steps` AdamW steps on one fixed batch; returns the losses.
fn train_steps(config: &EncoderConfig, steps: usize) -> (Vec<f32>, crate::model::AudioEncoder) {
    let device = Device::flex().autodiff();
    device.seed(7);
    let mut model = config.init(&device);
    let mut optim = AdamWConfig::new().init();
    let batch = 4;
    let frames = 64;
    let text = targets(batch, &device);
    let y = Tensor::<2>::from_data(
        TensorData::new(soft_targets(&[1, 2, 3, 4]), [batch, batch]),
        &device,
    );
    let scale = Tensor::<1>::from_data(TensorData::new(vec![10.0f32], [1]), &device);
    let mut losses = Vec::new();
    let (channels, row) = (config.input_channels, config.input_channels * MELS);
    for step in 0..steps {
        let x = input_tensor(
            features(batch, frames, row, 0),
            batch,
            frames,
            row,
            channels,
            &device,
        );
        let w = waveform_tensor(waveforms(config, batch, frames, 0), batch, &device);
        let loss = info_nce(
            model.forward_with(x, w),
            text.clone(),
            scale.clone(),
            y.clone(),
        );
        losses.push(to_vec(loss.clone())[0]);
        let params = GradientsParams::from_grads(loss.backward(), &model);
        if step == 0 {
            // Every trainable tensor gets a gradient (nothing is cut off from the loss).
            let expected = count_params(&model);
            assert_eq!(
                params.len(),
                expected,
                "{}: {} of {expected} parameter tensors received gradients",
                config.architecture.name(),
                params.len()
            );
        }
        model = optim.step(3e-3, model, params);
    }
    (losses, model.valid())
}

/// Number of trainable parameter tensors.
fn count_params<M: burn::module::Module>(module: &M) -> usize {
    crate::model::trainable_tensor_sizes(module).len()
}

/// Embeds `(batch, frames)` inputs with ONNX Runtime and with the trainer; max |diff|.
fn parity(config: &EncoderConfig, model: &crate::model::AudioEncoder, tag: &str) -> Option<f32> {
    let rt = match crate::run::ort_runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skipping the ONNX Runtime parity check: {e}");
            return None;
        }
    };
    let dir = std::env::temp_dir().join(format!("audiotext-enc-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audio.onnx");
    std::fs::write(&path, build_audio_onnx(model, config, SILENCE).to_bytes()).unwrap();
    let (mut session, _) = rt.session(&path).unwrap();
    let device = Device::flex();
    let mut worst = 0f32;
    // Full length, longer than Spec2Vec's window (cropped), and shorter than every
    // encoder's minimum (padded inside the graph, as the trainer pads it).
    let (channels, row) = (config.input_channels, config.input_channels * MELS);
    for (batch, frames, seed) in [(2, 64, 1), (3, 47, 2), (1, 90, 3), (2, 5, 4)] {
        let values = features(batch, frames, row, seed);
        let padded_frames = frames.max(config.min_frames());
        let mut padded = Vec::new();
        for clip in values.chunks(frames * row) {
            padded.extend_from_slice(clip);
            padded.resize(padded.len() + (padded_frames - frames) * row, SILENCE);
        }
        // The trainer pads the waveform with silence, like the log-mel.
        let wave = waveforms(config, batch, frames, seed);
        let mut padded_wave = Vec::new();
        let hop = super::wavegram::WAVEGRAM_HOP;
        for clip in wave.chunks((frames * hop).max(1)) {
            padded_wave.extend_from_slice(clip);
            padded_wave.resize(padded_wave.len() + (padded_frames - frames) * hop, 0.0);
        }
        let expected = to_vec(model.forward_with(
            input_tensor(padded, batch, padded_frames, row, channels, &device),
            waveform_tensor(padded_wave, batch, &device),
        ));
        let shape = crate::audio_graph::input_shape(batch, frames, channels, MELS);
        let input = ort::value::Tensor::from_array((shape, values)).unwrap();
        let outputs = if wave.is_empty() {
            session.run(ort::inputs![INPUT_NAME => input]).unwrap()
        } else {
            let w = ort::value::Tensor::from_array(([batch as i64, (frames * hop) as i64], wave))
                .unwrap();
            session
                .run(ort::inputs![INPUT_NAME => input, WAVEFORM_NAME => w])
                .unwrap()
        };
        let (shape, got) = outputs
            .get(OUTPUT_NAME)
            .unwrap()
            .try_extract_tensor::<f32>()
            .unwrap();
        assert_eq!(shape.to_vec(), vec![batch as i64, DIM as i64], "{tag}");
        for (a, b) in expected.iter().zip(got) {
            assert!(b.is_finite(), "{tag}: ONNX Runtime gave {b}");
            worst = worst.max((a - b).abs());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Some(worst)
}

/// Trains a few steps, checks the loss falls, exports and compares.
fn check(encoder: &str, pooling: &str) {
    check_channels(encoder, pooling, 1);
}

/// [`check`] with `channels` input channels (a multiscale front end).
fn check_channels(encoder: &str, pooling: &str, channels: usize) {
    let _rng = crate::burn_rng_lock();
    let config = EncoderConfig {
        input_channels: channels,
        ..tiny(encoder, pooling)
    };
    let tag = match channels {
        1 => format!("{encoder}+{pooling}"),
        c => format!("{encoder}+{pooling}+{c}ch"),
    };
    let (losses, model) = train_steps(&config, 12);
    assert!(
        losses.iter().all(|l| l.is_finite()),
        "{tag}: losses {losses:?}"
    );
    let first = losses[0];
    let last = *losses.last().unwrap();
    assert!(
        last < first * 0.9,
        "{tag}: the loss did not decrease: {losses:?}"
    );
    assert!(trainable_parameters(&model) > 0);
    if let Some(diff) = parity(&config, &model, &tag.replace('+', "-")) {
        assert!(
            diff <= TOLERANCE,
            "{tag}: ONNX Runtime differs from the trainer by {diff:.2e}"
        );
        eprintln!(
            "{tag}: loss {first:.4} -> {last:.4}, parity {diff:.2e}, {} parameters",
            config.parameter_count()
        );
    }
}

#[test]
fn cnn6_trains_and_exports() {
    check("cnn6", "mean-max");
}

#[test]
fn cnn10_trains_and_exports() {
    check("cnn10", "mean-max");
}

#[test]
fn cnn14_trains_and_exports() {
    check("cnn14", "mean-max");
}

#[test]
fn resnet38_trains_and_exports() {
    check("resnet38", "mean-max");
}

#[test]
fn crnn_trains_and_exports() {
    check("crnn", "mean-max");
}

#[test]
fn tcn_trains_and_exports() {
    check("tcn", "mean-max");
}

#[test]
fn wavegram_logmel_trains_and_exports() {
    check("wavegram-logmel", "mean-max");
}

#[test]
fn spec2vec_trains_and_exports() {
    check("spec2vec", "mean");
}

#[test]
fn multiscale_inputs_train_and_export() {
    // Every backbone's first layer takes the extra channels.
    for encoder in [
        "cnn6",
        "resnet38",
        "crnn",
        "tcn",
        "spec2vec",
        "wavegram-logmel",
    ] {
        check_channels(encoder, "mean", 3);
    }
}

#[test]
fn tapped_blocks_train_and_export() {
    // aiSFX's last block keeps its frame rate; CNN10's pools, so its tap is pooled to match.
    for (encoder, pooling, taps) in [("aisfx", "max", 3), ("cnn10", "mean-max", 2)] {
        let _rng = crate::burn_rng_lock();
        let config = EncoderConfig {
            tapped_blocks: taps,
            ..tiny(encoder, pooling)
        };
        let channels = &config.channels;
        let joined: usize = channels[channels.len() - taps..].iter().sum();
        assert_eq!(config.frame_dim(), joined, "{encoder}");
        let (losses, model) = train_steps(&config, 12);
        let tag = format!("{encoder}+{pooling}+taps{taps}");
        assert!(
            losses.iter().all(|l| l.is_finite()) && losses[11] < losses[0] * 0.9,
            "{tag}: losses {losses:?}"
        );
        if let Some(diff) = parity(&config, &model, &tag.replace('+', "-")) {
            assert!(
                diff <= TOLERANCE,
                "{tag}: ONNX Runtime differs by {diff:.2e}"
            );
        }
    }
}

#[test]
fn mean_pooling_trains_and_exports() {
    check("cnn10", "mean");
}

#[test]
fn max_pooling_trains_and_exports() {
    check("cnn10", "max");
}

#[test]
fn lstm_last_pooling_trains_and_exports() {
    check("cnn10", "lstm-last");
}

#[test]
fn lstm_mean_pooling_trains_and_exports() {
    check("tcn", "lstm-mean");
}

#[test]
fn netvlad_pooling_trains_and_exports() {
    check("cnn10", "netvlad");
}

#[test]
fn netrvlad_pooling_trains_and_exports() {
    check("crnn", "netrvlad");
}

#[test]
fn names_round_trip_and_unknown_names_list_the_choices() {
    for name in super::ENCODER_NAMES {
        assert_eq!(
            Architecture::parse(name, 4, 10, SILENCE).unwrap().name(),
            *name
        );
    }
    for name in super::pooling::POOLING_NAMES {
        assert_eq!(PoolingKind::parse(name, 4, 3).unwrap().name(), *name);
    }
    let e = Architecture::parse("cnn12", 4, 10, SILENCE).unwrap_err();
    assert!(e.contains("cnn14") && e.contains("spec2vec"), "{e}");
    let e = PoolingKind::parse("attention", 4, 3).unwrap_err();
    assert!(e.contains("netrvlad"), "{e}");
}

#[test]
fn published_sizes_at_width_64() {
    // PANNs: CNN14 ends at 2048 channels, CNN10 and CNN6 at 512; ResNet38 at 2048.
    let c = |a: Architecture| a.channels(64);
    assert_eq!(c(Architecture::Cnn14), vec![64, 128, 256, 512, 1024, 2048]);
    assert_eq!(c(Architecture::Cnn10), vec![64, 128, 256, 512]);
    assert_eq!(c(Architecture::Cnn6), vec![64, 128, 256, 512]);
    assert_eq!(*c(Architecture::Resnet38).last().unwrap(), 2048);
    // CNN14 at full width with a 2048 fc and a 384-d projection: about 80 M parameters in
    // PANNs with fc_audioset; ours swaps the 527-way classifier for the projection.
    let cnn14 = EncoderConfig::new(Architecture::Cnn14, PoolingKind::MeanMax, 64, 384, 64);
    assert_eq!(cnn14.fc_dim, 2048);
    assert_eq!(cnn14.min_frames(), 32);
    // Old run configs (without architecture and pooling) read as CNN10 with max + mean.
    let old = r#"{"n_mels":64,"channels":[16,32,64,128],"fc_dim":128,"embedding_dim":384,
        "block_dropout":0.2,"head_dropout":0.5,"bn_epsilon":1e-5}"#;
    let old: EncoderConfig = serde_json::from_str(old).unwrap();
    assert_eq!(old.architecture, Architecture::Cnn10);
    assert_eq!(old.pooling, PoolingKind::MeanMax);
    assert_eq!(old, EncoderConfig::cnn10(64, 384).with_width(16));
}

#[test]
fn the_assembler_writes_the_trainers_aisfx_graph_byte_for_byte() {
    // Set-up and the Python package build the default audio encoder with audiotext-assemble
    // from the checkpoint files; `export` of the same run must be the same bytes, so that one
    // committed sha256 stands for both. Trained a few steps, so the BatchNorm statistics are
    // not their initial values.
    use audiotext_assemble::aisfx::{build_aisfx_onnx, HeadRun};
    use audiotext_assemble::checkpoint::{StateDict, Tensor as Stored};
    use audiotext_core::audio::FrontEnd;

    let _rng = crate::burn_rng_lock();
    let config = tiny("aisfx", "max");
    let (_, model) = train_steps(&config, 3);
    let stored = |data: Vec<f32>, shape: Vec<usize>| Stored { shape, data };
    let mut backbone = StateDict::new();
    let super::Backbone::Cnn(cnn) = &model.backbone else {
        panic!("aiSFX is a CNN")
    };
    // The published checkpoint wraps the network; any one prefix is found.
    let prefix = "embedding_net.";
    for (i, block) in cnn.blocks.iter().enumerate() {
        let convs = [
            (&block.conv1, &block.bn1),
            (block.conv2.as_ref().unwrap(), block.bn2.as_ref().unwrap()),
        ];
        for (j, (conv, bn)) in convs.into_iter().enumerate() {
            let name = format!("{prefix}conv_block{}.", i + 1);
            let weight = conv.weight.val();
            backbone.insert(
                format!("{name}conv{}.weight", j + 1),
                stored(to_vec(weight.clone()), weight.dims().to_vec()),
            );
            let n = vec![bn.gamma.val().dims()[0]];
            backbone.insert(
                format!("{name}bn{}.weight", j + 1),
                stored(to_vec(bn.gamma.val()), n.clone()),
            );
            backbone.insert(
                format!("{name}bn{}.bias", j + 1),
                stored(to_vec(bn.beta.val()), n.clone()),
            );
            backbone.insert(
                format!("{name}bn{}.running_mean", j + 1),
                stored(to_vec(bn.running_mean.value()), n.clone()),
            );
            backbone.insert(
                format!("{name}bn{}.running_var", j + 1),
                stored(to_vec(bn.running_var.value()), n),
            );
        }
    }
    let mut head = StateDict::new();
    for (name, linear) in [("fc", &model.fc), ("proj", &model.proj)] {
        let [i, o] = linear.weight.val().dims();
        head.insert(
            format!("{name}.weight"),
            stored(super::blocks::out_in(linear), vec![o, i]),
        );
        head.insert(
            format!("{name}.bias"),
            stored(to_vec(linear.bias.as_ref().unwrap().val()), vec![o]),
        );
    }
    let front_end = FrontEnd::aisfx();
    let run: HeadRun = serde_json::from_value(serde_json::json!({
        "model": {"encoder": {
            "n_mels": config.n_mels, "input_channels": 1, "channels": config.channels,
            "fc_dim": config.fc_dim, "embedding_dim": config.embedding_dim,
            "bn_epsilon": config.bn_epsilon, "architecture": {"kind": "aisfx"}, "pooling": {"kind": "max"}
        }},
        "front_end": front_end,
        "pretrained": {"sha256": "not read here"},
        "head": {"head_file": "head.safetensors"}
    }))
    .unwrap();
    let assembled = build_aisfx_onnx(&run, &backbone, &head).unwrap().to_bytes();
    let exported = build_audio_onnx(&model, &config, front_end.silence_value()).to_bytes();
    assert!(
        assembled == exported,
        "the assembler's graph ({} bytes) differs from export's ({} bytes)",
        assembled.len(),
        exported.len()
    );
}
