//! `manifest.json`: what a model bundle holds and how to feed it.
//!
//! A bundle is a folder. The manifest names every file in it with its sha256, so a bundle that
//! was copied badly or edited by hand fails loudly at load time instead of giving wrong vectors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::audio::{FrontEnd, Windowing};
use crate::{Error, Result};

/// The manifest format this build reads and writes.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside a bundle folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The whole `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// A human-readable name, e.g. `all-MiniLM-L6-v2`.
    pub name: String,
    /// Length of every embedding this bundle produces (text and audio alike).
    pub embedding_dim: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSection>,
    /// Where the weights came from, what they were trained on, and their metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// Licence of the weights (a model inherits the terms of its training data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// sha256 (lowercase hex) of every file of the bundle, by file name.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// How to run the text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSection {
    /// ONNX file: inputs `input_ids`, `attention_mask` (int64, [batch, tokens]); output
    /// `embedding` (float32, [batch, embedding_dim]), already L2-normalised.
    pub onnx: String,
    /// A Hugging Face `tokenizer.json`; its own padding and truncation settings are ignored.
    pub tokenizer: String,
    /// Inputs are truncated to this many tokens, special tokens included (sentence-transformers'
    /// `max_seq_length`).
    pub max_tokens: usize,
    /// Pooling over token states inside the ONNX graph: `mean`, `cls` or `max`.
    pub pooling: String,
    /// Name of the ONNX input holding token ids.
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    /// Name of the ONNX input holding the attention mask.
    #[serde(default = "default_attention_mask")]
    pub attention_mask: String,
    /// Name of the ONNX output holding the embedding.
    #[serde(default = "default_output")]
    pub output: String,
    /// Description of the source model (architecture, path, projection head), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
    /// A vector subtracted from every text embedding, which is then L2-normalised again
    /// (`embedding_dim` values, norm under 1, so the difference is never zero). It removes the
    /// direction all texts share, which otherwise favours clips that lie along it whatever the
    /// query says (hub clips); `fit-head --text-centre` computes it from the training captions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre: Option<Vec<f32>>,
}

/// How to run the audio encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioSection {
    /// ONNX file: input `input.name` (float32, layout `input.layout`, e.g. `batch,1,frames,mels`),
    /// output `output` (float32, [batch, embedding_dim]), already L2-normalised.
    pub onnx: String,
    /// Log-mel settings (librosa's names), flattened into this section.
    #[serde(flatten)]
    pub front_end: FrontEnd,
    /// Cutting long files into windows and pooling their embeddings.
    pub windowing: Windowing,
    pub input: AudioInput,
    #[serde(default = "default_output")]
    pub output: String,
    /// Description of the encoder (architecture, pooling head, parameters), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<serde_json::Value>,
    /// How `onnx` was quantized (scripts/quantize_audio.py: types, calibration, the float32
    /// twin's sha256), for people; absent for a float32 graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
}

/// The audio encoder's input tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioInput {
    /// Name of the log-mel input.
    pub name: String,
    /// Comma-separated axis names of the log-mel input: `batch,1,frames,mels` or
    /// `batch,frames,mels` (one channel), or `batch,frames,channels,mels` (any number of
    /// channels; `multiscale_win_lengths` adds channels).
    pub layout: String,
    /// Name of a second input that receives each window's resampled mono samples, float32
    /// `[batch, frames * hop_length]` (Wavegram-Logmel encoders): for a window starting at
    /// sample `s` whose log-mel has `frames` frames, `x[s .. s + frames * hop_length]`,
    /// zero-filled past the end of the file (and, for a window padded to the encoder's
    /// `min_frames`, zero-padded to the padded length). Absent: the encoder takes log-mel only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waveform: Option<String>,
}

fn default_input_ids() -> String {
    "input_ids".into()
}
fn default_attention_mask() -> String {
    "attention_mask".into()
}
fn default_output() -> String {
    "embedding".into()
}

