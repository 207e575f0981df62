//! Spec2Vec-style whole-spectrogram encoder: the log-mel of a fixed number of frames (shorter
//! inputs padded with silence, longer ones cropped to their start) goes through four strided
//! 3x3 convs (stride 2, + BatchNorm + ReLU; `w, 2w, 4w, 8w` channels), a fixed average pooling
//! over time (8 rows, fewer if the map is shorter), and a Linear layer over the flattened map.
//! Unlike the other encoders nothing is averaged over mels or pooled over all frames, so
//! where a sound sits in the window and in frequency stays in the features.
//! Output: `[batch, channels, 1]` (one "frame"; any pooling head then passes it through).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::AvgPool2d;
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use audiotext_onnx::{AttributeProto, GraphBuilder};

use super::blocks::{avg_pool, avg_pool_onnx, batch_norm, conv2d, conv2d_onnx, linear_onnx};

/// Rows averaged over time after the convs.
pub const TIME_POOL: usize = 8;

/// Output length of a 3x3 conv with stride 2 and padding 1.
fn halved(n: usize) -> usize {
    n.div_ceil(2)
}

#[derive(Module, Debug)]
pub struct Spec2Vec {
    pub convs: Vec<Conv2d>,
    pub bns: Vec<BatchNorm>,
    pub pool: AvgPool2d,
    pub fc: Linear,
    #[module(skip)]
    pub time_pool: usize,
}

impl Spec2Vec {
    /// Input `in_channels x frames x n_mels`; conv widths `channels`; output `out` features.
    pub fn new(
        in_channels: usize,
        frames: usize,
        n_mels: usize,
        channels: &[usize],
        out: usize,
        eps: f64,
        device: &Device,
    ) -> Spec2Vec {
        let (mut t, mut m, mut c_in) = (frames, n_mels, in_channels);
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        for &c in channels {
            convs.push(conv2d(c_in, c, 3, 2, device));
            bns.push(batch_norm(c, eps, device));
            (t, m, c_in) = (halved(t), halved(m), c);
        }
        let time_pool = TIME_POOL.min(t).max(1);
        let flat = c_in * (t / time_pool) * m;
        Spec2Vec {
            convs,
            bns,
            pool: avg_pool([time_pool, 1]),
            fc: LinearConfig::new(flat, out).init(device),
            time_pool,
        }
    }

    /// `[b, c_in, frames, m]` -> `[b, out, 1]`; the input must already be `frames` long.
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<3> {
        for (conv, bn) in self.convs.iter().zip(&self.bns) {
            x = relu(bn.forward(conv.forward(x)));
        }
        let x: Tensor<2> = self.pool.forward(x).flatten(1, 3);
        self.fc.forward(x).unsqueeze_dim(2)
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str) -> String {
        let mut x = x.to_string();
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            let y = conv2d_onnx(
                g,
                &format!("spec2vec.conv{}", i + 1),
                &x,
                conv,
                Some(bn),
                2,
                1,
            );
            x = g.node("Relu", &[&y], vec![]);
        }
        let x = avg_pool_onnx(g, &x, [self.time_pool, 1]);
        let x = g.node("Flatten", &[&x], vec![AttributeProto::int("axis", 1)]);
        let x = linear_onnx(g, "spec2vec.fc", &x, &self.fc);
        g.unsqueeze(&x, &[2])
    }
}

/// `[b, 1, t, m]` padded at the end with `silence` or cropped to exactly `frames` frames.
pub fn fit_frames(x: Tensor<4>, frames: usize, silence: f32) -> Tensor<4> {
    let [b, c, t, m] = x.dims();
    if t >= frames {
        return x.narrow(2, 0, frames);
    }
    let pad = Tensor::full([b, c, frames - t, m], silence, &x.device());
    Tensor::cat(vec![x, pad], 2)
}
