//! Compact codes of unit vectors, compared in place of the float32 vectors during the first pass.
//!
//! - `int8`: each unit vector scaled so its largest component is ±127 and rounded; the scale is
//!   kept beside the codes, so `cos(u, q) ≈ scale_u · scale_q · Σ c_i d_i`. A quarter of the
//!   float32 size, and an error in the cosine of about 1e-3 for 384 dimensions: the exact rescoring
//!   of a few hundred candidates recovers the true top 10.
//! - `binary`: the sign of each component, compared by Hamming distance: 1/32 of the size and
//!   a much coarser first pass, so many more candidates are rescored.

/// How an index codes its vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantizer {
    Int8,
    Binary,
}

/// Bytes of the int8 code's scale (an f32), stored before the codes.
pub const INT8_SCALE_BYTES: usize = 4;

impl Quantizer {
    pub const ALL: [Quantizer; 2] = [Quantizer::Int8, Quantizer::Binary];

    pub fn parse(name: &str) -> Option<Quantizer> {
        Quantizer::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            Quantizer::Int8 => "int8",
            Quantizer::Binary => "binary",
        }
    }

    /// Bytes of one vector's code.
    pub fn code_bytes(self, dimensions: usize) -> usize {
        match self {
            Quantizer::Int8 => INT8_SCALE_BYTES + dimensions,
            Quantizer::Binary => dimensions.div_ceil(8),
        }
    }

    /// Candidates rescored exactly when the index does not say: enough for recall@10 of 0.99 on
    /// a million vectors (see docs/vector-index.md for the measurements).
    pub fn default_rescore(self) -> usize {
        match self {
            Quantizer::Int8 => 200,
            Quantizer::Binary => 2000,
        }
    }

    /// Writes the code of `unit` (a unit vector) into `out`, `code_bytes` long.
    pub fn encode(self, unit: &[f32], out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.code_bytes(unit.len()));
        match self {
            Quantizer::Int8 => {
                let largest = unit.iter().fold(0f32, |m, x| m.max(x.abs()));
                let (scale, inverse) = if largest > 0.0 {
                    (largest / 127.0, 127.0 / largest)
                } else {
                    (0.0, 0.0)
                };
                out[..INT8_SCALE_BYTES].copy_from_slice(&scale.to_le_bytes());
                for (code, x) in out[INT8_SCALE_BYTES..].iter_mut().zip(unit) {
                    *code = ((x * inverse).round().clamp(-127.0, 127.0) as i8) as u8;
                }
            }
            Quantizer::Binary => {
                out.fill(0);
                for (i, x) in unit.iter().enumerate() {
                    if *x > 0.0 {
                        out[i / 8] |= 1 << (i % 8);
                    }
                }
            }
        }
    }
}

/// `vector / |vector|`, or `None` for a vector of norm 0, whose cosine with anything is undefined.
pub fn unit(vector: &[f32]) -> Option<Vec<f32>> {
    let norm = vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| {
        vector
            .iter()
            .map(|x| (f64::from(*x) / norm) as f32)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_code_approximates_the_cosine() {
        let a = unit(
            &(0..384)
                .map(|i| ((i * 7919) % 97) as f32 - 48.0)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let b = unit(
            &(0..384)
                .map(|i| ((i * 104729) % 89) as f32 - 44.0)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let (mut ca, mut cb) = (vec![0u8; 388], vec![0u8; 388]);
        Quantizer::Int8.encode(&a, &mut ca);
        Quantizer::Int8.encode(&b, &mut cb);
        let scale = |c: &[u8]| f32::from_le_bytes(c[..4].try_into().unwrap());
        let dot: i32 = ca[4..]
            .iter()
            .zip(&cb[4..])
            .map(|(x, y)| i32::from(*x as i8) * i32::from(*y as i8))
            .sum();
        let approx = scale(&ca) * scale(&cb) * dot as f32;
        assert!((approx - exact).abs() < 5e-3, "{approx} vs {exact}");
    }

    #[test]
    fn binary_code_is_the_sign() {
        let mut code = [0u8; 2];
        Quantizer::Binary.encode(&[0.5, -0.1, 0.0, 0.2, -0.3, 0.1, 0.1, -0.2, 0.9], &mut code);
        assert_eq!(code, [0b0110_1001, 0b1]);
    }

    #[test]
    fn zero_vector_has_no_unit() {
        assert!(unit(&[0.0, 0.0]).is_none());
        assert_eq!(unit(&[3.0, 4.0]).unwrap(), vec![0.6, 0.8]);
    }
}
