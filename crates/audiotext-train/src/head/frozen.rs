//! The frozen backbone of `fit-head`: its ONNX graph, and its outputs per clip (per window),
//! computed once and cached on disk per file, SpecAugment copy and mix, so that the folds of
//! a cross-validation and reruns with other head settings share them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use rayon::prelude::*;

use audiotext_core::audio::{
    decode_mono, window_bounds, AudioSource, FrontEnd, MelExtractor, Windowing,
};

use super::FitHeadArgs;
use crate::backbone::{checkpoint_path, pretrained_encoder, BackboneRunner, BACKBONE_ONNX_FILE};
use crate::cache::Features;
use crate::embed::bar_style;
use crate::mix::Mix;
use crate::model::EncoderConfig;
use crate::pretrained::PretrainedInfo;
use crate::run::{ort_runtime, SkippedFile};
use crate::split::{fnv1a, SplitMix64};

/// Clips whose windows are computed and embedded at a time (bounds the memory of log-mels).
const CHUNK_CLIPS: usize = 32;
/// Bumped when the meaning of a cached backbone output changes.
const BACKBONE_CACHE_FORMAT: &str = "ATBACK01";

/// One training or validation item: its windows' backbone outputs (`windows x dim`).
pub(super) struct Item {
    pub(super) windows: Vec<f32>,
    pub(super) count: usize,
}

/// Items looked up or computed: one per source (None where it cannot be decoded), how many
/// came from the cache, and the (source index, error) of each that could not be decoded.
pub(super) type Looked = (Vec<Option<Item>>, usize, Vec<(usize, String)>);

/// The backbone a head trains on: aiSFX's pretrained blocks in ONNX Runtime, with its cache.
pub(super) struct FrozenBackbone {
    pub(super) encoder: EncoderConfig,
    pub(super) info: PretrainedInfo,
    pub(super) fe: FrontEnd,
    pub(super) windowing: Windowing,
    runner: BackboneRunner,
    cache: BackboneCache,
}

impl FrozenBackbone {
    /// The backbone of `args` (and the head's shape on it), its graph written and checked
    /// against the trainer's forward pass the first time.
    pub(super) fn open(args: &FitHeadArgs, cache_root: &Path) -> Result<FrozenBackbone> {
        let mut fe = FrontEnd::aisfx();
        fe.input_gain_db = args.input_gain_db;
        fe.lowpass_hz = args.lowpass_hz;
        let windowing = Windowing::aisfx_blocks();
        let path = checkpoint_path(args.pretrained.as_deref())?;
        let text_dim = crate::embed::text_dim(&args.text_bundle)?;
        let mut encoder = pretrained_encoder(&args.encoder, text_dim)?;
        encoder.fc_dim = args.fc_dim;
        encoder.head_dropout = args.head_dropout;
        let blocks = encoder.channels.len();
        if args.tapped_blocks == 0 || args.tapped_blocks > blocks {
            bail!(
                "--tapped-blocks {}: {} has {blocks} blocks; pass 1 to {blocks}",
                args.tapped_blocks,
                args.encoder
            );
        }
        encoder.tapped_blocks = args.tapped_blocks;
        let info = crate::pretrained::check(&path, &encoder)?;
        let rt = ort_runtime(args.ort.as_deref())?;
        // One graph and one cache of its outputs per tap count (1 keeps the older names).
        let taps = match args.tapped_blocks {
            1 => String::new(),
            n => format!("-taps{n}"),
        };
        let onnx_dir = cache_root.join("backbones").join(format!(
            "{}-{}{taps}",
            args.encoder,
            &info.sha256[..16]
        ));
        let onnx = onnx_dir.join(BACKBONE_ONNX_FILE);
        if !onnx.is_file() {
            let model = crate::backbone::load_backbone(&encoder, &info)?;
            std::fs::create_dir_all(&onnx_dir)?;
            let tmp = onnx_dir.join(format!(".{BACKBONE_ONNX_FILE}.{}", std::process::id()));
            crate::backbone::write_backbone_onnx(&model, &encoder, &tmp)?;
            let (worst, _) = crate::backbone::backbone_parity(&model, &encoder, &tmp, rt)?;
            std::fs::rename(&tmp, &onnx)?;
            println!(
                "backbone: {} (parity with the trainer {worst:.1e})",
                onnx.display()
            );
        }
        let runner = BackboneRunner::new(&onnx, &encoder, rt)?;
        let setting = format!("{}{taps}", info.sha256);
        let cache = BackboneCache::new(cache_root, &fe, &windowing, &setting)?;
        Ok(FrozenBackbone {
            encoder,
            info,
            fe,
            windowing,
            runner,
            cache,
        })
    }

