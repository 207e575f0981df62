//! Reading weights from `.safetensors` files as float32, whatever float type they are stored in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

/// A float tensor converted to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The tensors of one safetensors file, read on demand.
///
/// Keys are looked up under an optional prefix (checkpoints saved from `BertForX` classes name
/// everything `bert.…`). Every tensor read is counted, so exporters can report how many
/// parameters they used.
pub struct Weights {
    path: PathBuf,
    bytes: Vec<u8>,
    prefix: String,
    used: BTreeSet<String>,
    used_elements: u64,
}

impl Weights {
    /// Reads a whole safetensors file and checks its header.
    pub fn open(path: &Path) -> Result<Weights> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        Ok(Weights {
            path: path.to_path_buf(),
            bytes,
            prefix: String::new(),
            used: BTreeSet::new(),
            used_elements: 0,
        })
    }

    /// The file these weights come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("header checked in Weights::open")
    }

    /// All tensor names in the file (without any prefix stripped).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tensors()
            .names()
            .into_iter()
            .map(String::from)
            .collect();
        names.sort();
        names
    }

    /// Finds the key ending in `anchor` and uses what precedes it as the prefix of every later
    /// lookup; returns that prefix.
    pub fn detect_prefix(&mut self, anchor: &str) -> Result<String> {
        let mut candidates: Vec<String> = self
            .names()
            .into_iter()
            .filter(|name| {
                name.ends_with(anchor)
                    && (name.len() == anchor.len()
                        || name[..name.len() - anchor.len()].ends_with('.'))
            })
            .map(|name| name[..name.len() - anchor.len()].to_string())
            .collect();
        candidates.sort_by_key(|p| p.len());
        match candidates.first() {
            Some(prefix) => {
                self.prefix = prefix.clone();
                Ok(prefix.clone())
            }
            None => bail!(
                "{} has no tensor named {anchor} (with or without a prefix such as `bert.`); is it a checkpoint of the expected architecture?",
                self.path.display()
            ),
        }
    }

    /// Whether `name` (under the prefix) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors()
            .tensor(&format!("{}{name}", self.prefix))
            .is_ok()
    }

    /// Reads `name` (under the prefix) as f32 and checks its shape.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.get_any(name)?;
        if tensor.shape != shape {
            bail!(
                "{}: tensor {}{name} has shape {:?}, expected {:?} from the model's config",
                self.path.display(),
                self.prefix,
                tensor.shape,
                shape
            );
        }
        Ok(tensor)
    }

    /// Reads `name` (under the prefix) as f32, whatever its shape.
    pub fn get_any(&mut self, name: &str) -> Result<Tensor> {
        let key = format!("{}{name}", self.prefix);
        let tensor = {
            let tensors = self.tensors();
            let view = tensors.tensor(&key).map_err(|_| {
                anyhow::anyhow!("{} has no tensor named {key}", self.path.display())
            })?;
            let data = to_f32(view.dtype(), view.data())
                .with_context(|| format!("{}: tensor {key}", self.path.display()))?;
            Tensor {
                shape: view.shape().to_vec(),
                data,
            }
        };
        if self.used.insert(key) {
            self.used_elements += tensor.data.len() as u64;
        }
        Ok(tensor)
    }

    /// Number of values of the distinct tensors read so far.
    pub fn used_elements(&self) -> u64 {
        self.used_elements
    }
}

/// Converts little-endian F32/F16/BF16/F64 bytes to f32.
pub fn to_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => bail!("dtype {other:?} is not a float type; only F32, F16, BF16 and F64 weights can be exported"),
    })
}

/// IEEE 754 half precision to single precision (exact: every f16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exponent = ((h >> 10) & 0x1f) as u32;
    let fraction = (h & 0x3ff) as u32;
    match exponent {
        // Zero and subnormals: fraction * 2^-24.
        0 => sign * fraction as f32 * (1.0 / 16_777_216.0),
        0x1f => {
            if fraction == 0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => {
            let bits =
                ((h as u32 & 0x8000) << 16) | ((exponent + 127 - 15) << 23) | (fraction << 13);
            f32::from_bits(bits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        // bfloat16 is the high half of an f32.
        let bf = to_f32(Dtype::BF16, &[0x80, 0x3f, 0x40, 0xc0]).unwrap();
        assert_eq!(bf, [1.0, -3.0]);
        assert!(to_f32(Dtype::I64, &[0; 8]).is_err());
    }

    #[test]
    fn reads_prefixed_tensors_and_checks_shapes() {
        let dir = std::env::temp_dir().join(format!("audiotext-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let a: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = [0x3c00u16, 0x4000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let views = vec![
            (
                "bert.x.weight",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 2], &a).unwrap(),
            ),
            (
                "bert.y",
                safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &b).unwrap(),
            ),
        ];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();

        let mut w = Weights::open(&path).unwrap();
        assert_eq!(w.detect_prefix("x.weight").unwrap(), "bert.");
        assert_eq!(
            w.get("x.weight", &[2, 2]).unwrap().data,
            [1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(w.get("y", &[2]).unwrap().data, [1.0, 2.0]);
        assert!(w
            .get("y", &[3])
            .unwrap_err()
            .to_string()
            .contains("expected [3]"));
        assert!(w.get("z", &[1]).is_err());
        assert_eq!(w.used_elements(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
