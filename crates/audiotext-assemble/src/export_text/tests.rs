//! `export-text` on tiny BERT and MPNet folders written here (weights, tokenizer, pooling):
//! the bundles and their graphs, heads, relative position buckets, and the refusals' messages.

use super::*;
use std::path::Path;

use audiotext_onnx::proto::type_proto;
use audiotext_onnx::{DataType, ModelProto};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

const H: usize = 8;
const HEADS: usize = 2;
const INTER: usize = 16;
const VOCAB: usize = 20;
const MAX_POS: usize = 16;

use crate::testing::TempDir;

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.2)
        .collect()
}

/// A tiny random BERT in sentence-transformers layout; returns its parameter count.
fn tiny_model(dir: &Path, prefix: &str, config_patch: Value) -> u64 {
    let mut config = json!({
        "model_type": "bert", "hidden_size": H, "num_hidden_layers": 2, "num_attention_heads": HEADS,
        "intermediate_size": INTER, "vocab_size": VOCAB, "max_position_embeddings": MAX_POS,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
        "position_embedding_type": "absolute"
    });
    for (k, v) in config_patch.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let n = shape.iter().product();
        let seed = t.len();
        t.push((format!("{prefix}{name}"), shape, values(n, seed)));
    };
    add("embeddings.word_embeddings.weight".into(), vec![VOCAB, H]);
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![MAX_POS, H],
    );
    add("embeddings.token_type_embeddings.weight".into(), vec![2, H]);
    add("embeddings.LayerNorm.weight".into(), vec![H]);
    add("embeddings.LayerNorm.bias".into(), vec![H]);
    for l in 0..2 {
        let p = format!("encoder.layer.{l}.");
        for name in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            add(format!("{p}{name}.weight"), vec![H, H]);
            add(format!("{p}{name}.bias"), vec![H]);
        }
        add(format!("{p}intermediate.dense.weight"), vec![INTER, H]);
        add(format!("{p}intermediate.dense.bias"), vec![INTER]);
        add(format!("{p}output.dense.weight"), vec![H, INTER]);
        add(format!("{p}output.dense.bias"), vec![H]);
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}{ln}.weight"), vec![H]);
            add(format!("{p}{ln}.bias"), vec![H]);
        }
    }
    // A tensor BertModel has but the sentence embedding does not use.
    t.push((
        format!("{prefix}pooler.dense.weight"),
        vec![H, H],
        values(H * H, 99),
    ));
    let params = t
        .iter()
        .filter(|(n, _, _)| !n.contains("pooler"))
        .map(|(_, _, d)| d.len() as u64)
        .sum();
    write_safetensors(&dir.join("model.safetensors"), &t);
    write_sentence_transformers_files(dir, "{\"model\": {}}");
    params
}

