//! Small tensor helpers below both the encoders and the model built from them.

use burn::prelude::*;

/// Smallest norm divided by in L2 normalisation (as `torch.nn.functional.normalize`), the
/// exported graphs' too.
pub use audiotext_assemble::layers::NORM_EPS;

/// A tensor's values as a flat `Vec<f32>` (row-major).
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let data = t.into_data();
    match data.as_slice::<f32>() {
        Ok(s) => s.to_vec(),
        Err(_) => data
            .convert::<f32>()
            .as_slice::<f32>()
            .expect("f32 data")
            .to_vec(),
    }
}
