//! Pooling heads: a frame sequence `[batch, channels, frames]` becomes one vector per clip.
//!
//! - `mean`, `max`, `mean-max` (PANNs' `max + mean` over time);
//! - `lstm-last` / `lstm-mean`: a forward LSTM over the frames, its last state or the mean of
//!   its states;
//! - `netvlad` (Arandjelovic et al. 2016): soft assignment of each frame to `K` clusters,
//!   `a = softmax(W x_t + b)`; residuals to learned centroids summed per cluster,
//!   `V_k = sum_t a_tk (x_t - c_k)`; each `V_k` L2-normalised (intra-normalisation); the
//!   flattened `K * channels` vector L2-normalised;
//! - `netrvlad` (Miech et al. 2017): the same without centroids, `V_k = sum_t a_tk x_t`.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig, Lstm, LstmConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use audiotext_onnx::{AttributeProto, GraphBuilder};

use super::blocks::{l2_normalize_onnx, linear_onnx};
use super::rnn::lstm_onnx;
use crate::tensors::{to_vec, NORM_EPS};

/// Which pooling head (stored in the run config and the bundle manifest).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PoolingKind {
    Mean,
    Max,
    #[default]
    MeanMax,
    Lstm {
        hidden: usize,
        /// The last state (`true`) or the mean of all states.
        last: bool,
    },
    Netvlad {
        clusters: usize,
    },
    Netrvlad {
        clusters: usize,
    },
}

/// Names accepted by `--pooling`.
pub const POOLING_NAMES: &[&str] = &[
    "mean",
    "max",
    "mean-max",
    "lstm-last",
    "lstm-mean",
    "netvlad",
    "netrvlad",
];

impl PoolingKind {
    /// From a `--pooling` name; `size` is the LSTM's hidden size or the number of clusters.
    pub fn parse(name: &str, lstm_hidden: usize, clusters: usize) -> Result<PoolingKind, String> {
        Ok(match name {
            "mean" => PoolingKind::Mean,
            "max" => PoolingKind::Max,
            "mean-max" | "meanmax" => PoolingKind::MeanMax,
            "lstm-last" => PoolingKind::Lstm {
                hidden: lstm_hidden,
                last: true,
            },
            "lstm-mean" => PoolingKind::Lstm {
                hidden: lstm_hidden,
                last: false,
            },
            "netvlad" => PoolingKind::Netvlad { clusters },
            "netrvlad" => PoolingKind::Netrvlad { clusters },
            other => {
                return Err(format!(
                    "unknown pooling {other:?}; choose one of {}",
                    POOLING_NAMES.join(", ")
                ))
            }
        })
    }

    /// The `--pooling` name.
    pub fn name(&self) -> &'static str {
        match self {
            PoolingKind::Mean => "mean",
            PoolingKind::Max => "max",
            PoolingKind::MeanMax => "mean-max",
            PoolingKind::Lstm { last: true, .. } => "lstm-last",
            PoolingKind::Lstm { last: false, .. } => "lstm-mean",
            PoolingKind::Netvlad { .. } => "netvlad",
            PoolingKind::Netrvlad { .. } => "netrvlad",
        }
    }

    /// Length of the pooled vector for `channels`-wide frames.
    pub fn output_dim(&self, channels: usize) -> usize {
        match self {
            PoolingKind::Mean | PoolingKind::Max | PoolingKind::MeanMax => channels,
            PoolingKind::Lstm { hidden, .. } => *hidden,
            PoolingKind::Netvlad { clusters } | PoolingKind::Netrvlad { clusters } => {
                clusters * channels
            }
        }
    }

    /// One line for the manifest.
    pub fn describe(&self) -> String {
        match self {
            PoolingKind::Mean => "mean over time".into(),
            PoolingKind::Max => "max over time".into(),
            PoolingKind::MeanMax => "max + mean over time (PANNs)".into(),
            PoolingKind::Lstm { hidden, last } => format!(
                "LSTM ({hidden} hidden) over time, {}",
                if *last {
                    "last state"
                } else {
                    "mean of the states"
                }
            ),
            PoolingKind::Netvlad { clusters } => {
                format!("NetVLAD, {clusters} clusters, intra- and L2-normalised")
            }
            PoolingKind::Netrvlad { clusters } => {
                format!("NetRVLAD (no centroids), {clusters} clusters, intra- and L2-normalised")
            }
        }
    }

    pub fn init(&self, channels: usize, device: &Device) -> Pooling {
        let lstm = match self {
            PoolingKind::Lstm { hidden, .. } => {
                Some(LstmConfig::new(channels, *hidden, true).init(device))
            }
            _ => None,
        };
        let vlad = match self {
            PoolingKind::Netvlad { clusters } | PoolingKind::Netrvlad { clusters } => {
                let centroids = matches!(self, PoolingKind::Netvlad { .. }).then(|| {
                    let std = 1.0 / (channels as f64).sqrt();
                    Param::from_tensor(Tensor::random(
                        [*clusters, channels],
                        Distribution::Normal(0.0, std),
                        device,
                    ))
                });
                Some(NetVlad {
                    assign: LinearConfig::new(channels, *clusters).init(device),
                    centroids,
                })
            }
            _ => None,
        };
        Pooling {
            kind: self.clone(),
            lstm,
            vlad,
        }
    }
}