/// What sentence-transformers writes next to the weights: tokenizer, max length 64,
/// mean pooling, Normalize.
fn write_sentence_transformers_files(dir: &Path, tokenizer_json: &str) {
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json).unwrap();
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 64, "do_lower_case": false}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        json!({"word_embedding_dimension": H, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false,
               "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
}

const MPNET_BUCKETS: usize = 32;
const MPNET_WORDS: [&str; 12] = [
    "a", "dog", "barks", "the", "cat", "rain", "on", "roof", "##s", "##ing", ".", ",",
];

/// A WordPiece tokenizer.json with MPNet's special tokens (`<s>` 0, `<pad>` 1, `</s>` 2,
/// `<unk>` 3) and its post-processor (`<s> A </s>`, `<s> A </s> </s> B </s>`).
fn mpnet_tokenizer_json() -> String {
    let specials = ["<s>", "<pad>", "</s>", "<unk>"];
    let mut vocab = serde_json::Map::new();
    for (id, token) in specials.iter().chain(MPNET_WORDS.iter()).enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let sequence = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("<s>"), sequence("A", 0), special("</s>")],
            "pair": [special("<s>"), sequence("A", 0), special("</s>"), special("</s>"),
                     sequence("B", 1), special("</s>")],
            "special_tokens": {
                "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "<unk>", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
    .to_string()
}

/// A tiny random MPNet in sentence-transformers layout (HF `MPNetModel` tensor names under
/// `prefix`); returns its parameter count.
fn tiny_mpnet(dir: &Path, prefix: &str, config_patch: Value) -> u64 {
    let mut config = json!({
        "model_type": "mpnet", "architectures": ["MPNetModel"], "hidden_size": H,
        "num_hidden_layers": 2, "num_attention_heads": HEADS, "intermediate_size": INTER,
        "vocab_size": VOCAB, "max_position_embeddings": MAX_POS,
        "relative_attention_num_buckets": MPNET_BUCKETS, "layer_norm_eps": 1e-5,
        "hidden_act": "gelu", "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2
    });
    for (k, v) in config_patch.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let n = shape.iter().product();
        let seed = t.len();
        t.push((format!("{prefix}{name}"), shape, values(n, seed)));
    };
    add("embeddings.word_embeddings.weight".into(), vec![VOCAB, H]);
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![MAX_POS, H],
    );
    add("embeddings.LayerNorm.weight".into(), vec![H]);
    add("embeddings.LayerNorm.bias".into(), vec![H]);
    add(
        "encoder.relative_attention_bias.weight".into(),
        vec![MPNET_BUCKETS, HEADS],
    );
    for l in 0..2 {
        let p = format!("encoder.layer.{l}.");
        for name in ["q", "k", "v", "o"] {
            add(format!("{p}attention.attn.{name}.weight"), vec![H, H]);
            add(format!("{p}attention.attn.{name}.bias"), vec![H]);
        }
        add(format!("{p}intermediate.dense.weight"), vec![INTER, H]);
        add(format!("{p}intermediate.dense.bias"), vec![INTER]);
        add(format!("{p}output.dense.weight"), vec![H, INTER]);
        add(format!("{p}output.dense.bias"), vec![H]);
        for ln in ["attention.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}{ln}.weight"), vec![H]);
            add(format!("{p}{ln}.bias"), vec![H]);
        }
    }
    let params = t.iter().map(|(_, _, d)| d.len() as u64).sum();
    // MPNetModel's pooler, which the sentence embedding does not use.
    t.push((
        format!("{prefix}pooler.dense.weight"),
        vec![H, H],
        values(H * H, 99),
    ));
    write_safetensors(&dir.join("model.safetensors"), &t);
    write_sentence_transformers_files(dir, &mpnet_tokenizer_json());
    params
}

fn options(from: &Path, out: &Path) -> ExportTextOptions {
    ExportTextOptions {
        from: from.to_path_buf(),
        out: out.to_path_buf(),
        head: None,
    }
}

fn tensor_dims(v: &audiotext_onnx::proto::ValueInfoProto) -> (i32, Vec<String>) {
    match &v.r#type.as_ref().unwrap().value {
        Some(type_proto::Value::TensorType(t)) => (
            t.elem_type.unwrap(),
            t.shape
                .as_ref()
                .unwrap()
                .dim
                .iter()
                .map(|d| match d.value.as_ref().unwrap() {
                    audiotext_onnx::proto::tensor_shape_proto::dimension::Value::DimValue(n) => {
                        n.to_string()
                    }
                    audiotext_onnx::proto::tensor_shape_proto::dimension::Value::DimParam(s) => {
                        s.clone()
                    }
                })
                .collect(),
        ),
        None => panic!("no tensor type"),
    }
}

