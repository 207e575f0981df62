//! `ensemble` on bundles made here: merged graphs, shared copies, padding, opsets, refusals.

use super::check::*;
use super::graph::*;
use super::*;
use audiotext_core::audio::LogMel;
use audiotext_core::Bundle;
use audiotext_onnx::proto::GraphProto;
use audiotext_onnx::{AttributeProto, DataType, Dim, TensorProto};

use crate::split::SplitMix64;
use audiotext_core::audio::{FrontEnd, Windowing};
use audiotext_onnx::{GraphBuilder, ModelInfo};

const N_MELS: usize = 16;
const VOCAB: &[&str] = &[
    "[UNK]", "a", "dog", "barks", "rain", "falls", "on", "tin", "roof", "car", "passes", "by",
    "wet", "road", "while", "people", "talk", "birds", "the", "sings",
];

use crate::testing::TempDir;

fn front_end() -> FrontEnd {
    FrontEnd {
        sample_rate: 16_000,
        n_fft: 512,
        win_length: 512,
        hop_length: 256,
        n_mels: N_MELS,
        fmax: 8_000.0,
        ..FrontEnd::panns_32k()
    }
}

fn windowing() -> Windowing {
    Windowing {
        clip_seconds: 0.5,
        hop_seconds: 0.5,
        min_seconds: 0.2,
        pooling: "mean".into(),
    }
}

/// A word-level tokenizer over `vocab` (lower-cased, split on whitespace).
fn tokenizer_json(vocab: &[&str]) -> String {
    let ids: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": ids, "unk_token": "[UNK]"},
    })
    .to_string()
}

fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
        .collect()
}

/// `x / max(|x|, eps)` over axis 1 into the graph output `embedding`.
fn normalise_to_output(g: &mut GraphBuilder, x: &str, dim: usize) {
    let norm = g.reduce("ReduceL2", x, &[1], true);
    let eps = g.scalar_f32("eps", 1e-12);
    let norm = g.node("Max", &[&norm, &eps], vec![]);
    g.node_to("Div", &[x, &norm], vec![], &["embedding"]);
    g.output(
        "embedding",
        DataType::Float,
        &["batch".into(), (dim as i64).into()],
    );
}

/// A sentence encoder in miniature: token embeddings, masked mean, L2 normalisation.
fn text_onnx(dim: usize, seed: u64) -> ModelProto {
    let mut g = GraphBuilder::new("tiny_text", 17);
    let dims: [Dim; 2] = ["batch".into(), "tokens".into()];
    let ids = g.input("input_ids", DataType::Int64, &dims);
    let mask = g.input("attention_mask", DataType::Int64, &dims);
    let table = g.initializer_f32(
        "embeddings",
        &[VOCAB.len() as i64, dim as i64],
        &random(seed, VOCAB.len() * dim),
    );
    let tokens = g.node(
        "Gather",
        &[&table, &ids],
        vec![AttributeProto::int("axis", 0)],
    );
    let mask = g.node(
        "Cast",
        &[&mask],
        vec![AttributeProto::int("to", DataType::Float as i64)],
    );
    let mask = g.unsqueeze(&mask, &[2]);
    let masked = g.node("Mul", &[&tokens, &mask], vec![]);
    let sum = g.reduce("ReduceSum", &masked, &[1], false);
    let count = g.reduce("ReduceSum", &mask, &[1], false);
    let one = g.scalar_f32("one", 1.0);
    let count = g.node("Max", &[&count, &one], vec![]);
    let mean = g.node("Div", &[&sum, &count], vec![]);
    normalise_to_output(&mut g, &mean, dim);
    g.finish(ModelInfo::default())
}

