//! Model bundles: a folder with `manifest.json` and the files it names.
//!
//! Bundles are loaded lazily (the manifest when registered, each encoder on first use) and once
//! per process: every connection that registers the same folder shares one set of sessions.
//! A bundle whose manifest changes on disk (re-exported) is loaded afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::audio_encoder::AudioEncoder;
use crate::model::manifest::{sha256_file, Manifest, MANIFEST_FILE};
use crate::model::runtime;
use crate::text::TextEncoder;
use crate::{Error, Result};

/// A registered bundle: its manifest, and its encoders once they are needed.
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Not a OnceLock of the result: a failed load is retried on the next call, so fixing the
    /// cause (a missing runtime library, say) needs no restart.
    text: Mutex<Option<Arc<TextEncoder>>>,
    audio: Mutex<Option<Arc<AudioEncoder>>>,
}

/// The value in `slot`, loading it first if needed. The slot stays locked while loading, so two
/// threads never load the same encoder twice; a failure leaves it empty, to be retried.
fn load_once<T>(slot: &Mutex<Option<Arc<T>>>, load: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(value) = slot.as_ref() {
        return Ok(value.clone());
    }
    let value = Arc::new(load()?);
    *slot = Some(value.clone());
    Ok(value)
}

/// Process-wide cache, keyed by canonical folder and the manifest's modification time.
fn cache() -> &'static Mutex<HashMap<(PathBuf, SystemTime), Arc<Bundle>>> {
    static CACHE: OnceLock<Mutex<HashMap<(PathBuf, SystemTime), Arc<Bundle>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

impl Bundle {
    /// Opens the bundle at `dir` (relative paths are taken from the process's working folder),
    /// sharing an already-open one.
    pub fn open(dir: &Path) -> Result<Arc<Bundle>> {
        let canonical = dir.canonicalize().map_err(|e| {
            Error::Bundle(format!("cannot open bundle folder {}: {e}", dir.display()))
        })?;
        let manifest_path = canonical.join(MANIFEST_FILE);
        let modified = std::fs::metadata(&manifest_path).and_then(|m| m.modified()).map_err(|e| {
            Error::Bundle(format!(
                "{} is not a model bundle: cannot read {MANIFEST_FILE} ({e}); export one with `audiotext-train export-text`",
                canonical.display()
            ))
        })?;
        let key = (canonical.clone(), modified);
        let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bundle) = cache.get(&key) {
            return Ok(bundle.clone());
        }
        let manifest = Manifest::read(&canonical)?;
        for name in manifest.files.keys() {
            if !canonical.join(name).is_file() {
                return Err(Error::Bundle(format!(
                    "bundle {} lacks {name}, which its manifest lists; re-export the bundle or copy the whole folder",
                    canonical.display()
                )));
            }
        }
        let bundle = Arc::new(Bundle {
            dir: canonical,
            manifest,
            text: Mutex::new(None),
            audio: Mutex::new(None),
        });
        cache.retain(|(dir, _), _| dir != &key.0);
        cache.insert(key, bundle.clone());
        Ok(bundle)
    }

    /// The text encoder, loaded on first use.
    pub fn text_encoder(&self) -> Result<Arc<TextEncoder>> {
        load_once(&self.text, || {
            let section = self.manifest.text.as_ref().ok_or_else(|| {
            Error::Bundle(format!(
                "bundle {} has no text encoder (no \"text\" section in its manifest); add one with `audiotext-train export-text --out {}`",
                self.dir.display(),
                self.dir.display()
            ))
        })?;
            for file in [&section.onnx, &section.tokenizer] {
                self.verify_file(file)?;
            }
            TextEncoder::load(
                &self.dir,
                section,
                self.manifest.embedding_dim,
                runtime::runtime()?,
            )
        })
    }

    /// The audio encoder, loaded on first use.
    pub fn audio_encoder(&self) -> Result<Arc<AudioEncoder>> {
        load_once(&self.audio, || {
            let section = self.manifest.audio.as_ref().ok_or_else(|| {
            Error::Bundle(format!(
                "bundle {} has no audio encoder (no \"audio\" section in its manifest); train one and add it with `audiotext-train export --out {}`",
                self.dir.display(),
                self.dir.display()
            ))
        })?;
            self.verify_file(&section.onnx)?;
            AudioEncoder::load(
                &self.dir,
                section,
                self.manifest.embedding_dim,
                runtime::runtime()?,
            )
        })
    }

    /// The audio encoder if it is loaded already (for `audiotext_debug`).
    pub fn loaded_audio_encoder(&self) -> Option<Arc<AudioEncoder>> {
        self.audio.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The text encoder if it is loaded already (for `audiotext_debug`).
    pub fn loaded_text_encoder(&self) -> Option<Arc<TextEncoder>> {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks a file against the sha256 the manifest records for it.
    fn verify_file(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        let Some(expected) = self.manifest.files.get(name) else {
            return Err(Error::Bundle(format!(
                "{MANIFEST_FILE} of {} does not list {name} in \"files\"; re-export the bundle",
                self.dir.display()
            )));
        };
        let actual = sha256_file(&path)?;
        if &actual != expected {
            return Err(Error::Bundle(format!(
                "{} is damaged or was replaced: its sha256 is {actual}, while {MANIFEST_FILE} records {expected}; re-export the bundle",
                path.display()
            )));
        }
        Ok(())
    }
}