impl Manifest {
    /// Reads `<bundle>/manifest.json`.
    pub fn read(bundle_dir: &Path) -> Result<Manifest> {
        let path = bundle_dir.join(MANIFEST_FILE);
        let bytes = read_manifest_bytes(&path).map_err(|e| {
            Error::Bundle(format!(
                "{e}; a bundle folder must contain {MANIFEST_FILE} (export one with `audiotext-train export-text`)"
            ))
        })?;
        Manifest::parse(&bytes, &path.display().to_string())
    }

    /// Parses a manifest's bytes; `origin` names it in messages (its path).
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::Bundle(format!("{origin} is not a valid manifest: {e}")))?;
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(Error::Bundle(format!(
                "{origin} has format_version {}, while this build reads format_version {MANIFEST_FORMAT_VERSION}; re-export the bundle with this version's audiotext-train",
                manifest.format_version
            )));
        }
        manifest
            .validate()
            .map_err(|e| Error::Bundle(format!("{origin} is not a valid manifest: {e}")))?;
        // A number beyond f32's range parses as infinity, and infinity writes back as null:
        // such a manifest would not survive being written again (found by fuzzing).
        let written = serde_json::to_vec(&manifest).map_err(|e| Error::Bundle(e.to_string()))?;
        if serde_json::from_slice::<Manifest>(&written).is_err() {
            return Err(Error::Bundle(format!(
                "{origin} is not a valid manifest: it holds a number beyond float32's range (about 3.4e38); fix that value"
            )));
        }
        Ok(manifest)
    }

    /// Values serde accepts but no model can have.
    pub fn validate(&self) -> std::result::Result<(), String> {
        const MAX_DIM: usize = 65536;
        if !(1..=MAX_DIM).contains(&self.embedding_dim) {
            return Err(format!(
                "embedding_dim is {}, outside 1 to {MAX_DIM}; set it to the length of the vectors the model outputs",
                self.embedding_dim
            ));
        }
        if let Some(text) = &self.text {
            if !(1..=MAX_TOKENS).contains(&text.max_tokens) {
                return Err(format!(
                    "text.max_tokens is {}, outside 1 to {MAX_TOKENS}; set it to the model's maximum sequence length (512 for BERT-like models)",
                    text.max_tokens
                ));
            }
            if let Some(centre) = &text.centre {
                validate_centre(centre, self.embedding_dim)?;
            }
        }
        Ok(())
    }

    /// Writes `manifest.json` into `bundle_dir` with the sha256 of every file it names; a file
    /// not there yet keeps the hash already recorded for it (an error if none is).
    pub fn write(&mut self, bundle_dir: &Path) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        if let Some(text) = &self.text {
            names.push(text.onnx.clone());
            names.push(text.tokenizer.clone());
        }
        if let Some(audio) = &self.audio {
            names.push(audio.onnx.clone());
        }
        names.sort();
        names.dedup();
        let recorded = std::mem::take(&mut self.files);
        for name in names {
            let path = bundle_dir.join(&name);
            // A file that set-up generates later (the default's audio.onnx, assembled from
            // pretrained weights) keeps its recorded hash; loading checks the file against it.
            let hash = match recorded.get(&name) {
                Some(hash) if !path.exists() => hash.clone(),
                _ => sha256_file(&path)?,
            };
            self.files.insert(name, hash);
        }
        let path = bundle_dir.join(MANIFEST_FILE);
        let mut json = serde_json::to_string_pretty(self).expect("manifest serialises");
        json.push('\n');
        std::fs::write(&path, json).map_err(|source| Error::Io { path, source })
    }
}

/// Longest text input a manifest may declare (BERT-like models take 512; 8192 leaves room).
const MAX_TOKENS: usize = 8192;

