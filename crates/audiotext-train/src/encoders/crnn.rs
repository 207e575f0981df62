//! CRNN (convolutional recurrent network; e.g. Xu et al. 2020 for audio captioning): a short
//! PANNs-style conv front (three blocks of two 3x3 convs, `w, 2w, 4w` channels, 2x2 pooling)
//! averaged over mels, then a bidirectional GRU over time. Output: the GRU's states
//! `[batch, 2 * hidden, frames / 8]`, forward direction first.

use burn::module::Module;
use burn::nn::{BiGru, BiGruConfig};
use burn::prelude::*;

use audiotext_onnx::{AttributeProto, GraphBuilder};

use super::blocks::ConvBlockShape;
use super::cnn::Cnn;
use super::rnn::bigru_onnx;

#[derive(Module, Debug)]
pub struct Crnn {
    pub cnn: Cnn,
    pub gru: BiGru,
}

impl Crnn {
    /// `channels`: the conv blocks' widths.
    pub fn new(
        in_channels: usize,
        channels: &[usize],
        hidden: usize,
        dropout: f64,
        eps: f64,
        device: &Device,
    ) -> Crnn {
        let mut c_in = in_channels;
        let shapes: Vec<ConvBlockShape> = channels
            .iter()
            .map(|&c| {
                let s = ConvBlockShape {
                    c_in,
                    c_out: c,
                    kernel: 3,
                    pool: 2,
                    max_pool: false,
                };
                c_in = c;
                s
            })
            .collect();
        Crnn {
            cnn: Cnn::new(&shapes, dropout, eps, device),
            gru: BiGruConfig::new(c_in, hidden, true)
                .with_batch_first(true)
                .with_reset_after(true)
                .init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let seq = self.cnn.forward(x).swap_dims(1, 2); // [b, t, c]
        let (out, _) = self.gru.forward(seq, None); // [b, t, 2h]
        out.swap_dims(1, 2)
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str) -> String {
        let seq = self.cnn.to_onnx(g, x); // [b, c, t]
        let seq = g.node(
            "Transpose",
            &[&seq],
            vec![AttributeProto::ints("perm", &[2, 0, 1])],
        );
        let y = bigru_onnx(g, "gru", &seq, &self.gru); // [t, 2, b, h]
                                                       // [t, 2, b, h] -> [b, t, 2, h] -> [b, t, 2h] (forward states first, as burn's BiGru).
        let y = g.node(
            "Transpose",
            &[&y],
            vec![AttributeProto::ints("perm", &[2, 0, 1, 3])],
        );
        let merged = g.const_i64("crnn_merge", &[0, 0, -1]);
        let y = g.node("Reshape", &[&y, &merged], vec![]);
        g.node(
            "Transpose",
            &[&y],
            vec![AttributeProto::ints("perm", &[0, 2, 1])],
        )
    }
}
