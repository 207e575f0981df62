//! The ONNX graph of a sentence-transformers text model.
//!
//! The ONNX graph reproduces `SentenceTransformer(folder).encode(texts, normalize_embeddings=True)`
//! on already tokenized input:
//!
//! - inputs `input_ids` and `attention_mask`, int64 `[batch, tokens]`;
//! - BERT (`model_type: "bert"`, e.g. all-MiniLM-L6-v2): word + token type 0 + position
//!   embeddings (token type ids are all zero and not an input; positions are `0..tokens`,
//!   `tokens <= max_position_embeddings`), LayerNorm, then per layer multi-head self-attention
//!   with an additive key mask, output dense + residual + LayerNorm, FFN with the exact (erf)
//!   GELU, residual + LayerNorm (post-LN, as in HF's `BertModel`);
//! - MPNet (`model_type: "mpnet"`, e.g. all-mpnet-base-v2, HF's `MPNetModel`): word + position
//!   embeddings (no token types), LayerNorm, then the same post-LN layers (weights named
//!   `attention.attn.{q,k,v,o}` and `attention.LayerNorm`) whose attention logits also get a
//!   relative position bias shared by all layers. Positions are those of HF's
//!   `create_position_ids_from_input_ids`: `padding_idx + 1 + (index among real tokens)`, with
//!   padding (and masked tokens) at `padding_idx` (1), so `tokens <= max_position_embeddings - 2`.
//!   The bias is `relative_attention_bias[bucket(j - i)]` with T5's bidirectional buckets
//!   ([`relative_position_bucket`], max distance 128). Buckets depend only on the sequence
//!   length, so the graph holds a precomputed bucket table for every length the position
//!   embeddings allow (`[max_position_embeddings - 2]^2` int64, 2 MB for all-mpnet-base-v2)
//!   and slices it to the batch's length: the same integers HF computes, exact by construction
//!   and simpler than rebuilding the bucketing from Range, Abs, Log, Cast and Where in the graph;
//! - pooling from `1_Pooling/config.json` (`mean`, `cls` or `max`) over the attention mask;
//! - an optional linear projection head (`--head`, PyTorch `nn.Linear` layout);
//! - L2 normalisation, `x / max(|x|, 1e-12)`;
//! - output `embedding`, float32 `[batch, embedding_dim]`.
//!
//! Only default-domain operators of opset 17 are used, so any ONNX Runtime build runs it.

use anyhow::{bail, Result};

use audiotext_onnx::{AttributeProto, DataType, Dim, GraphBuilder, ModelInfo, ModelProto};

use crate::weights::Weights;

use super::folder::*;

/// Opset of the default domain the exported graph imports (LayerNormalization needs 17).
pub const TEXT_OPSET: i64 = 17;
/// Value added to the attention logits of masked keys. exp() of it underflows to exactly 0 next
/// to any real logit, and a fully masked row still gives finite (uniform) weights, never NaN.
pub const MASK_NEG: f32 = -1e4;

/// HF's MPNet offsets positions by its padding index: real tokens start at `MPNET_PADDING_IDX
/// + 1`. `MPNetEmbeddings` hard-codes 1 whatever the config says.
pub const MPNET_PADDING_IDX: i64 = 1;
/// The distance from which all relative positions share MPNet's last bucket (hard-coded in HF's
/// `MPNetEncoder.relative_position_bucket`).
pub const MPNET_MAX_DISTANCE: i64 = 128;

/// MPNet's (T5's bidirectional) bucket of a relative position `key - query`, as HF's
/// `MPNetEncoder.relative_position_bucket`: half the buckets for keys after the query; in each
/// half, distances below `num_buckets / 4` have a bucket each, longer ones share
/// logarithmically wider buckets up to `max_distance`, beyond which all share the last one.
///
/// The logarithm is taken in f32 like PyTorch does; over every distance below 4096 it gives the
/// same buckets as f64 (checked in the tests), so the table is not sensitive to rounding.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: i64,
) -> i64 {
    let half = (num_buckets / 2) as i64;
    let n = -relative_position;
    let direction = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return direction + n;
    }
    let log_ratio =
        (n as f32 / max_exact as f32).ln() / ((max_distance as f64 / max_exact as f64).ln() as f32);
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as i64;
    direction + large.min(half - 1)
}

