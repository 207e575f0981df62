//! TCN (temporal convolutional network, Bai et al. 2018): mel bands are the channels of a 1-D
//! signal over frames; a stack of residual blocks, each two dilated `Conv1d` (+ BatchNorm,
//! ReLU, dropout) with a 1x1 conv on the skip path when the width changes. Dilations grow
//! (1, 2, 4, 8 by default) so the receptive field covers `1 + 2 (k - 1) sum(d)` frames.
//! Non-causal blocks pad `d (k - 1) / 2` on both sides; causal ones `d (k - 1)` on the left.
//! Output: `[batch, channels, frames]` (time is not downsampled).

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{BatchNorm, Dropout, DropoutConfig, PaddingConfig1d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use audiotext_onnx::{AttributeProto, GraphBuilder};

use super::blocks::{batch_norm, conv1d_onnx};

#[derive(Module, Debug)]
pub struct TcnBlock {
    pub conv1: Conv1d,
    pub bn1: BatchNorm,
    pub conv2: Conv1d,
    pub bn2: BatchNorm,
    pub skip: Option<Conv1d>,
    pub dropout: Dropout,
    #[module(skip)]
    pub pads: (usize, usize),
    #[module(skip)]
    pub dilation: usize,
}

impl TcnBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        dilation: usize,
        causal: bool,
        dropout: f64,
        eps: f64,
        device: &Device,
    ) -> TcnBlock {
        let reach = dilation * (kernel - 1);
        let pads = if causal {
            (reach, 0)
        } else {
            (reach / 2, reach - reach / 2)
        };
        let conv = |a, b| {
            Conv1dConfig::new(a, b, kernel)
                .with_dilation(dilation)
                .with_padding(PaddingConfig1d::Explicit(pads.0, pads.1))
                .with_bias(false)
                .init(device)
        };
        TcnBlock {
            conv1: conv(c_in, c_out),
            bn1: batch_norm(c_out, eps, device),
            conv2: conv(c_out, c_out),
            bn2: batch_norm(c_out, eps, device),
            skip: (c_in != c_out).then(|| Conv1dConfig::new(c_in, c_out, 1).init(device)),
            dropout: DropoutConfig::new(dropout).init(),
            pads,
            dilation,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = self
            .dropout
            .forward(relu(self.bn1.forward(self.conv1.forward(x.clone()))));
        let y = self.bn2.forward(self.conv2.forward(y));
        let s = match &self.skip {
            Some(c) => c.forward(x),
            None => x,
        };
        relu(y + s)
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, name: &str, x: &str) -> String {
        let (pads, d) = (self.pads, self.dilation);
        let y = conv1d_onnx(
            g,
            &format!("{name}.conv1"),
            x,
            &self.conv1,
            Some(&self.bn1),
            pads,
            d,
        );
        let y = g.node("Relu", &[&y], vec![]);
        let y = conv1d_onnx(
            g,
            &format!("{name}.conv2"),
            &y,
            &self.conv2,
            Some(&self.bn2),
            pads,
            d,
        );
        let s = match &self.skip {
            Some(c) => conv1d_onnx(g, &format!("{name}.skip"), x, c, None, (0, 0), 1),
            None => x.to_string(),
        };
        let sum = g.node("Add", &[&y, &s], vec![]);
        g.node("Relu", &[&sum], vec![])
    }
}

#[derive(Module, Debug)]
pub struct Tcn {
    pub blocks: Vec<TcnBlock>,
}

impl Tcn {
    /// One block per `(channels[i], dilations[i])`.
    #[allow(clippy::too_many_arguments)]
    /// `inputs`: input channels times mel bands.
    pub fn new(
        inputs: usize,
        channels: &[usize],
        dilations: &[usize],
        kernel: usize,
        causal: bool,
        dropout: f64,
        eps: f64,
        device: &Device,
    ) -> Tcn {
        assert_eq!(
            channels.len(),
            dilations.len(),
            "one dilation per TCN block"
        );
        let mut c_in = inputs;
        let blocks = channels
            .iter()
            .zip(dilations)
            .map(|(&c, &d)| {
                let b = TcnBlock::new(c_in, c, kernel, d, causal, dropout, eps, device);
                c_in = c;
                b
            })
            .collect();
        Tcn { blocks }
    }

    /// `[b, c_in, t, m]` -> `[b, c, t]`: every (channel, mel band) is one input channel.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, _, t, _] = x.dims();
        let x: Tensor<3> = x.swap_dims(1, 2).reshape([b as i32, t as i32, -1]);
        let mut x = x.swap_dims(1, 2); // [b, c_in * m, t]
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }

    pub fn to_onnx(&self, g: &mut GraphBuilder, x: &str) -> String {
        let x = g.node(
            "Transpose",
            &[x],
            vec![AttributeProto::ints("perm", &[0, 2, 1, 3])],
        );
        let shape = g.const_i64("tcn.flat_shape", &[0, 0, -1]);
        let x = g.node("Reshape", &[&x, &shape], vec![]);
        let mut x = g.node(
            "Transpose",
            &[&x],
            vec![AttributeProto::ints("perm", &[0, 2, 1])],
        );
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.to_onnx(g, &format!("tcn{}", i + 1), &x);
        }
        x
    }
}
