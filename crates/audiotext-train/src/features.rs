//! Log-mel features of a dataset's clips through the shared front-end (`audiotext_core::audio`, the
//! same code the extension runs), computed in parallel and cached on disk.
//!
//! Training and validation use one spectrogram per clip (cached), cut into windows by
//! [`clip_windows`]; `eval --bundle` computes each window on its own samples with the
//! extension's streaming path ([`file_windows`]), exactly as `audio_embed` does.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::cache::{FeatureCache, Features};
use audiotext_core::audio::{
    decode_mono, window_bounds, AudioSource, FrontEnd, LogMelWindows, MelExtractor, Windowing,
};

/// The log-mel features of one file (decoded, mixed down, resampled to the front-end's rate).
pub fn clip_features(path: &Path, fe: &FrontEnd, mel: &MelExtractor) -> Result<Features> {
    let samples = decode_mono(&AudioSource::Path(path), fe.sample_rate)
        .with_context(|| format!("cannot decode {}", path.display()))?;
    let m = mel.compute(&samples);
    Ok(Features {
        waveform: Vec::new(),
        samples: samples.len(),
        frames: m.frames,
        n_mels: m.n_mels,
        data: m.data,
    })
}

/// Features of every path (in order), from the cache or computed in parallel. `progress` is
/// called once per clip. Returns the features and the number of cache hits; the first file
/// that cannot be decoded is an error.
pub fn dataset_features(
    paths: &[&Path],
    fe: &FrontEnd,
    cache: &FeatureCache,
    progress: impl Fn() + Sync,
) -> Result<(Vec<Arc<Features>>, usize)> {
    let (features, hits, bad) = decodable_features(paths, fe, cache, progress)?;
    if let Some((_, error)) = bad.into_iter().next() {
        anyhow::bail!("{error}");
    }
    Ok((features.into_iter().flatten().collect(), hits))
}

/// Same as `dataset_features`, but a file that cannot be decoded is `None`, and listed (its
/// index and the error) instead of stopping the run: training skips it (`fit --max-bad-share`).
pub fn decodable_features(
    paths: &[&Path],
    fe: &FrontEnd,
    cache: &FeatureCache,
    progress: impl Fn() + Sync,
) -> Result<FeatureResults> {
    let mel = MelExtractor::new(fe).context("invalid front-end settings")?;
    let hits = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Arc<Features>>> = paths
        .par_iter()
        .map(|path| {
            let computed = cache.get_or_compute(path, fe, |p| clip_features(p, fe, &mel));
            progress();
            let (f, hit) = computed?;
            if hit {
                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Arc::new(f))
        })
        .collect();
    let mut bad = Vec::new();
    let features = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(f) => Some(f),
            Err(e) => {
                bad.push((i, format!("{e:#}")));
                None
            }
        })
        .collect();
    Ok((features, hits.into_inner(), bad))
}

/// Each path's features (`None`: undecodable), the cache hits, and the undecodable files'
/// indices with their errors.
pub type FeatureResults = (Vec<Option<Arc<Features>>>, usize, Vec<(usize, String)>);

/// The same features with each clip's signal attached (`Features::waveform`), for encoders
/// that read the waveform. Decoded again, in parallel: the feature cache holds log-mel only.
pub fn with_waveforms(
    features: Vec<Arc<Features>>,
    paths: &[&Path],
    fe: &FrontEnd,
) -> Result<Vec<Arc<Features>>> {
    features
        .into_par_iter()
        .zip(paths.par_iter())
        .map(|(f, path)| {
            let samples = decode_mono(&AudioSource::Path(path), fe.sample_rate)
                .with_context(|| format!("cannot decode {}", path.display()))?;
            Ok(Arc::new(
                (*f).clone().with_waveform(&samples, fe.hop_length),
            ))
        })
        .collect()
}

/// The inference windows of a clip, cut from its whole spectrogram at the sample bounds the
/// extension uses (`audiotext_core::audio::window_bounds`). A window starting at sample `s` starts
/// at frame `s / hop_length`; it equals the extension's own window except within `n_fft / 2`
/// samples of its edges, where the extension pads and this crop sees the neighbouring audio.
pub fn clip_windows(f: &Features, fe: &FrontEnd, windowing: &Windowing) -> Result<Vec<Features>> {
    let samples = if f.samples > 0 {
        f.samples
    } else {
        // Unknown length (generated or cropped features): the longest signal with this many
        // frames.
        f.frames.saturating_sub(1) * fe.hop_length
    };
    let bounds = window_bounds(samples, fe.sample_rate, windowing)?;
    if bounds.is_empty() || bounds == [(0, samples)] {
        return Ok(vec![f.clone()]);
    }
    Ok(bounds
        .into_iter()
        .map(|(s, e)| f.crop(s / fe.hop_length, fe.frames(e - s)))
        .collect())
}

