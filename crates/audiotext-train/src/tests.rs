//! End to end on generated data, without ../shared/data or a GPU: a tiny encoder trains on
//! sine tones for a few steps (finite, decreasing loss), resumes, is evaluated, exported, and
//! the export matches the trainer in ONNX Runtime (when the runtime library can be found).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::{text_encoder_key, Features};
use crate::split::SplitMix64;
use audiotext_core::audio::{FrontEnd, MelExtractor, Windowing};
use audiotext_core::model::manifest::{Manifest, TextSection, MANIFEST_FORMAT_VERSION};
use burn::prelude::*;

use crate::fit::{train, ClipData, Prepared};
use crate::model::{ContrastiveConfig, EncoderConfig};
use crate::run::{DataInfo, DeviceKind, RunConfig, TrainOptions, Which, RUN_FORMAT_VERSION};
use crate::specaug::SpecAugment;
use crate::trained::load_model;

const DIM: usize = 8;
const TONES_HZ: [f32; 4] = [300.0, 900.0, 2200.0, 5000.0];

use crate::testing::TempDir;

fn front_end() -> FrontEnd {
    FrontEnd {
        sample_rate: 16_000,
        n_fft: 512,
        win_length: 512,
        hop_length: 256,
        n_mels: 16,
        fmax: 8_000.0,
        ..FrontEnd::panns_32k()
    }
}

/// One second of a sine tone with a little noise, through the shared front-end.
fn tone(fe: &FrontEnd, hz: f32, phase: f32, seed: u64) -> Features {
    let mut rng = SplitMix64::new(seed);
    let samples: Vec<f32> = (0..fe.sample_rate as usize)
        .map(|i| {
            let t = i as f32 / fe.sample_rate as f32;
            0.5 * (2.0 * std::f32::consts::PI * hz * t + phase).sin()
                + 0.01 * (rng.next_f64() as f32 - 0.5)
        })
        .collect();
    let m = MelExtractor::new(fe).unwrap().compute(&samples);
    Features {
        waveform: Vec::new(),
        samples: samples.len(),
        frames: m.frames,
        n_mels: m.n_mels,
        data: m.data,
    }
}

/// A caption embedding per class: a unit vector near axis `class`.
fn caption(class: usize, variant: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM)
        .map(|d| {
            if d == class {
                1.0
            } else {
                0.05 * ((d + variant) % 3) as f32
            }
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// 12 clips, 3 per tone; the first two of each tone train, the third validates.
fn prepared(fe: &FrontEnd) -> Prepared {
    let mut clips = Vec::new();
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (class, &hz) in TONES_HZ.iter().enumerate() {
        for take in 0..3 {
            let i = clips.len();
            clips.push(ClipData {
                name: format!("tone-{hz}-{take}.wav"),
                features: Arc::new(tone(fe, hz, take as f32, (class * 3 + take) as u64)),
                captions: (0..2).map(|v| caption(class, v)).collect(),
                caption_key: class as u64,
                class: Some(class),
            });
            if take < 2 {
                train.push(i)
            } else {
                validation.push(i)
            }
        }
    }
    Prepared {
        clips,
        train,
        validation,
        mixes: Vec::new(),
    }
}

/// A stand-in text bundle: the manifest and files `export` copies (never run).
fn fake_text_bundle(dir: &Path) -> Manifest {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("text.onnx"), b"not a real model").unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    let mut m = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        name: "tiny-text".into(),
        embedding_dim: DIM,
        text: Some(TextSection {
            onnx: "text.onnx".into(),
            tokenizer: "tokenizer.json".into(),
            max_tokens: 8,
            pooling: "mean".into(),
            input_ids: "input_ids".into(),
            attention_mask: "attention_mask".into(),
            output: "embedding".into(),
            source: None,
            centre: None,
        }),
        audio: None,
        training: None,
        license: Some("Apache-2.0 (tiny)".into()),
        files: Default::default(),
    };
    m.write(dir).unwrap();
    m
}