/// An audio encoder in miniature. Its convolution spans `min_frames` frames without time
/// padding, so it fails on shorter windows, like an encoder whose poolings need a minimum.
/// Member graphs share weight names (`conv.weight`, ...), which the merge must keep apart;
/// a `Constant` node checks that node outputs are renamed too.
fn audio_onnx(dim: usize, seed: u64, min_frames: usize) -> ModelProto {
    let mut g = GraphBuilder::new("tiny_audio", 17);
    let x = g.input(
        "log_mel",
        DataType::Float,
        &[
            "batch".into(),
            1i64.into(),
            "frames".into(),
            (N_MELS as i64).into(),
        ],
    );
    let gain = g.node(
        "Constant",
        &[],
        vec![AttributeProto::tensor(
            "value",
            TensorProto::from_f32("gain", &[], &[0.02]),
        )],
    );
    let x = g.node("Mul", &[&x, &gain], vec![]);
    let k = min_frames as i64;
    let w = g.initializer_f32(
        "conv.weight",
        &[4, 1, k, 3],
        &random(seed, 4 * 3 * min_frames),
    );
    let b = g.initializer_f32("conv.bias", &[4], &random(seed + 100, 4));
    let y = g.node(
        "Conv",
        &[&x, &w, &b],
        vec![
            AttributeProto::ints("kernel_shape", &[k, 3]),
            AttributeProto::ints("pads", &[0, 1, 0, 1]),
        ],
    );
    let y = g.node("Relu", &[&y], vec![]);
    let y = g.reduce("ReduceMean", &y, &[3], false);
    let max = g.reduce("ReduceMax", &y, &[2], false);
    let mean = g.reduce("ReduceMean", &y, &[2], false);
    let y = g.node("Add", &[&max, &mean], vec![]);
    let y = g.linear(
        "proj",
        &y,
        &random(seed + 200, dim * 4),
        Some(&random(seed + 300, dim)),
        4,
        dim,
    );
    normalise_to_output(&mut g, &y, dim);
    g.finish(ModelInfo::default())
}

struct MemberSpec<'a> {
    name: &'a str,
    dim: usize,
    text: Vec<u8>,
    audio: Vec<u8>,
    min_frames: usize,
    tokenizer: String,
    front_end: FrontEnd,
    windowing: Windowing,
    license: &'a str,
}

impl<'a> MemberSpec<'a> {
    fn new(name: &'a str, dim: usize, seed: u64, min_frames: usize) -> MemberSpec<'a> {
        MemberSpec {
            name,
            dim,
            text: text_onnx(dim, seed).to_bytes(),
            audio: audio_onnx(dim, seed + 1, min_frames).to_bytes(),
            min_frames,
            tokenizer: tokenizer_json(VOCAB),
            front_end: front_end(),
            windowing: windowing(),
            license: "Apache-2.0 (tiny)",
        }
    }

    fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("text.onnx"), &self.text).unwrap();
        std::fs::write(dir.join("audio.onnx"), &self.audio).unwrap();
        std::fs::write(dir.join("tokenizer.json"), &self.tokenizer).unwrap();
        let mut m = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: self.name.into(),
            embedding_dim: self.dim,
            text: Some(TextSection {
                onnx: "text.onnx".into(),
                tokenizer: "tokenizer.json".into(),
                max_tokens: 16,
                pooling: "mean".into(),
                input_ids: "input_ids".into(),
                attention_mask: "attention_mask".into(),
                output: "embedding".into(),
                source: None,
                centre: None,
            }),
            audio: Some(AudioSection {
                onnx: "audio.onnx".into(),
                front_end: self.front_end.clone(),
                windowing: self.windowing.clone(),
                input: AudioInput {
                    waveform: None,
                    name: "log_mel".into(),
                    layout: "batch,1,frames,mels".into(),
                },
                output: "embedding".into(),
                encoder: Some(json!({"min_frames": self.min_frames})),
                quantization: None,
            }),
            training: Some(json!({"note": format!("test member {}", self.name)})),
            license: Some(self.license.into()),
            files: Default::default(),
        };
        m.write(dir).unwrap();
        dir.to_path_buf()
    }
}

fn graph_of(path: &Path) -> GraphProto {
    ModelProto::from_bytes(&std::fs::read(path).unwrap())
        .unwrap()
        .graph
        .unwrap()
}