/// `table[i * len + j]` = the bucket of key `j` seen from query `i`, for `len` positions.
pub fn relative_position_bucket_table(len: usize, num_buckets: usize) -> Vec<i64> {
    let mut table = Vec::with_capacity(len * len);
    for query in 0..len as i64 {
        for key in 0..len as i64 {
            table.push(relative_position_bucket(
                key - query,
                num_buckets,
                MPNET_MAX_DISTANCE,
            ));
        }
    }
    table
}

/// Where one layer's attention weights are, under `encoder.layer.N.`.
struct LayerNames {
    query: &'static str,
    key: &'static str,
    value: &'static str,
    /// The attention's output projection.
    output: &'static str,
    /// The LayerNorm after the attention's residual.
    attention_norm: &'static str,
}

/// HF `BertLayer`.
const BERT_LAYER: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
};

/// HF `MPNetLayer`.
const MPNET_LAYER: LayerNames = LayerNames {
    query: "attention.attn.q",
    key: "attention.attn.k",
    value: "attention.attn.v",
    output: "attention.attn.o",
    attention_norm: "attention.LayerNorm",
};

/// Refuses a checkpoint whose tensors are not named as config.json's model_type says, naming
/// the architecture they do look like.
fn check_architecture_tensors(
    config: &EncoderConfig,
    weights: &Weights,
    prefix: &str,
    names: &LayerNames,
) -> Result<()> {
    let mut expected = Vec::new();
    if config.architecture == Architecture::MPNet {
        expected.push("encoder.relative_attention_bias.weight".to_string());
    }
    if config.num_layers > 0 {
        expected.push(format!("encoder.layer.0.{}.weight", names.query));
    }
    let Some(missing) = expected.iter().find(|name| !weights.contains(name)) else {
        return Ok(());
    };
    let looks_like = if weights.contains(&format!("encoder.layer.0.{}.weight", MPNET_LAYER.query)) {
        Some(Architecture::MPNet)
    } else if weights.contains(&format!("encoder.layer.0.{}.weight", BERT_LAYER.query)) {
        Some(Architecture::Bert)
    } else {
        None
    };
    let hint = match looks_like {
        Some(other) if other != config.architecture => format!(
            "; its tensors are named like a {:?} checkpoint: set model_type to {:?} in config.json if that is what it is",
            other.model_type(),
            other.model_type()
        ),
        _ => format!(
            "; is it a {:?} checkpoint? It holds e.g. {:?}",
            config.model_type,
            weights.names().into_iter().take(4).collect::<Vec<_>>()
        ),
    };
    bail!(
        "{}: config.json says model_type {:?} but there is no tensor {prefix}{missing}{hint}",
        weights.path().display(),
        config.model_type,
    )
}

/// `embeddings.position_embeddings.weight` as an initializer.
fn position_table(
    g: &mut GraphBuilder,
    config: &EncoderConfig,
    weights: &mut Weights,
) -> Result<String> {
    let h = config.hidden_size;
    let pos = weights.get(
        "embeddings.position_embeddings.weight",
        &[config.max_position_embeddings, h],
    )?;
    Ok(g.initializer_f32(
        "embeddings.position_embeddings.weight",
        &[config.max_position_embeddings as i64, h as i64],
        &pos.data,
    ))
}

/// `[tokens]`, the length of the batch, as a 1-d int64 (for Slice ends).
fn token_count(g: &mut GraphBuilder, input_ids: &str) -> String {
    g.node(
        "Shape",
        &[input_ids],
        vec![
            AttributeProto::int("start", 1),
            AttributeProto::int("end", 2),
        ],
    )
}

/// MPNet's position ids `[batch, tokens]`: HF's `create_position_ids_from_input_ids`,
/// `padding_idx + cumsum(real) * real`, where a real token is one that is not `<pad>` (as in
/// HF) and is attended to, so that a batch padded with another id, or on the left, still
/// numbers its real tokens from `padding_idx + 1`.
fn mpnet_position_ids(g: &mut GraphBuilder, input_ids: &str, attention_mask: &str) -> String {
    let padding_idx = g.initializer_i64("padding_idx", &[], &[MPNET_PADDING_IDX]);
    let is_pad = g.node("Equal", &[input_ids, &padding_idx], vec![]);
    let not_pad = g.node("Not", &[&is_pad], vec![]);
    let attended = g.node(
        "Cast",
        &[attention_mask],
        vec![AttributeProto::int("to", DataType::Bool as i64)],
    );
    let real = g.node("And", &[&not_pad, &attended], vec![]);
    let real = g.node(
        "Cast",
        &[&real],
        vec![AttributeProto::int("to", DataType::Int64 as i64)],
    );
    let token_axis = g.initializer_i64("token_axis", &[], &[1]);
    let count = g.node("CumSum", &[&real, &token_axis], vec![]);
    let count = g.node("Mul", &[&count, &real], vec![]);
    g.node("Add", &[&count, &padding_idx], vec![])
}