fn config(fe: &FrontEnd, text_bundle: &Path, text_key: String, epochs: usize) -> RunConfig {
    let encoder = EncoderConfig {
        block_dropout: 0.0,
        head_dropout: 0.0,
        ..EncoderConfig::cnn10(fe.n_mels, DIM)
    }
    .with_width(4);
    RunConfig {
        format_version: RUN_FORMAT_VERSION,
        model: ContrastiveConfig {
            encoder,
            text_head: false,
            temperature: 0.1,
            learn_temperature: true,
        },
        train: TrainOptions {
            epochs,
            batch_size: 8,
            lr: 3e-3,
            min_lr_ratio: 1.0,
            warmup_epochs: 0.0,
            weight_decay: 0.0,
            seed: 3,
            max_frames: 48,
            specaug: SpecAugment::off(),
            clip_grad_norm: 0.0,
            keep_checkpoints: 1,
            validate_every: 1,
            loss: Default::default(),
            mix: Default::default(),
        },
        front_end: fe.clone(),
        windowing: Windowing {
            clip_seconds: 0.5,
            hop_seconds: 0.5,
            min_seconds: 0.2,
            pooling: "mean".into(),
        },
        data: Some(DataInfo {
            root: PathBuf::from("/nonexistent/generated"),
            layout: "generic".into(),
            validation_split: None,
            validation_fraction: 0.25,
            fold: None,
            split_seed: 0,
            train_clips: 8,
            validation_files: Vec::new(),
            license: Some("CC BY-NC 3.0".into()),
            max_bad_share: crate::run::DEFAULT_MAX_BAD_SHARE,
            skipped_files: Vec::new(),
        }),
        text_bundle: Some(text_bundle.to_path_buf()),
        text_key: Some(text_key),
        text_model: Some("tiny-text".into()),
        pretrained: None,
        head: None,
    }
}

