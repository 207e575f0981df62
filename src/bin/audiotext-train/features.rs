//! Log-mel features of a dataset's clips through the shared front-end (`audiotext0::audio`, the
//! same code the extension runs), computed in parallel and cached on disk.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rayon::prelude::*;

use audiotext0::audio::{FrontEnd, MelExtractor};
use audiotext0::train::cache::{FeatureCache, Features};

/// Decodes a file to mono at `rate` Hz.
fn decode_mono(path: &Path, rate: u32) -> Result<Vec<f32>> {
    let _ = (path, rate);
    anyhow::bail!("audio decoding (audiotext0::audio::stream) is not part of this build yet")
}

/// The log-mel features of one file.
pub fn clip_features(path: &Path, fe: &FrontEnd, mel: &MelExtractor) -> Result<Features> {
    let samples = decode_mono(path, fe.sample_rate)
        .with_context(|| format!("cannot decode {}", path.display()))?;
    let m = mel.compute(&samples);
    Ok(Features {
        frames: m.frames,
        n_mels: m.n_mels,
        data: m.data,
    })
}

/// Features of every path (in order), from the cache or computed in parallel. `progress` is
/// called once per clip. Returns the features and the number of cache hits.
pub fn dataset_features(
    paths: &[&Path],
    fe: &FrontEnd,
    cache: &FeatureCache,
    progress: impl Fn() + Sync,
) -> Result<(Vec<Arc<Features>>, usize)> {
    let mel = MelExtractor::new(fe).context("invalid front-end settings")?;
    let hits = std::sync::atomic::AtomicUsize::new(0);
    let features: Vec<Arc<Features>> = paths
        .par_iter()
        .map(|path| {
            let (f, hit) = cache.get_or_compute(path, fe, |p| clip_features(p, fe, &mel))?;
            if hit {
                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            progress();
            Ok(Arc::new(f))
        })
        .collect::<Result<_>>()?;
    Ok((features, hits.into_inner()))
}