/// MPNet's relative position bias `[heads, tokens, tokens]`: the precomputed bucket table
/// sliced to the batch's length, looked up in `encoder.relative_attention_bias.weight`.
fn mpnet_position_bias(
    g: &mut GraphBuilder,
    config: &EncoderConfig,
    weights: &mut Weights,
    tokens: &str,
) -> Result<String> {
    let buckets = config.relative_attention_num_buckets;
    let heads = config.num_heads;
    let weight = weights.get("encoder.relative_attention_bias.weight", &[buckets, heads])?;
    let weight = g.initializer_f32(
        "encoder.relative_attention_bias.weight",
        &[buckets as i64, heads as i64],
        &weight.data,
    );
    let len = config.max_positions();
    let table = g.initializer_i64(
        "encoder.relative_position_buckets",
        &[len as i64, len as i64],
        &relative_position_bucket_table(len, buckets),
    );
    let starts = g.const_i64("bucket_starts", &[0, 0]);
    let ends = g.node(
        "Concat",
        &[tokens, tokens],
        vec![AttributeProto::int("axis", 0)],
    );
    let axes = g.const_i64("bucket_axes", &[0, 1]);
    let table = g.node("Slice", &[&table, &starts, &ends, &axes], vec![]);
    let bias = g.node(
        "Gather",
        &[&weight, &table],
        vec![AttributeProto::int("axis", 0)],
    );
    Ok(g.node(
        "Transpose",
        &[&bias],
        vec![AttributeProto::ints("perm", &[2, 0, 1])],
    ))
}