/// A manifest is a few kilobytes; more than this is not one, and is not read into memory.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// The manifest's bytes: a regular file only (a FIFO would block), and at most
/// `MAX_MANIFEST_BYTES`.
fn read_manifest_bytes(path: &Path) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let file = crate::regular_file::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!(
            "{} is over {} MB, far more than any manifest",
            path.display(),
            MAX_MANIFEST_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// sha256 of a file as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = crate::regular_file::open(path).map_err(Error::Bundle)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A text centre must fit the embeddings and leave every unit vector a non-zero difference.
pub fn validate_centre(centre: &[f32], embedding_dim: usize) -> std::result::Result<(), String> {
    if centre.len() != embedding_dim {
        return Err(format!(
            "text.centre has {} values but embedding_dim is {embedding_dim}; re-export the bundle, or delete text.centre",
            centre.len()
        ));
    }
    let norm = centre
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || norm >= MAX_CENTRE_NORM {
        return Err(format!(
            "text.centre has norm {norm}, which must be finite and under {MAX_CENTRE_NORM} (a unit embedding minus it could vanish); re-export the bundle with a smaller --text-centre, or delete text.centre"
        ));
    }
    Ok(())
}

/// Above this, `embedding - centre` of a unit embedding could come too close to zero to
/// normalise meaningfully (its norm is at least `1 - |centre|`).
pub const MAX_CENTRE_NORM: f64 = 0.9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_records_hashes() {
        let dir = std::env::temp_dir().join(format!("audiotext-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("text.onnx"), b"abc").unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
        let mut manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: "t".into(),
            embedding_dim: 4,
            text: Some(TextSection {
                onnx: "text.onnx".into(),
                tokenizer: "tokenizer.json".into(),
                max_tokens: 8,
                pooling: "mean".into(),
                input_ids: default_input_ids(),
                attention_mask: default_attention_mask(),
                output: default_output(),
                source: None,
                centre: None,
            }),
            audio: None,
            training: None,
            license: None,
            files: BTreeMap::new(),
        };
        manifest.write(&dir).unwrap();
        let read = Manifest::read(&dir).unwrap();
        assert_eq!(read, manifest);
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            read.files["text.onnx"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn committed_default_manifest_writes_back_byte_for_byte() {
        // Keys added to the audio section later (optional, skipped when unset) must leave the
        // manifests of existing bundles, and so their bytes and hashes, as they were.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join("models/default/manifest.json");
        let bytes = std::fs::read_to_string(&path).unwrap();
        let manifest: Manifest = serde_json::from_str(&bytes).unwrap();
        assert!(manifest.audio.is_some());
        let mut json = serde_json::to_string_pretty(&manifest).unwrap();
        json.push('\n');
        assert_eq!(json, bytes);
    }

    #[test]
    fn a_text_centre_must_fit_the_embeddings_and_stay_short() {
        assert!(validate_centre(&[0.3, 0.0, 0.4], 3).is_ok());
        let e = validate_centre(&[0.3, 0.4], 3).unwrap_err();
        assert!(
            e.contains("text.centre has 2 values but embedding_dim is 3"),
            "{e}"
        );
        let e = validate_centre(&[0.6, 0.8, 0.0], 3).unwrap_err();
        assert!(e.contains("norm 1") && e.contains("under 0.9"), "{e}");
        assert!(validate_centre(&[f32::NAN, 0.0, 0.0], 3).is_err());
        assert!(validate_centre(&[f32::INFINITY, 0.0, 0.0], 3).is_err());
        // Manifest::read refuses a bundle that carries a bad one.
        let input = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/default/manifest.json"
        ))
        .unwrap();
        let mut manifest = Manifest::parse(input.as_bytes(), "m").unwrap();
        manifest.text.as_mut().unwrap().centre = Some(vec![0.5; 3]);
        let broken = serde_json::to_string(&manifest).unwrap();
        let e = Manifest::parse(broken.as_bytes(), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("text.centre has 3 values"), "{e}");
    }

    #[test]
    fn numbers_beyond_f32_are_refused() {
        let input = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/default/manifest.json"
        ))
        .unwrap();
        let broken = input.replacen("\"fmin\": 0.0", "\"fmin\": 1e39", 1);
        assert_ne!(broken, input, "the default manifest has an fmin to break");
        let e = Manifest::parse(broken.as_bytes(), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("beyond float32's range"), "{e}");
        assert!(Manifest::parse(input.as_bytes(), "m").is_ok());
    }
}
