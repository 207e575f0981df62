//! On-disk caches of the trainer: log-mel features per clip and caption embeddings per text
//! encoder, so that a second run (or `eval` after `fit`) decodes nothing and runs no text model.
//!
//! - Features: one file per clip, `features/<key>.bin`, where the key is the sha256 of the
//!   clip's canonical path, size and modification time and of the front-end settings (as JSON).
//!   Editing a file or changing any front-end setting misses the cache.
//! - Caption embeddings: one file per text encoder, `text/<key>.bin`, where the key is the
//!   sha256 of the text section's file hashes (text.onnx, tokenizer.json) and its settings; it
//!   maps caption text to its embedding.
//!
//! Writes go to a temporary file renamed into place, so a killed run never leaves a torn entry.
//! A file that does not parse is treated as missing and rewritten.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use audiotext_core::audio::FrontEnd;
use audiotext_core::model::manifest::Manifest;

/// Bumped when the meaning of a cached feature changes without its key changing.
const FEATURE_FORMAT: &[u8; 8] = b"ATFEAT02";
const TEXT_FORMAT: &[u8; 8] = b"ATTEXT01";

/// A log-mel spectrogram, row-major `frames x n_mels` (`n_mels`: values per frame, every
/// channel's bands for a multiscale front end), and for encoders that also read the signal,
/// its samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Features {
    /// Length of the signal in samples at the front-end's rate (0 when unknown).
    pub samples: usize,
    pub frames: usize,
    pub n_mels: usize,
    pub data: Vec<f32>,
    /// Empty, or the signal as a waveform encoder receives it: `frames * hop_length` samples,
    /// frame `t` owning `t * hop..(t + 1) * hop`, zeros past the end of the file (see the
    /// manifest's `input.waveform`). Never cached: decoded again when a run needs it.
    pub waveform: Vec<f32>,
}

impl Features {
    /// Rows `start..start + frames` (clamped to the clip), with their samples; `samples`
    /// becomes unknown (0).
    pub fn crop(&self, start: usize, frames: usize) -> Features {
        let start = start.min(self.frames);
        let end = (start + frames).min(self.frames);
        let hop = self.hop();
        Features {
            samples: 0,
            frames: end - start,
            n_mels: self.n_mels,
            data: self.data[start * self.n_mels..end * self.n_mels].to_vec(),
            waveform: self
                .waveform
                .get(start * hop..end * hop)
                .unwrap_or(&[])
                .to_vec(),
        }
    }

    /// Samples per frame of `waveform` (0 without one).
    pub fn hop(&self) -> usize {
        if self.frames == 0 {
            0
        } else {
            self.waveform.len() / self.frames
        }
    }

    /// Attaches the signal `samples` (at the front-end's rate) as `waveform`, zero-filled or
    /// cut to `frames * hop_length`.
    pub fn with_waveform(mut self, samples: &[f32], hop_length: usize) -> Features {
        let n = self.frames * hop_length;
        self.waveform = samples[..n.min(samples.len())].to_vec();
        self.waveform.resize(n, 0.0);
        self
    }
}