#[test]
fn exports_a_tiny_bert_bundle() {
    let src = TempDir::new("src");
    let out = TempDir::new("out");
    let params = tiny_model(&src.0, "", json!({}));
    let report = export_text(&options(&src.0, &out.0.join("bundle"))).unwrap();
    let bundle = out.0.join("bundle");
    assert_eq!(report.embedding_dim, H);
    assert_eq!(
        report.max_tokens, MAX_POS,
        "max_seq_length 64 is capped at max_position_embeddings"
    );
    assert_eq!(report.parameters, params);
    assert!(report.notes.is_empty());

    let bytes = std::fs::read(bundle.join(TEXT_ONNX_FILE)).unwrap();
    assert_eq!(bytes.len() as u64, report.onnx_bytes);
    let model = ModelProto::from_bytes(&bytes).unwrap();
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].domain.as_deref(), Some(""));
    assert_eq!(model.opset_import[0].version, Some(TEXT_OPSET));
    let graph = model.graph.unwrap();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .map(|i| (i.name.clone().unwrap(), tensor_dims(i)))
        .collect();
    assert_eq!(
        inputs,
        [
            (
                "input_ids".to_string(),
                (
                    DataType::Int64 as i32,
                    vec!["batch".to_string(), "tokens".to_string()]
                )
            ),
            (
                "attention_mask".to_string(),
                (
                    DataType::Int64 as i32,
                    vec!["batch".to_string(), "tokens".to_string()]
                )
            ),
        ]
    );
    assert_eq!(graph.output.len(), 1);
    assert_eq!(graph.output[0].name.as_deref(), Some("embedding"));
    assert_eq!(
        tensor_dims(&graph.output[0]),
        (
            DataType::Float as i32,
            vec!["batch".to_string(), H.to_string()]
        )
    );
    assert!(graph
        .node
        .iter()
        .all(|n| n.domain.as_deref().unwrap_or("").is_empty()));
    let count = |op: &str| {
        graph
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    };
    assert_eq!(count("LayerNormalization"), 1 + 2 * 2);
    assert_eq!(count("Softmax"), 2);
    assert_eq!(count("Erf"), 2);
    // Every value a node reads is a graph input, an initializer or an earlier node's output.
    let mut defined: std::collections::HashSet<String> = graph
        .input
        .iter()
        .map(|i| i.name.clone().unwrap())
        .collect();
    defined.extend(graph.initializer.iter().map(|t| t.name.clone().unwrap()));
    for node in &graph.node {
        for input in &node.input {
            assert!(defined.contains(input), "{input} used before it is defined");
        }
        defined.extend(node.output.iter().cloned());
    }

    let manifest = Manifest::read(&bundle).unwrap();
    assert_eq!(manifest.name, src.0.file_name().unwrap().to_string_lossy());
    assert_eq!(manifest.embedding_dim, H);
    assert_eq!(manifest.license, None);
    let text = manifest.text.unwrap();
    assert_eq!((text.max_tokens, text.pooling.as_str()), (MAX_POS, "mean"));
    let source = text.source.unwrap();
    assert_eq!(source["model_type"], "bert");
    assert_eq!(source["num_hidden_layers"], 2);
    assert_eq!(source["head"], Value::Null);
    assert_eq!(manifest.files.len(), 2);
    assert_eq!(
        std::fs::read(bundle.join(TOKENIZER_FILE)).unwrap(),
        b"{\"model\": {}}"
    );
}

#[test]
fn reads_prefixed_checkpoints_and_other_poolings() {
    for (flag, expected) in [
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
    ] {
        let src = TempDir::new("prefixed");
        let out = TempDir::new("out");
        tiny_model(&src.0, "bert.", json!({}));
        let pooling = json!({"pooling_mode_mean_tokens": false, flag: true});
        std::fs::write(src.0.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
        let report = export_text(&options(&src.0, &out.0)).unwrap();
        assert_eq!(report.pooling, expected);
        assert_eq!(
            Manifest::read(&out.0).unwrap().text.unwrap().pooling,
            expected
        );
    }
}

#[test]
fn applies_a_head_and_keeps_an_existing_audio_section() {
    let src = TempDir::new("src");
    let out = TempDir::new("out");
    tiny_model(&src.0, "", json!({}));
    // A bundle that already holds a 4-dim audio encoder.
    std::fs::write(out.0.join("audio.onnx"), b"audio").unwrap();
    let mut existing = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        name: "my-bundle".into(),
        embedding_dim: 4,
        text: None,
        audio: Some(audiotext_core::model::manifest::AudioSection {
            onnx: "audio.onnx".into(),
            front_end: audiotext_core::audio::FrontEnd::panns_32k(),
            windowing: audiotext_core::audio::Windowing::ten_seconds(),
            input: audiotext_core::model::manifest::AudioInput {
                name: "log_mel".into(),
                layout: "batch,1,frames,mels".into(),
                waveform: None,
            },
            output: "embedding".into(),
            encoder: None,
            quantization: None,
        }),
        training: Some(json!({"epochs": 3})),
        license: Some("CC-BY-4.0".into()),
        files: Default::default(),
    };
    existing.write(&out.0).unwrap();

    // 8-dim text next to 4-dim audio is refused, and nothing is written.
    let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
    assert!(
        error.contains("audio") && error.contains("--head"),
        "{error}"
    );
    assert!(!out.0.join(TEXT_ONNX_FILE).exists());

    // A head projecting 8 -> 4 fits.
    let head = src.0.join("proj.safetensors");
    write_safetensors(
        &head,
        &[
            ("weight".into(), vec![4, H], values(4 * H, 5)),
            ("bias".into(), vec![4], values(4, 6)),
        ],
    );
    let mut opts = options(&src.0, &out.0);
    opts.head = Some(head);
    let report = export_text(&opts).unwrap();
    assert_eq!(report.embedding_dim, 4);
    assert_eq!(report.head, Some((H, 4)));
    assert!(report.kept_existing_manifest);
    let manifest = Manifest::read(&out.0).unwrap();
    assert_eq!(manifest.name, "my-bundle");
    assert_eq!(manifest.license.as_deref(), Some("CC-BY-4.0"));
    assert_eq!(manifest.audio, existing.audio);
    assert_eq!(manifest.training, existing.training);
    assert_eq!(manifest.embedding_dim, 4);
    let files: Vec<_> = manifest.files.keys().cloned().collect();
    assert_eq!(files, ["audio.onnx", "text.onnx", "tokenizer.json"]);
    let source = manifest.text.unwrap().source.unwrap();
    assert_eq!(
        source["head"],
        json!({"file": "proj.safetensors", "in": H, "out": 4, "bias": true})
    );
    let graph = ModelProto::from_bytes(&std::fs::read(out.0.join(TEXT_ONNX_FILE)).unwrap())
        .unwrap()
        .graph
        .unwrap();
    assert_eq!(tensor_dims(&graph.output[0]).1, ["batch", "4"]);

    // A head whose `in` is not the hidden size is refused.
    let bad = src.0.join("bad.safetensors");
    write_safetensors(
        &bad,
        &[("weight".into(), vec![4, H + 1], values(4 * (H + 1), 1))],
    );
    opts.head = Some(bad);
    let error = format!("{:#}", export_text(&opts).unwrap_err());
    assert!(error.contains("expected [out, 8]"), "{error}");
}

