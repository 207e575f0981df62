//! Float32 vector BLOBs (sqlite-vec's layout: little-endian f32, 4 bytes per dimension), parsed
//! without SQLite so the parser can be tested and fuzzed alone.

/// Why a BLOB is not a vector.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorBlobError {
    /// Empty, or not a multiple of 4 bytes.
    Length(usize),
    /// A NaN or an infinity, at this dimension (0-based): no embedding holds one, and one would
    /// make every similarity NaN.
    NonFinite { dimension: usize, value: f32 },
}

/// float32 little-endian, the layout sqlite-vec reads.
pub fn vector_to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The f32 values of a vector BLOB; every value is finite.
pub fn vector_from_blob(bytes: &[u8]) -> Result<Vec<f32>, VectorBlobError> {
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return Err(VectorBlobError::Length(bytes.len()));
    }
    let vector: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    match vector.iter().position(|x| !x.is_finite()) {
        Some(dimension) => Err(VectorBlobError::NonFinite {
            dimension,
            value: vector[dimension],
        }),
        None => Ok(vector),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_little_endian_and_refuses_bad_lengths_and_non_finite_values() {
        let blob: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(vector_from_blob(&blob), Ok(vec![1.5, -2.0]));
        assert_eq!(vector_from_blob(&[]), Err(VectorBlobError::Length(0)));
        assert_eq!(
            vector_from_blob(&blob[..7]),
            Err(VectorBlobError::Length(7))
        );
        let nan: Vec<u8> = [0.0f32, f32::INFINITY]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            vector_from_blob(&nan),
            Err(VectorBlobError::NonFinite {
                dimension: 1,
                value: f32::INFINITY
            })
        );
    }
}