/// The default cache folder: `$AUDIOTEXT_CACHE`, else `$XDG_CACHE_HOME/audiotext-train`, else
/// `~/.cache/audiotext-train`, else `.cache/audiotext-train` in the working folder.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUDIOTEXT_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("audiotext-train");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache").join("audiotext-train");
    }
    PathBuf::from(".cache").join("audiotext-train")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create cache folder {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.{:?}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        std::thread::current().id()
    ));
    {
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Log-mel features cached per clip and front-end.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    /// A cache under `<root>/features`; `None` disables caching (every lookup misses, nothing is
    /// written).
    pub fn new(root: Option<&Path>) -> FeatureCache {
        FeatureCache {
            dir: root.map(|r| r.join("features")).unwrap_or_default(),
        }
    }

    fn enabled(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    /// The key of a clip under a front-end.
    pub fn key(path: &Path, front_end: &FrontEnd) -> Result<String> {
        let canonical = path
            .canonicalize()
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = std::fs::metadata(&canonical)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0));
        let mut h = Sha256::new();
        h.update(FEATURE_FORMAT);
        h.update(canonical.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.len().to_le_bytes());
        h.update(modified.0.to_le_bytes());
        h.update(modified.1.to_le_bytes());
        h.update(serde_json::to_vec(front_end).expect("front-end serialises"));
        Ok(hex(&h.finalize()))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.bin"))
    }

    /// The cached features for `key`, if present and intact.
    pub fn load(&self, key: &str) -> Option<Features> {
        if !self.enabled() {
            return None;
        }
        let bytes = std::fs::read(self.path(key)).ok()?;
        decode_features(&bytes)
    }

    pub fn store(&self, key: &str, features: &Features) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        write_atomic(&self.path(key), &encode_features(features))
    }

    /// The features of `path`, computed by `compute` and stored on a miss. Returns whether it
    /// was a hit.
    pub fn get_or_compute(
        &self,
        path: &Path,
        front_end: &FrontEnd,
        compute: impl FnOnce(&Path) -> Result<Features>,
    ) -> Result<(Features, bool)> {
        let key = Self::key(path, front_end)?;
        // Values per frame: every channel's mel bands (multiscale front ends have several).
        let row = front_end.n_mels * front_end.channels();
        if let Some(features) = self.load(&key) {
            if features.n_mels == row {
                return Ok((features, true));
            }
        }
        let features = compute(path)?;
        if features.n_mels != row || features.data.len() != features.frames * features.n_mels {
            bail!(
                "{}: the front-end returned {} x {} features with {} values, while {} mel bands x {} channels were asked for",
                path.display(),
                features.frames,
                features.n_mels,
                features.data.len(),
                front_end.n_mels,
                front_end.channels()
            );
        }
        self.store(&key, &features)?;
        Ok((features, false))
    }
}

fn encode_features(f: &Features) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + f.data.len() * 4);
    out.extend_from_slice(FEATURE_FORMAT);
    out.extend_from_slice(&(f.samples as u64).to_le_bytes());
    out.extend_from_slice(&(f.frames as u32).to_le_bytes());
    out.extend_from_slice(&(f.n_mels as u32).to_le_bytes());
    for v in &f.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode_features(bytes: &[u8]) -> Option<Features> {
    if bytes.len() < 24 || &bytes[..8] != FEATURE_FORMAT {
        return None;
    }
    let samples = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
    let frames = u32::from_le_bytes(bytes[16..20].try_into().ok()?) as usize;
    let n_mels = u32::from_le_bytes(bytes[20..24].try_into().ok()?) as usize;
    let body = &bytes[24..];
    if body.len() != frames * n_mels * 4 {
        return None;
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some(Features {
        samples,
        frames,
        n_mels,
        data,
        waveform: Vec::new(),
    })
}

/// The key of a bundle's text encoder: what its embeddings depend on.
pub fn text_encoder_key(manifest: &Manifest) -> Result<String> {
    let Some(text) = &manifest.text else {
        bail!("the bundle {:?} has no text section", manifest.name);
    };
    let mut h = Sha256::new();
    h.update(TEXT_FORMAT);
    for file in [&text.onnx, &text.tokenizer] {
        let sha = manifest
            .files
            .get(file)
            .with_context(|| format!("the manifest records no sha256 for {file}"))?;
        h.update(sha.as_bytes());
        h.update([0]);
    }
    h.update((text.max_tokens as u64).to_le_bytes());
    h.update(text.pooling.as_bytes());
    h.update((manifest.embedding_dim as u64).to_le_bytes());
    Ok(hex(&h.finalize()))
}

/// Caption embeddings of one text encoder, keyed by caption text.
#[derive(Debug)]
pub struct EmbeddingCache {
    path: Option<PathBuf>,
    pub dim: usize,
    pub entries: HashMap<String, Vec<f32>>,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache of the encoder with `key` under `<root>/text`; `None`
    /// keeps it in memory only.
    pub fn open(root: Option<&Path>, key: &str, dim: usize) -> EmbeddingCache {
        let path = root.map(|r| {
            r.join("text")
                .join(format!("{}.bin", &key[..32.min(key.len())]))
        });
        let entries = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| decode_embeddings(&bytes, dim))
            .unwrap_or_default();
        EmbeddingCache { path, dim, entries }
    }

    /// Texts of `texts` not in the cache yet (each once, in first-seen order).
    pub fn missing<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut seen = std::collections::HashSet::new();
        texts
            .into_iter()
            .filter(|t| !self.entries.contains_key(*t) && seen.insert(*t))
            .collect()
    }

    pub fn insert(&mut self, text: &str, embedding: Vec<f32>) {
        assert_eq!(
            embedding.len(),
            self.dim,
            "embedding of {text:?} has the wrong length"
        );
        self.entries.insert(text.to_string(), embedding);
    }

    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.entries.get(text).map(Vec::as_slice)
    }

    /// Writes the whole cache (a no-op for an in-memory cache).
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut keys: Vec<&String> = self.entries.keys().collect();
        keys.sort();
        let mut out = Vec::new();
        out.extend_from_slice(TEXT_FORMAT);
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        for key in keys {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            for v in &self.entries[key] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        write_atomic(path, &out)
    }
}