/// Builds the ONNX model; returns it with the number of checkpoint weights it uses. One
/// function, long: it reads top to bottom as the network does (embeddings, the layers,
/// pooling, head, normalisation), and each step's nodes sit next to the weights they use.
pub fn build_text_graph(
    config: &EncoderConfig,
    weights: &mut Weights,
    pooling: Pooling,
    head: Option<&Head>,
    doc: &str,
) -> Result<(ModelProto, u64)> {
    let h = config.hidden_size;
    let nh = config.num_heads;
    let dh = h / nh;
    let eps = config.layer_norm_eps;
    let embedding_dim = head.map_or(h, |hd| hd.out_features);

    let prefix = weights.detect_prefix("embeddings.word_embeddings.weight")?;
    let names = match config.architecture {
        Architecture::Bert => &BERT_LAYER,
        Architecture::MPNet => &MPNET_LAYER,
    };
    check_architecture_tensors(config, weights, &prefix, names)?;
    let mut g = GraphBuilder::new("text_encoder", TEXT_OPSET);
    let batch_tokens = [Dim::from("batch"), Dim::from("tokens")];
    let input_ids = g.input("input_ids", DataType::Int64, &batch_tokens);
    let attention_mask = g.input("attention_mask", DataType::Int64, &batch_tokens);

    // ---- embeddings: word (+ token type 0) + position, then LayerNorm (HF's order of sums).
    let word = weights.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
    let word = g.initializer_f32(
        "embeddings.word_embeddings.weight",
        &[config.vocab_size as i64, h as i64],
        &word.data,
    );
    let mut x = g.node(
        "Gather",
        &[&word, &input_ids],
        vec![AttributeProto::int("axis", 0)],
    );
    let tokens = match config.architecture {
        Architecture::Bert => {
            if config.type_vocab_size > 0
                && weights.contains("embeddings.token_type_embeddings.weight")
            {
                let tt = weights.get(
                    "embeddings.token_type_embeddings.weight",
                    &[config.type_vocab_size, h],
                )?;
                let tt0 = g.initializer_f32(
                    "embeddings.token_type_embeddings.row0",
                    &[h as i64],
                    &tt.data[..h],
                );
                x = g.node("Add", &[&x, &tt0], vec![]);
            }
            let pos = position_table(&mut g, config, weights)?;
            let tokens = token_count(&mut g, &input_ids);
            let zero = g.const_i64("zero", &[0]);
            let pos_rows = g.node("Slice", &[&pos, &zero, &tokens, &zero], vec![]);
            x = g.node("Add", &[&x, &pos_rows], vec![]);
            tokens
        }
        Architecture::MPNet => {
            let pos = position_table(&mut g, config, weights)?;
            let position_ids = mpnet_position_ids(&mut g, &input_ids, &attention_mask);
            let pos_rows = g.node(
                "Gather",
                &[&pos, &position_ids],
                vec![AttributeProto::int("axis", 0)],
            );
            x = g.node("Add", &[&x, &pos_rows], vec![]);
            token_count(&mut g, &input_ids)
        }
    };
    let ln_w = weights.get("embeddings.LayerNorm.weight", &[h])?;
    let ln_b = weights.get("embeddings.LayerNorm.bias", &[h])?;
    x = g.layer_norm("embeddings.LayerNorm", &x, &ln_w.data, &ln_b.data, eps);

    // ---- attention mask: 0 for real keys, MASK_NEG for padding; [batch, 1, 1, tokens].
    let mask_f = g.node(
        "Cast",
        &[&attention_mask],
        vec![AttributeProto::int("to", DataType::Float as i64)],
    );
    let one = g.scalar_f32("one", 1.0);
    let inverted = g.node("Sub", &[&one, &mask_f], vec![]);
    let neg = g.scalar_f32("mask_neg", MASK_NEG);
    let bias = g.node("Mul", &[&inverted, &neg], vec![]);
    let key_bias = g.unsqueeze(&bias, &[1, 2]);
    // What every layer adds to its attention logits: the key mask, plus for MPNet the
    // relative position bias, computed once as HF's MPNetEncoder does ([batch, heads, q, k]).
    let attention_bias = match config.architecture {
        Architecture::Bert => key_bias,
        Architecture::MPNet => {
            let position_bias = mpnet_position_bias(&mut g, config, weights, &tokens)?;
            g.node("Add", &[&position_bias, &key_bias], vec![])
        }
    };

    let heads_shape = g.const_i64("heads_shape", &[0, 0, nh as i64, dh as i64]);
    let hidden_shape = g.const_i64("hidden_shape", &[0, 0, h as i64]);
    let sqrt_dh = g.scalar_f32("sqrt_head_dim", (dh as f32).sqrt());
    let half = g.scalar_f32("half", 0.5);
    let sqrt2 = g.scalar_f32("sqrt2", std::f32::consts::SQRT_2);

    for layer in 0..config.num_layers {
        let p = format!("encoder.layer.{layer}.");
        let linear = |g: &mut GraphBuilder,
                      w: &mut Weights,
                      name: &str,
                      x: &str,
                      inf: usize,
                      outf: usize|
         -> Result<String> {
            let weight = w.get(&format!("{p}{name}.weight"), &[outf, inf])?;
            let bias = w.get(&format!("{p}{name}.bias"), &[outf])?;
            Ok(g.linear(
                &format!("{p}{name}"),
                x,
                &weight.data,
                Some(&bias.data),
                inf,
                outf,
            ))
        };
        // Self-attention: softmax(Q K^T / sqrt(d) + bias) V per head.
        let q = linear(&mut g, weights, names.query, &x, h, h)?;
        let k = linear(&mut g, weights, names.key, &x, h, h)?;
        let v = linear(&mut g, weights, names.value, &x, h, h)?;
        let q = g.node("Reshape", &[&q, &heads_shape], vec![]);
        let q = g.node(
            "Transpose",
            &[&q],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        );
        let k = g.node("Reshape", &[&k, &heads_shape], vec![]);
        let k = g.node(
            "Transpose",
            &[&k],
            vec![AttributeProto::ints("perm", &[0, 2, 3, 1])],
        );
        let v = g.node("Reshape", &[&v, &heads_shape], vec![]);
        let v = g.node(
            "Transpose",
            &[&v],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        );
        let scores = g.node("MatMul", &[&q, &k], vec![]);
        let scores = g.node("Div", &[&scores, &sqrt_dh], vec![]);
        let scores = g.node("Add", &[&scores, &attention_bias], vec![]);
        let probs = g.node("Softmax", &[&scores], vec![AttributeProto::int("axis", -1)]);
        let context = g.node("MatMul", &[&probs, &v], vec![]);
        let context = g.node(
            "Transpose",
            &[&context],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        );
        let context = g.node("Reshape", &[&context, &hidden_shape], vec![]);
        let attn = linear(&mut g, weights, names.output, &context, h, h)?;
        let attn = g.node("Add", &[&attn, &x], vec![]);
        let norm = names.attention_norm;
        let w = weights.get(&format!("{p}{norm}.weight"), &[h])?;
        let b = weights.get(&format!("{p}{norm}.bias"), &[h])?;
        let x1 = g.layer_norm(&format!("{p}{norm}"), &attn, &w.data, &b.data, eps);

        // Feed-forward: dense, GELU(x) = x * 0.5 * (1 + erf(x / sqrt 2)), dense.
        let inter = linear(
            &mut g,
            weights,
            "intermediate.dense",
            &x1,
            h,
            config.intermediate_size,
        )?;
        let scaled = g.node("Div", &[&inter, &sqrt2], vec![]);
        let erf = g.node("Erf", &[&scaled], vec![]);
        let erf1 = g.node("Add", &[&erf, &one], vec![]);
        let halfx = g.node("Mul", &[&inter, &half], vec![]);
        let gelu = g.node("Mul", &[&halfx, &erf1], vec![]);
        let out = linear(
            &mut g,
            weights,
            "output.dense",
            &gelu,
            config.intermediate_size,
            h,
        )?;
        let out = g.node("Add", &[&out, &x1], vec![]);
        let w = weights.get(&format!("{p}output.LayerNorm.weight"), &[h])?;
        let b = weights.get(&format!("{p}output.LayerNorm.bias"), &[h])?;
        x = g.layer_norm(&format!("{p}output.LayerNorm"), &out, &w.data, &b.data, eps);
    }

    // ---- pooling over the attention mask: [batch, tokens, hidden] -> [batch, hidden].
    let mask3 = g.unsqueeze(&mask_f, &[2]);
    let mut pooled = match pooling {
        Pooling::Mean => {
            let masked = g.node("Mul", &[&x, &mask3], vec![]);
            let sum = g.reduce("ReduceSum", &masked, &[1], false);
            let count = g.reduce("ReduceSum", &mask_f, &[1], true);
            // sentence-transformers clamps the token count at 1e-9.
            let min_count = g.scalar_f32("min_count", 1e-9);
            let count = g.node("Max", &[&count, &min_count], vec![]);
            g.node("Div", &[&sum, &count], vec![])
        }
        Pooling::Cls => {
            let index = g.initializer_i64("cls_index", &[], &[0]);
            g.node(
                "Gather",
                &[&x, &index],
                vec![AttributeProto::int("axis", 1)],
            )
        }
        Pooling::Max => {
            // Padding positions are replaced by -1e9 (as sentence-transformers does).
            let keep = g.node(
                "Cast",
                &[&mask3],
                vec![AttributeProto::int("to", DataType::Bool as i64)],
            );
            let floor = g.scalar_f32("max_pool_fill", -1e9);
            let filled = g.node("Where", &[&keep, &x, &floor], vec![]);
            g.reduce("ReduceMax", &filled, &[1], false)
        }
    };

    let mut parameters = weights.used_elements();
    if let Some(head) = head {
        pooled = g.linear(
            "head",
            &pooled,
            &head.weight,
            head.bias.as_deref(),
            head.in_features,
            head.out_features,
        );
        parameters += head.weight.len() as u64 + head.bias.as_ref().map_or(0, |b| b.len() as u64);
    }

    // ---- L2 normalisation: x / max(|x|, 1e-12) (torch.nn.functional.normalize).
    let norm = g.reduce("ReduceL2", &pooled, &[1], true);
    let min_norm = g.scalar_f32("min_norm", 1e-12);
    let norm = g.node("Max", &[&norm, &min_norm], vec![]);
    g.node_to("Div", &[&pooled, &norm], vec![], &["embedding"]);
    g.output(
        "embedding",
        DataType::Float,
        &[Dim::from("batch"), Dim::from(embedding_dim)],
    );

    let model = g.finish(ModelInfo {
        producer_name: "audiotext-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: Some(doc.to_string()),
        metadata: vec![
            ("model_type".into(), config.architecture.model_type().into()),
            ("pooling".into(), pooling.as_str().into()),
            ("embedding_dim".into(), embedding_dim.to_string()),
            ("normalized".into(), "true".into()),
        ],
    });
    Ok((model, parameters))
}