    /// Items of the training clips and the validation clips' sources; a file that cannot be
    /// decoded leaves both lists (up to `max_bad_share` of them, else an error).
    pub(super) fn embed_split(
        &self,
        split: &mut super::Split,
        clips: &[crate::data::Clip],
        max_bad_share: f64,
    ) -> Result<(Vec<Item>, Vec<Item>, Vec<SkippedFile>)> {
        let start = Instant::now();
        let mut wanted: Vec<(usize, PathBuf)> = split
            .train
            .iter()
            .map(|&i| (i, clips[i].path.clone()))
            .collect();
        let train_count = wanted.len();
        wanted.extend(split.validation.iter().cloned());
        let paths: Vec<&Path> = wanted.iter().map(|(_, p)| p.as_path()).collect();
        let (items, hits, bad) =
            self.cache
                .file_items(&paths, &self.fe, &self.windowing, &self.runner)?;
        let skipped = crate::run::check_bad_files(&bad, &paths, max_bad_share)?;
        let windows: usize = items.iter().flatten().map(|i| i.count).sum();
        let (mut train_items, mut validation_items) = (Vec::new(), Vec::new());
        let (mut kept_train, mut kept_validation) = (Vec::new(), Vec::new());
        for (n, item) in items.into_iter().enumerate() {
            match (item, n < train_count) {
                (Some(item), true) => {
                    kept_train.push(wanted[n].0);
                    train_items.push(item);
                }
                (Some(item), false) => {
                    kept_validation.push(wanted[n].clone());
                    validation_items.push(item);
                }
                (None, _) => {}
            }
        }
        (split.train, split.validation) = (kept_train, kept_validation);
        println!(
            "backbone: {} clips, {windows} windows ({hits} clips from the cache) in {:.1} s on {}{}",
            train_items.len() + validation_items.len(),
            start.elapsed().as_secs_f64(),
            self.runner.provider,
            match bad.len() {
                0 => String::new(),
                n => format!("; {n} files skipped (they cannot be decoded)"),
            }
        );
        Ok((train_items, validation_items, skipped))
    }

    /// `count` SpecAugment copies of the training clips' items.
    pub(super) fn specaug_copies(&self, paths: &[&Path], count: usize) -> Result<Vec<Vec<Item>>> {
        (1..=count)
            .map(|copy| {
                let start = Instant::now();
                let (items, hits) = every_item(self.cache.masked_items(
                    paths,
                    copy,
                    &self.fe,
                    &self.windowing,
                    &self.runner,
                )?)?;
                println!(
                    "specaug copy {copy}: {} clips ({hits} from the cache) in {:.1} s",
                    items.len(),
                    start.elapsed().as_secs_f64()
                );
                Ok(items)
            })
            .collect()
    }

    /// Items of mixes (the second clip `gain_db(pool index)` dB under the first); reports the
    /// count and the cache's share as `label`.
    pub(super) fn embed_mixes(
        &self,
        label: &str,
        mixes: &[(usize, Mix)],
        clips: &[crate::data::Clip],
        gain_db: impl Fn(usize) -> f32,
    ) -> Result<Vec<Item>> {
        if mixes.is_empty() {
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let pairs: Vec<(&Path, &Path, f32)> = mixes
            .iter()
            .map(|(n, m)| {
                (
                    clips[m.first].path.as_path(),
                    clips[m.second].path.as_path(),
                    gain_db(*n),
                )
            })
            .collect();
        let (items, hits) =
            every_item(
                self.cache
                    .mix_items(&pairs, &self.fe, &self.windowing, &self.runner)?,
            )?;
        println!(
            "{label}: {} pairs ({hits} from the cache) in {:.1} s",
            items.len(),
            start.elapsed().as_secs_f64()
        );
        Ok(items)
    }
}

/// Items that must all exist (augmented copies of clips that decoded once already).
pub(super) fn every_item((items, hits, bad): Looked) -> Result<(Vec<Item>, usize)> {
    if let Some((_, error)) = bad.first() {
        bail!("{error}");
    }
    Ok((items.into_iter().flatten().collect(), hits))
}

/// Backbone outputs cached per file (or mix) and front-end, under `<cache>/backbone/`.
pub(super) struct BackboneCache {
    dir: PathBuf,
    /// Hash of everything but the file: format, front-end, windowing, checkpoint (and taps).
    setting: String,
}

impl BackboneCache {
    pub(super) fn new(
        root: &Path,
        fe: &FrontEnd,
        windowing: &Windowing,
        backbone: &str,
    ) -> Result<BackboneCache> {
        let setting = format!(
            "{BACKBONE_CACHE_FORMAT}\u{1f}{}\u{1f}{}\u{1f}{backbone}",
            serde_json::to_string(fe)?,
            serde_json::to_string(windowing)?
        );
        Ok(BackboneCache {
            dir: root.join("backbone"),
            setting,
        })
    }