#[test]
fn a_text_centre_stays_with_its_network_and_goes_with_another() {
    let src = TempDir::new("src");
    let other = TempDir::new("other");
    let out = TempDir::new("out");
    tiny_model(&src.0, "", json!({}));
    tiny_model(&other.0, "", json!({"layer_norm_eps": 1e-6}));
    export_text(&options(&src.0, &out.0)).unwrap();
    let mut manifest = Manifest::read(&out.0).unwrap();
    let centre: Vec<f32> = (0..H).map(|i| 0.01 * i as f32).collect();
    manifest.text.as_mut().unwrap().centre = Some(centre.clone());
    manifest.write(&out.0).unwrap();

    // The same network again (what set-up does on a fresh clone): the centre is kept.
    export_text(&options(&src.0, &out.0)).unwrap();
    let again = Manifest::read(&out.0).unwrap();
    assert_eq!(again.text.unwrap().centre, Some(centre));

    // Another network: the centre was of the first one's space, and goes.
    export_text(&options(&other.0, &out.0)).unwrap();
    let replaced = Manifest::read(&out.0).unwrap();
    assert_eq!(replaced.text.unwrap().centre, None);
}

#[test]
fn refuses_unsupported_models_with_a_fix() {
    let cases = [
        // BERT weights under an MPNet config.
        (
            json!({"model_type": "mpnet"}),
            "no tensor encoder.relative_attention_bias.weight; its tensors are named like a \"bert\" checkpoint",
        ),
        (json!({"model_type": "roberta"}), "only BERT-family"),
        (json!({"model_type": "roberta"}), "and MPNet"),
        (json!({"hidden_act": "gelu_new"}), "hidden_act \"gelu_new\""),
        (
            json!({"position_embedding_type": "relative_key"}),
            "only \"absolute\"",
        ),
        (json!({"num_attention_heads": 3}), "not a multiple"),
    ];
    for (patch, message) in cases {
        let src = TempDir::new("bad");
        let out = TempDir::new("out");
        tiny_model(&src.0, "", patch);
        let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
        assert!(error.contains(message), "{error}");
    }

    let src = TempDir::new("missing");
    let out = TempDir::new("out");
    tiny_model(&src.0, "", json!({}));
    std::fs::remove_file(src.0.join("tokenizer.json")).unwrap();
    std::fs::remove_file(src.0.join("1_Pooling/config.json")).unwrap();
    let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
    assert!(
        error.contains("missing tokenizer.json, 1_Pooling/config.json"),
        "{error}"
    );

    let src = TempDir::new("pool");
    tiny_model(&src.0, "", json!({}));
    std::fs::write(
        src.0.join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#,
    )
    .unwrap();
    let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
    assert!(error.contains("exactly one of mean, cls or max"), "{error}");

    let src = TempDir::new("same");
    tiny_model(&src.0, "", json!({}));
    let error = format!("{:#}", export_text(&options(&src.0, &src.0)).unwrap_err());
    assert!(error.contains("is the source folder"), "{error}");
}