fn decode_embeddings(bytes: &[u8], dim: usize) -> Option<HashMap<String, Vec<f32>>> {
    if bytes.len() < 12 || &bytes[..8] != TEXT_FORMAT {
        return None;
    }
    if u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize != dim {
        return None;
    }
    let mut entries = HashMap::new();
    let mut at = 12;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let text = std::str::from_utf8(bytes.get(at..at + len)?)
            .ok()?
            .to_string();
        at += len;
        let body = bytes.get(at..at + dim * 4)?;
        at += dim * 4;
        entries.insert(
            text,
            body.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        );
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("audiotext-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn features_are_cached_by_file_and_front_end() {
        let dir = temp("features");
        let clip = dir.join("clip.wav");
        std::fs::write(&clip, b"12345").unwrap();
        let cache = FeatureCache::new(Some(&dir.join("cache")));
        let mut fe = FrontEnd::panns_32k();
        fe.n_mels = 2;
        let f = Features {
            waveform: Vec::new(),
            samples: 700,
            frames: 3,
            n_mels: 2,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5],
        };
        let computed = std::cell::Cell::new(0);
        let compute = |_: &Path| {
            computed.set(computed.get() + 1);
            Ok(f.clone())
        };
        let (a, hit) = cache.get_or_compute(&clip, &fe, compute).unwrap();
        assert!(!hit);
        assert_eq!(a, f);
        let (b, hit) = cache.get_or_compute(&clip, &fe, compute).unwrap();
        assert!(hit);
        assert_eq!(b, f);
        assert_eq!(computed.get(), 1);
        // Another front-end setting or another file content misses.
        let mut other = fe.clone();
        other.fmax = 8000.0;
        assert_ne!(
            FeatureCache::key(&clip, &fe).unwrap(),
            FeatureCache::key(&clip, &other).unwrap()
        );
        let before = FeatureCache::key(&clip, &fe).unwrap();
        std::fs::write(&clip, b"123456").unwrap();
        assert_ne!(before, FeatureCache::key(&clip, &fe).unwrap());
        // A torn file is a miss.
        std::fs::write(cache.path(&before), b"ATFEAT02xx").unwrap();
        assert!(cache.load(&before).is_none());
        // Wrong band count from the front-end is an error.
        let error = FeatureCache::new(None).get_or_compute(&clip, &other, |_| {
            Ok(Features {
                waveform: Vec::new(),
                samples: 0,
                frames: 1,
                n_mels: 3,
                data: vec![0.0; 3],
            })
        });
        assert!(format!("{:#}", error.unwrap_err()).contains("2 mel bands"));
        assert_eq!(
            f.crop(1, 5),
            Features {
                waveform: Vec::new(),
                samples: 0,
                frames: 2,
                n_mels: 2,
                data: vec![3.0, 4.0, 5.0, -6.5]
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn embeddings_round_trip() {
        let dir = temp("text");
        let mut cache = EmbeddingCache::open(Some(&dir), "abcdef", 2);
        assert_eq!(cache.missing(["a", "b", "a"]), ["a", "b"]);
        cache.insert("a", vec![1.0, 0.0]);
        cache.insert("b, with \"quotes\"", vec![0.5, -0.5]);
        cache.save().unwrap();
        let again = EmbeddingCache::open(Some(&dir), "abcdef", 2);
        assert_eq!(again.get("a"), Some(&[1.0, 0.0][..]));
        assert_eq!(again.get("b, with \"quotes\""), Some(&[0.5, -0.5][..]));
        assert_eq!(again.missing(["a", "c"]), ["c"]);
        // Another dimension ignores the file.
        assert!(EmbeddingCache::open(Some(&dir), "abcdef", 3)
            .entries
            .is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