fn count_ops(graph: &GraphProto, op: &str) -> usize {
    graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some(op))
        .count()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn ensemble_embeds_as_scaled_concatenation_and_scores_as_mean_of_members() {
    if let Err(e) = ort_runtime(None) {
        eprintln!("skipping: the ensemble test needs ONNX Runtime ({e})");
        return;
    }
    let tmp = TempDir::new("e2e");
    // Different text and audio graphs and dims; `c` has a byte copy of `a`'s text encoder
    // (shared in the ensemble); `b` needs 5 frames where the others need 1.
    let a = MemberSpec::new("a", 8, 1, 1).write(&tmp.0.join("a"));
    let b_spec = MemberSpec {
        license: "CC0-1.0 (tiny b)",
        ..MemberSpec::new("b", 6, 20, 5)
    };
    let b = b_spec.write(&tmp.0.join("b"));
    let c_spec = MemberSpec {
        text: std::fs::read(a.join("text.onnx")).unwrap(),
        ..MemberSpec::new("c", 8, 40, 1)
    };
    let c = c_spec.write(&tmp.0.join("c"));
    let out = tmp.0.join("ensemble");
    let members = vec![a.clone(), b.clone(), c.clone()];
    let report = build(&EnsembleJob {
        members: &members,
        out: &out,
        name: None,
        ort: None,
    })
    .unwrap();
    eprintln!("{:?}", report.check);
    assert_eq!(report.embedding_dim, 22);
    assert_eq!((report.text_graphs, report.audio_graphs), (2, 3));
    assert!(report.check.audio_max_diff <= TOLERANCE);

    // The manifest.
    let manifest = Manifest::read(&out).unwrap();
    assert_eq!(manifest.name, "ensemble of a + b + c");
    assert_eq!(manifest.embedding_dim, 22);
    assert_eq!(
        manifest.files.keys().collect::<Vec<_>>(),
        ["audio.onnx", "text.onnx", "tokenizer.json"]
    );
    let record = &manifest.training.as_ref().unwrap()["ensemble"];
    assert!(record["formula"].as_str().unwrap().contains("sqrt(3)"));
    let listed = record["members"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed[1]["manifest_sha256"],
        json!(sha256_file(&b.join(MANIFEST_FILE)).unwrap())
    );
    assert_eq!(listed[1]["dims"], json!([8, 14]));
    assert!(record["check"]["audio_max_abs_diff"].as_f64().unwrap() <= 1e-5);
    assert_eq!(
        manifest.license.as_deref(),
        Some("the terms of every member apply: Apache-2.0 (tiny); CC0-1.0 (tiny b)")
    );
    assert_eq!(
        manifest.audio.as_ref().unwrap().encoder.as_ref().unwrap()["min_frames"],
        json!(1)
    );

    // The graphs: one text copy for a and c, in-graph padding for b only.
    let text = graph_of(&out.join("text.onnx"));
    assert_eq!(count_ops(&text, "Gather"), 2);
    let concat = text
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Concat"))
        .unwrap();
    assert_eq!(
        concat.input,
        ["m0/embedding", "m1/embedding", "m0/embedding"]
    );
    let audio = graph_of(&out.join("audio.onnx"));
    assert_eq!(count_ops(&audio, "Conv"), 3);
    assert_eq!(count_ops(&audio, "Pad"), 1);
    assert_eq!(audio.input.len(), 1);
    assert_eq!(audio.output[0].name.as_deref(), Some("embedding"));

    // Independently of the build's own check: other windows and captions, through the
    // extension's loading path.
    let mut rng = SplitMix64::new(5);
    let windows: Vec<LogMel> = [40usize, 40, 7, 2]
        .iter()
        .map(|&frames| LogMel {
            frames,
            n_mels: N_MELS,
            data: (0..frames * N_MELS)
                .map(|_| -80.0 + 70.0 * rng.next_f64() as f32)
                .collect(),
        })
        .collect();
    let refs: Vec<&LogMel> = windows.iter().collect();
    let captions = [
        "the dog sings",
        "rain on the road",
        "birds talk while a car passes",
    ];
    let embed = |dir: &Path| {
        let bundle = Bundle::open(dir).unwrap();
        (
            bundle
                .audio_encoder()
                .unwrap()
                .embed_windows(&refs)
                .unwrap(),
            bundle.text_encoder().unwrap().embed(&captions).unwrap(),
        )
    };
    let (ens_audio, ens_text) = embed(&out);
    let parts: Vec<_> = members.iter().map(|m| embed(m)).collect();
    let scale = 1.0 / 3f32.sqrt();
    let mut worst = (0f32, 0f32, 0f32);
    for w in 0..windows.len() {
        let expected: Vec<f32> = parts
            .iter()
            .flat_map(|(audio, _)| audio[w].iter().map(|x| x * scale))
            .collect();
        worst.0 = worst.0.max(max_abs_diff(&ens_audio[w], &expected));
        let norm = dot(&ens_audio[w], &ens_audio[w]).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "window {w}: norm {norm}");
    }
    for t in 0..captions.len() {
        let expected: Vec<f32> = parts
            .iter()
            .flat_map(|(_, text)| text[t].iter().map(|x| x * scale))
            .collect();
        worst.1 = worst.1.max(max_abs_diff(&ens_text[t], &expected));
    }
    let mut spread = 0f32;
    for w in 0..windows.len() {
        for t in 0..captions.len() {
            let member_scores: Vec<f32> = parts
                .iter()
                .map(|(audio, text)| dot(&audio[w], &text[t]))
                .collect();
            let mean = member_scores.iter().sum::<f32>() / 3.0;
            worst.2 = worst.2.max((dot(&ens_audio[w], &ens_text[t]) - mean).abs());
            spread = spread.max(
                member_scores.iter().cloned().fold(f32::MIN, f32::max)
                    - member_scores.iter().cloned().fold(f32::MAX, f32::min),
            );
        }
    }
    eprintln!(
        "max |diff|: audio {:.2e}, text {:.2e}, cosine vs mean {:.2e}; member cosines spread {spread:.2}",
        worst.0, worst.1, worst.2
    );
    assert!(
        worst.0 <= 1e-5 && worst.1 <= 1e-5 && worst.2 <= 1e-5,
        "{worst:?}"
    );
    assert!(
        spread > 0.1,
        "the members must disagree for the test to mean anything"
    );

    // The check itself fails on an ensemble that does not match its members.
    let shuffled: Vec<Member> = [&b, &a, &c]
        .iter()
        .enumerate()
        .map(|(i, dir)| load_member(i, dir).unwrap())
        .collect();
    let error = check_ensemble(&out, &shuffled, None).unwrap_err();
    assert!(
        format!("{error:#}").contains("ensemble vs concat(members)/sqrt(3)"),
        "{error:#}"
    );

    // Rebuilding into the same folder replaces the earlier ensemble.
    let again = build(&EnsembleJob {
        members: &members[..2],
        out: &out,
        name: Some("a+b".into()),
        ort: None,
    })
    .unwrap();
    assert_eq!(again.embedding_dim, 14);
    assert_eq!(Manifest::read(&out).unwrap().name, "a+b");
}