#[test]
fn recognises_lowercasing_tokenizers() {
    assert!(normalizer_lowercases(
        &json!({"type": "BertNormalizer", "lowercase": true})
    ));
    assert!(!normalizer_lowercases(
        &json!({"type": "BertNormalizer", "lowercase": false})
    ));
    assert!(normalizer_lowercases(
        &json!({"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]})
    ));
    assert!(!normalizer_lowercases(&Value::Null));
    assert_eq!(
        known_license("all-MiniLM-L6-v2").as_deref(),
        Some("Apache-2.0 (all-MiniLM-L6-v2, sentence-transformers)")
    );
    assert_eq!(
        known_license("sentence-transformers_all-mpnet-base-v2").as_deref(),
        Some("Apache-2.0 (all-mpnet-base-v2, sentence-transformers)")
    );
    assert_eq!(known_license("my-mpnet-base-v2"), None);
}

#[test]
fn relative_position_buckets_match_hand_computed_values() {
    // (key - query, bucket) for 32 buckets and max distance 128: keys before the query
    // (negative) use buckets 0..16, keys after it 16..32; distances 0..7 are exact, then
    // 8 + floor(8 * ln(d / 8) / ln(16)) up to 15.
    let expected = [
        (0, 0),
        (-1, 1),
        (-7, 7),
        (-8, 8),
        (-11, 8),
        (-12, 9),
        (-15, 9),
        (-16, 10),
        (-23, 11),
        (-32, 12),
        (-45, 12),
        (-46, 13),
        (-63, 13),
        (-64, 14),
        (-90, 14),
        (-91, 15),
        (-127, 15),
        (-128, 15),
        (-1000, 15),
        (1, 17),
        (7, 23),
        (8, 24),
        (16, 26),
        (64, 30),
        (127, 31),
        (513, 31),
    ];
    for (relative, bucket) in expected {
        assert_eq!(
            relative_position_bucket(relative, 32, MPNET_MAX_DISTANCE),
            bucket,
            "relative position {relative}"
        );
    }
    // PyTorch takes the log in f32; f64 gives the same buckets at every distance the
    // tables can hold, so the boundaries (16, 32, 64: exact powers) are not a matter of
    // rounding.
    for n in 8..4096i64 {
        let wide = 8 + ((n as f64 / 8.0).ln() / 16f64.ln() * 8.0) as i64;
        assert_eq!(
            relative_position_bucket(-n, 32, MPNET_MAX_DISTANCE),
            wide.min(15),
            "distance {n}"
        );
    }
    let table = relative_position_bucket_table(3, 32);
    assert_eq!(table, [0, 17, 18, 1, 0, 17, 2, 1, 0]);
}

#[test]
fn exports_a_tiny_mpnet_bundle() {
    for prefix in ["", "mpnet."] {
        let src = TempDir::new("mpnet");
        let out = TempDir::new("out");
        let params = tiny_mpnet(&src.0, prefix, json!({}));
        let report = export_text(&options(&src.0, &out.0)).unwrap();
        assert_eq!(report.model_type, "mpnet");
        assert_eq!(report.embedding_dim, H);
        assert_eq!(
            report.max_tokens,
            MAX_POS - 2,
            "max_seq_length 64 is capped at the {} positions after padding_idx",
            MAX_POS - 2
        );
        assert_eq!(
            report.parameters, params,
            "every tensor but the pooler is used"
        );

        let manifest = Manifest::read(&out.0).unwrap();
        let text = manifest.text.unwrap();
        assert_eq!(
            (text.max_tokens, text.pooling.as_str()),
            (MAX_POS - 2, "mean")
        );
        let source = text.source.unwrap();
        assert_eq!(source["model_type"], "mpnet");
        assert_eq!(source["relative_attention_num_buckets"], MPNET_BUCKETS);
        assert_eq!(source["relative_attention_max_distance"], 128);
        assert_eq!(source["padding_idx"], 1);

        let model =
            ModelProto::from_bytes(&std::fs::read(out.0.join(TEXT_ONNX_FILE)).unwrap()).unwrap();
        assert!(
            model
                .metadata_props
                .iter()
                .any(|p| p.key.as_deref() == Some("model_type")
                    && p.value.as_deref() == Some("mpnet"))
        );
        let graph = model.graph.unwrap();
        let count = |op: &str| {
            graph
                .node
                .iter()
                .filter(|n| n.op_type.as_deref() == Some(op))
                .count()
        };
        assert_eq!(count("LayerNormalization"), 1 + 2 * 2);
        assert_eq!(count("Softmax"), 2);
        assert_eq!(count("Erf"), 2);
        // Position ids once, the bias once for all layers.
        assert_eq!(count("CumSum"), 1);
        assert_eq!(count("Concat"), 1);
        let initializer = |name: &str| {
            graph
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no initializer {name}"))
        };
        let table = initializer("encoder.relative_position_buckets");
        let len = (MAX_POS - 2) as i64;
        assert_eq!(table.dims, [len, len]);
        let raw = table.raw_data.as_ref().unwrap();
        let buckets: Vec<i64> = raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(
            buckets,
            relative_position_bucket_table(MAX_POS - 2, MPNET_BUCKETS)
        );
        assert_eq!(
            initializer("encoder.relative_attention_bias.weight").dims,
            [MPNET_BUCKETS as i64, HEADS as i64]
        );
        assert!(graph.initializer.iter().all(|t| !t
            .name
            .as_deref()
            .unwrap_or("")
            .contains("token_type")));
        let mut defined: std::collections::HashSet<String> = graph
            .input
            .iter()
            .map(|i| i.name.clone().unwrap())
            .collect();
        defined.extend(graph.initializer.iter().map(|t| t.name.clone().unwrap()));
        for node in &graph.node {
            for input in &node.input {
                assert!(defined.contains(input), "{input} used before it is defined");
            }
            defined.extend(node.output.iter().cloned());
        }

        // The bundle's tokenizer is the folder's, and the extension's loader wraps text in
        // MPNet's <s> ... </s> and truncates at max_tokens.
        let tokenizer =
            audiotext_core::text::load_tokenizer(&out.0.join(TOKENIZER_FILE), report.max_tokens)
                .unwrap();
        let ids = tokenizer.encode("A dog barks", true).unwrap();
        assert_eq!(ids.get_ids(), [0, 4, 5, 6, 2]);
        let long = tokenizer.encode("dog ".repeat(40), true).unwrap();
        assert_eq!(long.get_ids().len(), MAX_POS - 2);
        assert_eq!(long.get_ids().last(), Some(&2));
    }
}

#[test]
fn refuses_unsupported_mpnet_shapes_with_a_fix() {
    let cases = [
        (
            json!({"pad_token_id": 0}),
            "pad_token_id 0 is not supported",
        ),
        (
            json!({"relative_attention_num_buckets": 2}),
            "relative_attention_num_buckets 2 is not supported",
        ),
        // The checkpoint has 32 buckets.
        (
            json!({"relative_attention_num_buckets": 16}),
            "relative_attention_bias.weight has shape [32, 2], expected [16, 2]",
        ),
        (json!({"max_position_embeddings": 2}), "leaves no position"),
        (
            json!({"max_position_embeddings": 18}),
            "position_embeddings.weight has shape [16, 8], expected [18, 8]",
        ),
        (json!({"num_attention_heads": 3}), "not a multiple"),
        (json!({"hidden_act": "gelu_new"}), "hidden_act \"gelu_new\""),
        (
            json!({"model_type": "bert"}),
            "named like a \"mpnet\" checkpoint",
        ),
    ];
    for (patch, message) in cases {
        let src = TempDir::new("bad-mpnet");
        let out = TempDir::new("out");
        tiny_mpnet(&src.0, "mpnet.", patch.clone());
        let error = format!("{:#}", export_text(&options(&src.0, &out.0)).unwrap_err());
        assert!(error.contains(message), "{patch}: {error}");
        assert!(
            error.contains("config.json") || error.contains("model.safetensors"),
            "{patch}: the error names the file: {error}"
        );
        assert!(!out.0.join(TEXT_ONNX_FILE).exists());
    }
    // A missing pad_token_id is HF's default 1.
    let src = TempDir::new("no-pad");
    let out = TempDir::new("out");
    tiny_mpnet(&src.0, "", json!({"pad_token_id": null}));
    export_text(&options(&src.0, &out.0)).unwrap();
}