#[test]
fn tiny_training_resumes_exports_and_matches_onnx_runtime() {
    let _rng = crate::burn_rng_lock();
    let tmp = TempDir::new("e2e");
    let fe = front_end();
    let data = prepared(&fe);
    let text_dir = tmp.0.join("text");
    let text_manifest = fake_text_bundle(&text_dir);
    let key = text_encoder_key(&text_manifest).unwrap();
    let run_dir = tmp.0.join("run");

    // Three epochs of one step each...
    let mut cfg = config(&fe, &text_dir, key.clone(), 3);
    cfg.write(&run_dir).unwrap();
    let first = train(&cfg, &data, &run_dir, false, DeviceKind::Flex, None, false).unwrap();
    assert_eq!(first.epochs.len(), 3);
    assert!(
        first.step_losses.iter().all(|l| l.is_finite()),
        "{:?}",
        first.step_losses
    );
    // ...then resumed to eight.
    cfg.train.epochs = 8;
    let second = train(&cfg, &data, &run_dir, true, DeviceKind::Flex, None, false).unwrap();
    assert_eq!(second.epochs.len(), 8, "metrics of the first call are kept");
    let losses: Vec<f64> = first
        .step_losses
        .iter()
        .chain(&second.step_losses)
        .copied()
        .collect();
    assert_eq!(losses.len(), 8);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[7] < losses[0], "loss does not decrease: {losses:?}");
    // Resuming continues the same trajectory as one uninterrupted run (model, BatchNorm
    // statistics, optimizer moments and random streams all restored). That run validates
    // after epochs 3, 6 and 8 only, which must not change the trajectory either.
    let straight_dir = tmp.0.join("straight");
    cfg.train.validate_every = 3;
    cfg.write(&straight_dir).unwrap();
    let straight = train(
        &cfg,
        &data,
        &straight_dir,
        false,
        DeviceKind::Flex,
        None,
        false,
    )
    .unwrap();
    for (a, b) in straight.step_losses.iter().zip(&losses) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "resumed {losses:?} vs straight {:?}",
            straight.step_losses
        );
    }
    let validated: Vec<usize> = straight
        .epochs
        .iter()
        .filter(|l| l.t2a_map10.is_some())
        .map(|l| l.epoch)
        .collect();
    assert_eq!(validated, [3, 6, 8]);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8);
    assert!(metrics
        .lines()
        .all(|l| l.contains("\"t2a_map10\"") && l.contains("\"class_p10\"")));
    for f in [
        "loss.png",
        "metrics.png",
        "checkpoints/last.model.bpk",
        "checkpoints/last.optim.bpk",
        "checkpoints/best.model.bpk",
        "checkpoints/epoch-008.model.bpk",
    ] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    assert!(
        !run_dir.join("checkpoints/epoch-007.model.bpk").exists(),
        "old epoch checkpoints are rotated"
    );

    // Export and parity.
    let device = Device::flex();
    let (model, state) = load_model(&run_dir, &cfg, Which::Last, &device).unwrap();
    assert_eq!(state.epoch, 8);
    let onnx = crate::audio_graph::build_audio_onnx(&model.audio, &cfg.model.encoder, -100.0);
    let graph = onnx.graph.as_ref().unwrap();
    let ops: Vec<&str> = graph
        .node
        .iter()
        .filter_map(|n| n.op_type.as_deref())
        .collect();
    assert_eq!(ops.iter().filter(|o| **o == "Conv").count(), 8);
    assert!(!ops.contains(&"BatchNormalization"), "BatchNorm is folded");
    assert_eq!(graph.input[0].name.as_deref(), Some("log_mel"));
    assert_eq!(graph.output[0].name.as_deref(), Some("embedding"));

    if let Err(e) = crate::run::ort_runtime(None) {
        eprintln!("skipping the ONNX Runtime parity check: {e}");
        return;
    }
    let out = tmp.0.join("bundle");
    let feats: Vec<Features> = data
        .validation
        .iter()
        .map(|&i| (*data.clips[i].features).clone())
        .collect();
    let report = crate::export_audio::export(&crate::export_audio::ExportJob {
        run_dir: &run_dir,
        config: &cfg,
        model: &model,
        epoch: state.epoch,
        out: &out,
        name: Some("tiny".into()),
        text_bundle: &text_dir,
        parity_inputs: (feats.clone(), "generated tones".into()),
        ort: None,
        cross_validation: None,
    })
    .unwrap();
    eprintln!(
        "parity: {:?}, max |diff| {:.2e}",
        report.parity_lines, report.max_diff
    );
    assert!(report.max_diff <= crate::audio_graph::PARITY_TOLERANCE);
    assert_eq!(report.parity_lines.len(), 3);
    let manifest = Manifest::read(&out).unwrap();
    assert_eq!(manifest.name, "tiny");
    assert!(manifest.text.is_some(), "the text section is kept");
    let audio = manifest.audio.as_ref().unwrap();
    assert_eq!(
        (audio.input.name.as_str(), audio.input.layout.as_str()),
        ("log_mel", "batch,1,frames,mels")
    );
    assert_eq!(audio.front_end, fe);
    let license = manifest.license.clone().unwrap();
    assert!(
        license.contains("CC BY-NC 3.0")
            && license.contains("non-commercial")
            && license.contains("Apache-2.0 (tiny)"),
        "{license}"
    );
    assert_eq!(manifest.files.len(), 3);
    assert!(
        manifest.training.as_ref().unwrap()["audio_encoder"]["validation_metrics"]["t2a_map10"]
            .is_number()
    );

    // The bundle evaluates like the run.
    let refs: Vec<&Features> = feats.iter().collect();
    let windows: Vec<Vec<Features>> = refs
        .iter()
        .map(|f| crate::features::clip_windows(f, &cfg.front_end, &cfg.windowing).unwrap())
        .collect();
    assert_eq!(windows[0].len(), 2, "1 s clips make two 0.5 s windows");
    let from_bundle = crate::eval::bundle_audio_embeddings(&out, &windows, 4, None).unwrap();
    let from_run = crate::run::embed_clips(&model, &refs, &cfg, 4, &device, |_| {}).unwrap();
    let diff = from_bundle
        .iter()
        .flatten()
        .zip(from_run.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "bundle and run embeddings differ by {diff}");

    // A second export into the same bundle replaces the audio part, keeps the text part.
    crate::export_audio::export(&crate::export_audio::ExportJob {
        run_dir: &run_dir,
        config: &cfg,
        model: &model,
        epoch: state.epoch,
        out: &out,
        name: None,
        text_bundle: &text_dir,
        parity_inputs: (feats, "generated tones".into()),
        ort: None,
        cross_validation: None,
    })
    .unwrap();
    let again = Manifest::read(&out).unwrap();
    assert_eq!(again.license.unwrap().matches("text encoder:").count(), 1);
}

