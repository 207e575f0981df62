//! Symmetric InfoNCE (CLIP's loss; Radford et al. 2021, van den Oord et al. 2018) with
//! soft targets for batches that hold several clips described alike.
//!
//! With audio embeddings `a` and text embeddings `t` (rows L2-normalised, row `i` of both from
//! clip `i`) and scale `s = 1/temperature`, the logits are `L = s * a t^T`. The loss is
//!
//! `(CE(L, Y) + CE(L^T, Y)) / 2`, with `CE(L, Y) = -mean_i sum_j Y_ij log softmax_j(L_i)`.
//!
//! `Y` is the identity when every clip's captions are its own (Clotho). When clips share their
//! captions (ESC-50's are written per class), treating a sibling as a negative would push apart
//! two clips the text cannot tell apart, so `Y_ij = [key_i == key_j] / #{k: key_k == key_i}`:
//! each row spreads its target over the clips with the same caption set. `Y` is symmetric, so
//! the same matrix serves both directions.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Row-normalised soft targets from per-item keys (equal keys are positives of each other).
pub fn soft_targets(keys: &[u64]) -> Vec<f32> {
    let n = keys.len();
    let mut y = vec![0f32; n * n];
    for i in 0..n {
        let count = keys.iter().filter(|&&k| k == keys[i]).count() as f32;
        for j in 0..n {
            if keys[j] == keys[i] {
                y[i * n + j] = 1.0 / count;
            }
        }
    }
    y
}

/// Symmetric InfoNCE; `scale` is `[1]`, `targets` is `[batch, batch]` (see [`soft_targets`]).
/// Returns a `[1]` tensor.
pub fn info_nce(
    audio: Tensor<2>,
    text: Tensor<2>,
    scale: Tensor<1>,
    targets: Tensor<2>,
) -> Tensor<1> {
    let logits = audio.matmul(text.transpose()) * scale.reshape([1, 1]);
    let a2t = cross_entropy(logits.clone(), targets.clone());
    let t2a = cross_entropy(logits.transpose(), targets);
    (a2t + t2a).div_scalar(2.0)
}

/// `-mean_i sum_j y_ij log softmax_j(logits_i)`.
fn cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    (log_softmax(logits, 1) * targets).sum_dim(1).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::to_vec;

    fn t2(values: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
    }

    fn scale(s: f32, device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(vec![s], [1]), device)
    }

    #[test]
    fn matches_hand_computed_values() {
        let d = Device::flex();
        let eye = t2(&[1.0, 0.0, 0.0, 1.0], 2, 2, &d);
        // Logits = I: each row is -log(e / (e + 1)) = ln(1 + e^-1).
        let loss = info_nce(eye.clone(), eye.clone(), scale(1.0, &d), eye.clone());
        assert!((to_vec(loss)[0] - 0.313_261_7).abs() < 1e-6);

        // a = I, t = [[0.6, 0.8], [0, 1]], s = 2: logits [[1.2, 0], [1.6, 2]].
        // a->t: (ln(e^1.2 + 1) - 1.2 + ln(e^1.6 + e^2) - 2) / 2 = 0.388149
        // t->a: (ln(e^1.2 + e^1.6) - 1.2 + ln(1 + e^2) - 2) / 2 = 0.519972
        let t = t2(&[0.6, 0.8, 0.0, 1.0], 2, 2, &d);
        let loss = info_nce(eye.clone(), t, scale(2.0, &d), eye);
        assert!((to_vec(loss)[0] - 0.454_060_2).abs() < 1e-6);
    }

    #[test]
    fn soft_targets_share_mass_between_equal_keys() {
        let y = soft_targets(&[7, 7, 3]);
        assert_eq!(y, vec![0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0]);
        // Identity embeddings, s = 1, keys [a, a, b]: rows 0 and 1 score
        // -(0.5 (1 - L) + 0.5 (0 - L)) with L = ln(e + 2); row 2 scores L - 1. Mean 0.884778.
        let d = Device::flex();
        let eye = t2(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], 3, 3, &d);
        let loss = info_nce(eye.clone(), eye, scale(1.0, &d), t2(&y, 3, 3, &d));
        assert!((to_vec(loss)[0] - 0.884_778).abs() < 1e-6);
    }
}
