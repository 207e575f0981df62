//! ONNX `GRU` and `LSTM` nodes from burn's recurrent layers.
//!
//! burn keeps one `GateController` per gate, each an input `Linear` (`[in, hidden]`) and a
//! hidden `Linear` (`[hidden, hidden]`) with their biases. ONNX stacks the gates:
//! `W [dirs, gates * hidden, in]`, `R [dirs, gates * hidden, hidden]`,
//! `B [dirs, 2 * gates * hidden]` (all input biases, then all hidden biases), in the order
//! `z, r, h` for GRU and `i, o, f, c` for LSTM.
//!
//! burn's GRU applies the reset gate after the hidden transform
//! (`n = tanh(W_n x + b_Wn + r * (R_n h + b_Rn))`, `reset_after = true`), which is ONNX's
//! `linear_before_reset = 1` (and PyTorch's GRU).

use burn::nn::{BiGru, GateController, Lstm};

use audiotext_onnx::{AttributeProto, GraphBuilder};

use super::blocks::out_in;
use crate::tensors::to_vec;

/// Gate weights stacked in ONNX layout, for one direction: `(W, R, B)`.
fn stack(gates: &[&GateController]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut w = Vec::new();
    let mut r = Vec::new();
    let mut wb = Vec::new();
    let mut rb = Vec::new();
    for gate in gates {
        let hidden = gate.hidden_transform.weight.val().dims()[1];
        w.extend(out_in(&gate.input_transform));
        r.extend(out_in(&gate.hidden_transform));
        let bias = |l: &burn::nn::Linear| match &l.bias {
            Some(b) => to_vec(b.val()),
            None => vec![0.0; hidden],
        };
        wb.extend(bias(&gate.input_transform));
        rb.extend(bias(&gate.hidden_transform));
    }
    wb.extend(rb);
    (w, r, wb)
}

/// Adds the `W`, `R`, `B` initializers for several directions.
fn weights(
    g: &mut GraphBuilder,
    name: &str,
    dirs: &[(Vec<f32>, Vec<f32>, Vec<f32>)],
    gates: usize,
    input: usize,
    hidden: usize,
) -> (String, String, String) {
    let d = dirs.len() as i64;
    let (gh, i, h) = ((gates * hidden) as i64, input as i64, hidden as i64);
    let cat = |k: usize| -> Vec<f32> {
        dirs.iter()
            .flat_map(|t| match k {
                0 => t.0.clone(),
                1 => t.1.clone(),
                _ => t.2.clone(),
            })
            .collect()
    };
    (
        g.initializer_f32(&format!("{name}.W"), &[d, gh, i], &cat(0)),
        g.initializer_f32(&format!("{name}.R"), &[d, gh, h], &cat(1)),
        g.initializer_f32(&format!("{name}.B"), &[d, 2 * gh], &cat(2)),
    )
}

/// A bidirectional GRU over `x` `[seq, batch, in]`; returns `Y` `[seq, 2, batch, hidden]`.
pub fn bigru_onnx(g: &mut GraphBuilder, name: &str, x: &str, gru: &BiGru) -> String {
    let hidden = gru.d_hidden;
    let input = gru.forward.update_gate.input_transform.weight.val().dims()[0];
    let dirs: Vec<_> = [&gru.forward, &gru.reverse]
        .iter()
        .map(|d| stack(&[&d.update_gate, &d.reset_gate, &d.new_gate]))
        .collect();
    let (w, r, b) = weights(g, name, &dirs, 3, input, hidden);
    g.node_n(
        "GRU",
        &[x, &w, &r, &b],
        vec![
            AttributeProto::int("hidden_size", hidden as i64),
            AttributeProto::string("direction", "bidirectional"),
            AttributeProto::int("linear_before_reset", 1),
        ],
        1,
        name,
    )
    .remove(0)
}

/// A forward LSTM over `x` `[seq, batch, in]`; returns `(Y [seq, 1, batch, hidden],
/// Y_h [1, batch, hidden])`.
pub fn lstm_onnx(g: &mut GraphBuilder, name: &str, x: &str, lstm: &Lstm) -> (String, String) {
    let hidden = lstm.d_hidden;
    let input = lstm.input_gate.input_transform.weight.val().dims()[0];
    let forget = lstm
        .forget_gate
        .as_ref()
        .expect("the encoder's LSTM has its own forget gate");
    let dirs = [stack(&[
        &lstm.input_gate,
        &lstm.output_gate,
        forget,
        &lstm.cell_gate,
    ])];
    let (w, r, b) = weights(g, name, &dirs, 4, input, hidden);
    let mut outs = g.node_n(
        "LSTM",
        &[x, &w, &r, &b],
        vec![
            AttributeProto::int("hidden_size", hidden as i64),
            AttributeProto::string("direction", "forward"),
        ],
        2,
        name,
    );
    let y_h = outs.pop().expect("two outputs");
    (outs.pop().expect("two outputs"), y_h)
}