#[test]
fn text_head_is_appended_to_a_text_graph() {
    let _rng = crate::burn_rng_lock();
    use audiotext_onnx::{DataType, GraphBuilder, ModelInfo};
    // A "text model" that outputs its input, normalised.
    let mut g = GraphBuilder::new("t", 17);
    let x = g.input("x", DataType::Float, &["batch".into(), 2i64.into()]);
    g.node_to("Identity", &[&x], vec![], &["embedding"]);
    g.output("embedding", DataType::Float, &["batch".into(), 2i64.into()]);
    let model = g.finish(ModelInfo::default());
    // Head: swap the two axes, add a bias.
    let patched = crate::export_audio::append_text_head(
        model,
        "embedding",
        &[0.0, 1.0, 1.0, 0.0],
        &[0.5, 0.0],
        2,
    )
    .unwrap();
    let graph = patched.graph.unwrap();
    assert_eq!(graph.output[0].name.as_deref(), Some("embedding"));
    assert_eq!(graph.node[0].output, ["embedding_sentence"]);
    assert_eq!(graph.node.last().unwrap().output, ["embedding"]);
    let ops: Vec<&str> = graph
        .node
        .iter()
        .filter_map(|n| n.op_type.as_deref())
        .collect();
    assert_eq!(ops, ["Identity", "MatMul", "Add", "ReduceL2", "Max", "Div"]);
}

/// Time of training steps of the default CNN10 at the ESC-50 shape (32 clips of 5 s at
/// 32 kHz: 501 frames x 64 mels) on generated features, split into forward, backward and
/// optimizer. Run with
/// `cargo test --release --bin audiotext-train -- --ignored --nocapture step_time`;
/// `AUDIOTEXT_BENCH=batch,frames,width` changes the shape.
#[test]
#[ignore = "a benchmark: slow in debug builds"]
fn step_time_of_the_default_model() {
    use crate::loss::{info_nce, soft_targets};
    use crate::model::{input_tensor, to_vec};
    use burn::optim::{AdamWConfig, GradientsParams};
    use std::time::Instant;
    let shape: Vec<usize> = std::env::var("AUDIOTEXT_BENCH")
        .unwrap_or_else(|_| "32,501,64".into())
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let (batch, frames, width, mels) = (shape[0], shape[1], shape[2], 64usize);
    let device = Device::flex().autodiff();
    let config = ContrastiveConfig {
        encoder: EncoderConfig::cnn10(mels, 384).with_width(width),
        text_head: false,
        temperature: 0.07,
        learn_temperature: true,
    };
    let mut model = config.init(&device);
    let mut optim = AdamWConfig::new().init();
    let feats = crate::audio_graph::generated_features(mels, batch, frames);
    let values: Vec<f32> = feats.iter().flat_map(|f| f.data.iter().copied()).collect();
    let text: Vec<f32> = (0..batch)
        .flat_map(|i| {
            caption(i % DIM, 0)
                .into_iter()
                .chain(std::iter::repeat_n(0.0, 384 - DIM))
        })
        .collect();
    let keys: Vec<u64> = (0..batch as u64).collect();
    eprintln!(
        "batch {batch} x 1 x {frames} x {mels}, width {width}, rayon threads {}",
        rayon::current_num_threads()
    );
    for step in 0..3 {
        let t0 = Instant::now();
        let x = input_tensor(values.clone(), batch, frames, mels, 1, &device);
        let t = Tensor::<2>::from_data(TensorData::new(text.clone(), [batch, 384]), &device);
        let y = Tensor::<2>::from_data(
            TensorData::new(soft_targets(&keys), [batch, batch]),
            &device,
        );
        let loss = info_nce(
            model.audio.forward(x),
            model.text(t),
            model.scale(0.07, &device),
            y,
        );
        let value = to_vec(loss.clone())[0];
        let t1 = Instant::now();
        let grads = loss.backward();
        let grads = GradientsParams::from_grads(grads, &model);
        let t2 = Instant::now();
        model = optim.step(1e-3, model, grads);
        let _ = to_vec(model.audio.proj.weight.val());
        let t3 = Instant::now();
        eprintln!(
            "step {step}: loss {value:.4}, forward {:.2} s, backward {:.2} s, optimizer {:.2} s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64()
        );
    }
    let valid = model.valid();
    let inner = Device::flex();
    let start = Instant::now();
    let y = valid
        .audio
        .forward(input_tensor(values, batch, frames, mels, 1, &inner));
    let _ = to_vec(y);
    eprintln!(
        "inference of {batch} clips: {:.2} s",
        start.elapsed().as_secs_f64()
    );
}