fn build_error(members: &[PathBuf], out: &Path) -> String {
    let error = build(&EnsembleJob {
        members,
        out,
        name: None,
        ort: None,
    })
    .expect_err("the build must fail");
    format!("{error:#}")
}

#[test]
fn incompatible_members_are_refused_with_the_field_and_both_members() {
    let tmp = TempDir::new("errors");
    let out = tmp.0.join("out");
    let a = MemberSpec::new("a", 8, 1, 1).write(&tmp.0.join("a"));

    let message = build_error(std::slice::from_ref(&a), &out);
    assert!(
        message.contains("at least two --member bundles, got 1"),
        "{message}"
    );

    let other_fmax = MemberSpec {
        front_end: FrontEnd {
            fmax: 7_000.0,
            ..front_end()
        },
        ..MemberSpec::new("b", 8, 2, 1)
    }
    .write(&tmp.0.join("fmax"));
    let message = build_error(&[a.clone(), other_fmax.clone()], &out);
    assert!(
        message.contains("differ in audio.fmax: 8000.0 vs 7000.0")
            && message.contains(&format!(
                "member 0 ({})",
                a.canonicalize().unwrap().display()
            ))
            && message.contains(&format!(
                "member 1 ({})",
                other_fmax.canonicalize().unwrap().display()
            )),
        "{message}"
    );

    let other_window = MemberSpec {
        windowing: Windowing {
            clip_seconds: 1.0,
            ..windowing()
        },
        ..MemberSpec::new("b", 8, 2, 1)
    }
    .write(&tmp.0.join("window"));
    let message = build_error(&[a.clone(), other_window], &out);
    assert!(
        message.contains("differ in audio.windowing.clip_seconds: 0.5 vs 1.0"),
        "{message}"
    );

    let other_tokenizer = MemberSpec {
        tokenizer: tokenizer_json(&VOCAB[..10]),
        ..MemberSpec::new("b", 8, 2, 1)
    }
    .write(&tmp.0.join("tokenizer"));
    let message = build_error(&[a.clone(), other_tokenizer], &out);
    assert!(
        message.contains("differ in text.tokenizer (sha256 of the file)")
            && message.contains("same tokenizer.json"),
        "{message}"
    );

    let message = build_error(&[a.clone(), a.clone()], &a);
    assert!(message.contains("would overwrite a member"), "{message}");

    // A damaged member file is caught before anything is written.
    let damaged = MemberSpec::new("d", 8, 3, 1).write(&tmp.0.join("damaged"));
    std::fs::write(damaged.join("audio.onnx"), b"truncated").unwrap();
    let message = build_error(&[a, damaged], &out);
    assert!(
        message.contains("audio.onnx is damaged or was replaced"),
        "{message}"
    );
    assert!(!out.join(MANIFEST_FILE).exists());
}