    /// The cache file of `what` (a description of the source: paths, sizes, times, gains).
    fn file(&self, what: &str) -> PathBuf {
        let key = format!(
            "{:016x}{:016x}",
            fnv1a(format!("{}\u{1e}{what}", self.setting).as_bytes()),
            fnv1a(format!("{what}\u{1e}{}", self.setting).as_bytes())
        );
        self.dir.join(&key[..2]).join(key)
    }

    fn read(&self, file: &Path, dim: usize) -> Option<Item> {
        let bytes = std::fs::read(file).ok()?;
        let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        if bytes.len() != 4 + count * dim * 4 || count == 0 {
            return None;
        }
        let windows = bytes[4..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Some(Item { windows, count })
    }

    fn write(&self, file: &Path, item: &Item) -> Result<()> {
        let dir = file.parent().expect("cache file in a folder");
        std::fs::create_dir_all(dir)?;
        let mut bytes = (item.count as u32).to_le_bytes().to_vec();
        bytes.extend(item.windows.iter().flat_map(|v| v.to_le_bytes()));
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)?;
        Ok(())
    }

    /// Items of `sources` (each a cache description and a way to compute its windows' log-mels),
    /// from the cache or computed CHUNK_CLIPS at a time: log-mels in parallel, then the backbone.
    fn items<S: Sync>(
        &self,
        sources: &[S],
        describe: impl Fn(&S) -> Result<String> + Sync,
        windows: impl Fn(&S) -> Result<Vec<Features>> + Sync,
        runner: &BackboneRunner,
    ) -> Result<Looked> {
        let dim = runner.dim();
        let files: Vec<PathBuf> = sources
            .iter()
            .map(|s| Ok(self.file(&describe(s)?)))
            .collect::<Result<_>>()?;
        let mut out: Vec<Option<Item>> = files.iter().map(|f| self.read(f, dim)).collect();
        let hits = out.iter().filter(|i| i.is_some()).count();
        let missing: Vec<usize> = (0..sources.len()).filter(|&i| out[i].is_none()).collect();
        let bar = ProgressBar::new(missing.len() as u64)
            .with_style(bar_style("clips"))
            .with_message("backbone");
        let mut bad = Vec::new();
        for chunk in missing.chunks(CHUNK_CLIPS) {
            // A source that cannot be decoded is skipped and reported, not the end of the run.
            let decoded: Vec<Result<Vec<Features>>> =
                chunk.par_iter().map(|&i| windows(&sources[i])).collect();
            let mut mels = Vec::with_capacity(chunk.len());
            let mut good = Vec::with_capacity(chunk.len());
            for (&i, d) in chunk.iter().zip(decoded) {
                match d {
                    Ok(m) => {
                        good.push(i);
                        mels.push(m);
                    }
                    Err(e) => bad.push((i, format!("{e:#}"))),
                }
            }
            let flat: Vec<&Features> = mels.iter().flatten().collect();
            let vectors = runner.embed(&flat)?;
            let mut next = vectors.into_iter();
            for (&i, clip) in good.iter().zip(&mels) {
                let mut windows = Vec::with_capacity(clip.len() * dim);
                for v in next.by_ref().take(clip.len()) {
                    windows.extend(v);
                }
                let item = Item {
                    windows,
                    count: clip.len(),
                };
                self.write(&files[i], &item)?;
                out[i] = Some(item);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        bad.sort();
        Ok((out, hits, bad))
    }

    /// Items of audio files: the extension's own windows of each.
    pub(super) fn file_items(
        &self,
        paths: &[&Path],
        fe: &FrontEnd,
        windowing: &Windowing,
        runner: &BackboneRunner,
    ) -> Result<Looked> {
        self.items(
            paths,
            |p| file_identity(p),
            |p| {
                let windows = crate::features::file_windows(&[*p], fe, windowing, false, || {})?;
                let windows = windows.into_iter().next().unwrap_or_default();
                if windows.is_empty() {
                    bail!("{} has no audio", p.display());
                }
                Ok(windows)
            },
            runner,
        )
    }

    /// Items of SpecAugment copy `copy` of audio files: each window's log-mel masked (seeded by
    /// the file and the copy) before the backbone.
    pub(super) fn masked_items(
        &self,
        paths: &[&Path],
        copy: usize,
        fe: &FrontEnd,
        windowing: &Windowing,
        runner: &BackboneRunner,
    ) -> Result<Looked> {
        let masks = crate::specaug::SpecAugment {
            time_masks: 2,
            time_mask_frames: 20,
            freq_masks: 2,
            freq_mask_bands: 12,
        };
        let describe = |p: &&Path| {
            Ok(format!(
                "specaug{copy}:{masks:?}\u{1f}{}",
                file_identity(p)?
            ))
        };
        self.items(
            paths,
            describe,
            |p| {
                let mut rng = SplitMix64::derive(fnv1a(describe(p)?.as_bytes()), &[copy as u64]);
                let mut windows =
                    crate::features::file_windows(&[*p], fe, windowing, false, || {})?
                        .into_iter()
                        .next()
                        .unwrap_or_default();
                for w in &mut windows {
                    masks.apply(w, fe.n_mels, &mut rng);
                }
                Ok(windows)
            },
            runner,
        )
    }

    /// Items of mixes: `first + 10^(gain_db / 20) * second`, each peak-normalised over the
    /// whole clip first, the shorter one silent after its end; then the extension's windows.
    pub(super) fn mix_items(
        &self,
        pairs: &[(&Path, &Path, f32)],
        fe: &FrontEnd,
        windowing: &Windowing,
        runner: &BackboneRunner,
    ) -> Result<Looked> {
        let mel = MelExtractor::new(fe).context("invalid front-end settings")?;
        self.items(
            pairs,
            |(a, b, gain)| {
                Ok(format!(
                    "mix\u{1f}{}\u{1f}{}\u{1f}{gain}",
                    file_identity(a)?,
                    file_identity(b)?
                ))
            },
            |(a, b, gain)| {
                let decode = |p: &Path| {
                    decode_mono(&AudioSource::Path(p), fe.sample_rate)
                        .with_context(|| format!("cannot decode {}", p.display()))
                };
                let (x, y) = (decode(a)?, decode(b)?);
                let peak = |s: &[f32]| {
                    s.iter()
                        .fold(0f32, |m, v| m.max(v.abs()))
                        .max(f32::MIN_POSITIVE)
                };
                let (px, py) = (peak(&x), peak(&y) / 10f32.powf(gain / 20.0));
                let mut mixed = vec![0f32; x.len().max(y.len())];
                for (i, m) in mixed.iter_mut().enumerate() {
                    *m = x.get(i).map_or(0.0, |v| v / px) + y.get(i).map_or(0.0, |v| v / py);
                }
                Ok(window_bounds(mixed.len(), fe.sample_rate, windowing)?
                    .into_iter()
                    .map(|(s, e)| {
                        let m = mel.compute(&mixed[s..e]);
                        Features {
                            samples: 0,
                            frames: m.frames,
                            n_mels: m.n_mels,
                            data: m.data,
                            waveform: Vec::new(),
                        }
                    })
                    .collect())
            },
            runner,
        )
    }
}

/// A file's path, size and modification time: a changed file misses the cache.
fn file_identity(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    Ok(format!(
        "{}\u{1f}{}\u{1f}{modified}",
        canonical.display(),
        meta.len()
    ))
}