/// The inference windows of each file, computed as the extension computes them (each window's
/// log-mel from its own samples), in parallel.
pub fn file_windows(
    paths: &[&Path],
    fe: &FrontEnd,
    windowing: &Windowing,
    waveforms: bool,
    progress: impl Fn() + Sync,
) -> Result<Vec<Vec<Features>>> {
    let mel = Arc::new(MelExtractor::new(fe).context("invalid front-end settings")?);
    paths
        .par_iter()
        .map(|path| {
            let mut windows = LogMelWindows::new(&AudioSource::Path(path), mel.clone(), windowing)
                .with_context(|| format!("cannot decode {}", path.display()))?;
            if waveforms {
                windows = windows.with_waveforms();
            }
            let mut out = Vec::new();
            while let Some(w) = windows.next() {
                let w = w.with_context(|| format!("cannot decode {}", path.display()))?;
                out.push(Features {
                    waveform: windows.take_waveform().unwrap_or_default(),
                    samples: 0,
                    frames: w.frames,
                    n_mels: w.n_mels,
                    data: w.data,
                });
            }
            progress();
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_extension_bounds() {
        let fe = FrontEnd::panns_32k();
        let w = Windowing::ten_seconds();
        // 25 s at 32 kHz: windows [0, 10), [10, 20), [20, 25) s.
        let samples = 25 * 32_000;
        let frames = fe.frames(samples);
        let f = Features {
            waveform: Vec::new(),
            samples,
            frames,
            n_mels: 1,
            data: (0..frames).map(|i| i as f32).collect(),
        };
        let windows = clip_windows(&f, &fe, &w).unwrap();
        let shape: Vec<(usize, f32)> = windows.iter().map(|x| (x.frames, x.data[0])).collect();
        assert_eq!(shape, [(1001, 0.0), (1001, 1000.0), (501, 2000.0)]);
        // 10.5 s: the 0.5 s tail is shorter than min_seconds (1 s) and dropped.
        let samples = 336_000;
        let g = Features {
            waveform: Vec::new(),
            samples,
            frames: fe.frames(samples),
            n_mels: 1,
            data: vec![0.0; fe.frames(samples)],
        };
        let one = clip_windows(&g, &fe, &w).unwrap();
        assert_eq!((one.len(), one[0].frames), (1, 1001));
        // A short clip is one window of its own length.
        let h = f.crop(0, 300);
        assert_eq!(clip_windows(&h, &fe, &w).unwrap(), vec![h]);
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    /// A 16-bit PCM mono WAV file.
    fn write_wav(path: &Path, rate: u32, samples: &[f32]) {
        let data_len = (samples.len() * 2) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes()); // PCM
        b.extend_from_slice(&1u16.to_le_bytes()); // mono
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            b.extend_from_slice(&((s * 32767.0) as i16).to_le_bytes());
        }
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn files_are_decoded_resampled_and_cached() {
        let dir = std::env::temp_dir().join(format!("audiotext-features-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fe = FrontEnd {
            sample_rate: 16_000,
            n_fft: 512,
            win_length: 512,
            hop_length: 256,
            n_mels: 16,
            fmax: 8_000.0,
            ..FrontEnd::panns_32k()
        };
        // 1.5 s at 8 kHz and 1 s at 16 kHz.
        let a = dir.join("a.wav");
        let b = dir.join("b.wav");
        write_wav(
            &a,
            8_000,
            &(0..12_000)
                .map(|i| (i as f32 * 0.1).sin() * 0.3)
                .collect::<Vec<_>>(),
        );
        write_wav(
            &b,
            16_000,
            &(0..16_000)
                .map(|i| (i as f32 * 0.2).sin() * 0.3)
                .collect::<Vec<_>>(),
        );
        let cache = FeatureCache::new(Some(&dir.join("cache")));
        let paths = [a.as_path(), b.as_path()];
        let (f, hits) = dataset_features(&paths, &fe, &cache, || {}).unwrap();
        assert_eq!(hits, 0);
        assert_eq!(f[0].samples, 24_000, "resampled to 16 kHz");
        assert_eq!(f[0].frames, fe.frames(24_000));
        assert_eq!(f[1].samples, 16_000);
        let (again, hits) = dataset_features(&paths, &fe, &cache, || {}).unwrap();
        assert_eq!(hits, 2);
        assert_eq!(again, f);
        // The extension's streaming windows agree with windows cut from the whole clip, apart
        // from the frames within n_fft/2 of a window edge.
        let windowing = Windowing {
            clip_seconds: 1.0,
            hop_seconds: 1.0,
            min_seconds: 0.25,
            pooling: "mean".into(),
        };
        let streamed = file_windows(&paths[..1], &fe, &windowing, false, || {}).unwrap();
        let cut = clip_windows(&f[0], &fe, &windowing).unwrap();
        assert_eq!(streamed[0].len(), 2);
        assert_eq!(
            streamed[0].iter().map(|w| w.frames).collect::<Vec<_>>(),
            cut.iter().map(|w| w.frames).collect::<Vec<_>>()
        );
        let inner = &streamed[0][0].data[3 * 16..50 * 16];
        let inner_cut = &cut[0].data[3 * 16..50 * 16];
        let diff = inner
            .iter()
            .zip(inner_cut)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "inner frames differ by {diff} dB");
        let error = dataset_features(&[dir.join("missing.wav").as_path()], &fe, &cache, || {});
        assert!(format!("{:#}", error.unwrap_err()).contains("missing.wav"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