fn copy_of(label: &str, model: ModelProto) -> GraphCopy {
    GraphCopy {
        label: label.into(),
        prefix: String::new(),
        model,
        inputs: vec![],
        output: "embedding".into(),
        dim: 1,
        pad: None,
    }
}

fn reduce_model(opset: i64, op: &str) -> ModelProto {
    let mut g = GraphBuilder::new("g", opset);
    let x = g.input("x", DataType::Float, &["n".into(), 4i64.into()]);
    let y = if op == "Relu" {
        g.node("Relu", &[&x], vec![])
    } else {
        g.reduce(op, &x, &[1], false)
    };
    g.node_to("Identity", &[&y], vec![], &["embedding"]);
    g.output("embedding", DataType::Float, &["n".into()]);
    g.finish(ModelInfo::default())
}

#[test]
fn opsets_merge_to_the_highest_unless_an_operator_changed_in_between() {
    let (imports, opset) = merged_opsets(
        &[
            copy_of("member 0", reduce_model(17, "Relu")),
            copy_of("member 1", reduce_model(18, "ReduceMean")),
        ],
        "audio.onnx",
    )
    .unwrap();
    assert_eq!(opset, 18);
    assert_eq!(imports.len(), 1);
    let error = merged_opsets(
        &[
            copy_of("member 0", reduce_model(17, "ReduceMean")),
            copy_of("member 1", reduce_model(18, "Relu")),
        ],
        "audio.onnx",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains(
            "member 0's audio.onnx is at opset 17 and uses ReduceMean, whose inputs changed at opset 18"
        ),
        "{error}"
    );
    let error = merged_opsets(
        &[copy_of("member 0", reduce_model(12, "Relu"))],
        "audio.onnx",
    )
    .unwrap_err();
    assert!(error.to_string().contains("opset 12"), "{error}");
}

#[test]
fn files_with_fields_the_merge_would_drop_are_refused() {
    let tmp = TempDir::new("lossless");
    let path = tmp.0.join("audio.onnx");
    let mut bytes = audio_onnx(4, 1, 1).to_bytes();
    std::fs::write(&path, &bytes).unwrap();
    read_onnx(&path, "member 0").unwrap();
    // ModelProto.training_info (field 20), which our protobuf subset skips when decoding.
    bytes.extend_from_slice(&[0xa2, 0x01, 0x00]);
    std::fs::write(&path, &bytes).unwrap();
    let error = read_onnx(&path, "member 0").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("holds ONNX fields this tool does not carry"),
        "{error}"
    );
}