/// Soft-assignment layer and (NetVLAD only) centroids `[clusters, channels]`.
#[derive(Module, Debug)]
pub struct NetVlad {
    pub assign: Linear,
    pub centroids: Option<Param<Tensor<2>>>,
}

#[derive(Module, Debug)]
pub struct Pooling {
    #[module(skip)]
    pub kind: PoolingKind,
    pub lstm: Option<Lstm>,
    pub vlad: Option<NetVlad>,
}

/// `x / max(|x|, eps)` along `dim`.
fn normalize<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let norm = x.clone().square().sum_dim(dim).sqrt().clamp_min(NORM_EPS);
    x / norm
}

impl Pooling {
    /// `[b, c, t]` -> `[b, output_dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        match &self.kind {
            PoolingKind::Mean => x.mean_dim(2).squeeze_dim(2),
            PoolingKind::Max => x.max_dim(2).squeeze_dim(2),
            PoolingKind::MeanMax => (x.clone().max_dim(2) + x.mean_dim(2)).squeeze_dim(2),
            PoolingKind::Lstm { last, .. } => {
                let lstm = self.lstm.as_ref().expect("LSTM pooling has an LSTM");
                let (states, final_state) = lstm.forward(x.swap_dims(1, 2), None);
                if *last {
                    final_state.hidden
                } else {
                    states.mean_dim(1).squeeze_dim(1)
                }
            }
            PoolingKind::Netvlad { .. } | PoolingKind::Netrvlad { .. } => {
                let vlad = self.vlad.as_ref().expect("VLAD pooling has its layers");
                let [b, c, _] = x.dims();
                let frames = x.swap_dims(1, 2); // [b, t, c]
                let assign = softmax(vlad.assign.forward(frames.clone()), 2).swap_dims(1, 2);
                let mut v = assign.clone().matmul(frames); // [b, k, c]
                if let Some(centroids) = &vlad.centroids {
                    let mass = assign.sum_dim(2); // [b, k, 1]
                    v = v - mass * centroids.val().unsqueeze_dim(0);
                }
                let k = v.dims()[1];
                let v = normalize(v, 2).reshape([b, k * c]);
                normalize(v, 1)
            }
        }
    }

    /// ONNX of [`Pooling::forward`]; `x` is `[b, c, t]`.
    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str) -> String {
        match &self.kind {
            PoolingKind::Mean => g.reduce("ReduceMean", x, &[2], false),
            PoolingKind::Max => g.reduce("ReduceMax", x, &[2], false),
            PoolingKind::MeanMax => {
                let max = g.reduce("ReduceMax", x, &[2], false);
                let mean = g.reduce("ReduceMean", x, &[2], false);
                g.node("Add", &[&max, &mean], vec![])
            }
            PoolingKind::Lstm { last, .. } => {
                let lstm = self.lstm.as_ref().expect("LSTM pooling has an LSTM");
                let seq = g.node(
                    "Transpose",
                    &[x],
                    vec![AttributeProto::ints("perm", &[2, 0, 1])],
                );
                let (states, final_hidden) = lstm_onnx(g, "pooling.lstm", &seq, lstm);
                if *last {
                    g.squeeze(&final_hidden, &[0])
                } else {
                    g.reduce("ReduceMean", &states, &[0, 1], false)
                }
            }
            PoolingKind::Netvlad { .. } | PoolingKind::Netrvlad { .. } => {
                let vlad = self.vlad.as_ref().expect("VLAD pooling has its layers");
                let frames = g.node(
                    "Transpose",
                    &[x],
                    vec![AttributeProto::ints("perm", &[0, 2, 1])],
                );
                let logits = linear_onnx(g, "pooling.assign", &frames, &vlad.assign);
                let assign = g.node("Softmax", &[&logits], vec![AttributeProto::int("axis", 2)]);
                let assign = g.node(
                    "Transpose",
                    &[&assign],
                    vec![AttributeProto::ints("perm", &[0, 2, 1])],
                );
                let mut v = g.node("MatMul", &[&assign, &frames], vec![]);
                if let Some(centroids) = &vlad.centroids {
                    let dims = centroids.val().dims();
                    let c = g.initializer_f32(
                        "pooling.centroids",
                        &[dims[0] as i64, dims[1] as i64],
                        &to_vec(centroids.val()),
                    );
                    let mass = g.reduce("ReduceSum", &assign, &[2], true);
                    let shifted = g.node("Mul", &[&mass, &c], vec![]);
                    v = g.node("Sub", &[&v, &shifted], vec![]);
                }
                let v = l2_normalize_onnx(g, &v, 2);
                let shape = g.const_i64("vlad_flat", &[0, -1]);
                let v = g.node("Reshape", &[&v, &shape], vec![]);
                l2_normalize_onnx(g, &v, 1)
            }
        }
    }
}
