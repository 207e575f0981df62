//! Training batches: random crops, padding to the longest clip of the batch, and SpecAugment
//! (Park et al. 2019: time and frequency masks; no time warping), on the host before the batch
//! becomes a tensor, drawn from a seeded generator so a run is reproducible.

use serde::{Deserialize, Serialize};

use crate::cache::Features;
use crate::split::SplitMix64;

/// SpecAugment settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecAugment {
    /// Number of time masks per clip.
    pub time_masks: usize,
    /// Longest time mask in frames (each mask's width is uniform in `0..=max`).
    pub time_mask_frames: usize,
    /// Number of frequency masks per clip.
    pub freq_masks: usize,
    /// Widest frequency mask in mel bands.
    pub freq_mask_bands: usize,
}

impl SpecAugment {
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn off() -> SpecAugment {
        SpecAugment {
            time_masks: 0,
            time_mask_frames: 0,
            freq_masks: 0,
            freq_mask_bands: 0,
        }
    }

    /// Masks `f` in place; masked cells take the clip's mean value (neutral for the
    /// per-band normalisation that follows in the model). `bands`: mel bands per channel; a
    /// frequency mask covers the same bands in every channel of a multiscale input.
    pub fn apply(&self, f: &mut Features, bands: usize, rng: &mut SplitMix64) {
        if f.frames == 0 || f.n_mels == 0 || bands == 0 {
            return;
        }
        let channels = f.n_mels / bands;
        let mean = f.data.iter().sum::<f32>() / f.data.len() as f32;
        for _ in 0..self.time_masks {
            let width = rng.below(self.time_mask_frames.min(f.frames) + 1);
            let start = rng.below(f.frames - width + 1);
            for t in start..start + width {
                f.data[t * f.n_mels..(t + 1) * f.n_mels].fill(mean);
            }
        }
        for _ in 0..self.freq_masks {
            let width = rng.below(self.freq_mask_bands.min(bands) + 1);
            let start = rng.below(bands - width + 1);
            for t in 0..f.frames {
                for c in 0..channels {
                    let at = t * f.n_mels + c * bands + start;
                    f.data[at..at + width].fill(mean);
                }
            }
        }
    }
}

/// A batch of clips as one `[batch, frames, row]` block of values (`row` = channels x mels).
#[derive(Debug, Clone)]
pub struct Batch {
    pub values: Vec<f32>,
    pub batch: usize,
    pub frames: usize,
    pub mels: usize,
    /// `[batch, frames * hop]` samples when the clips carry waveforms (silence-padded like
    /// `values`), else empty.
    pub waveform: Vec<f32>,
}

/// Builds a batch: each clip is cropped at random to at most `max_frames`, augmented, and
/// padded with `pad` (silence) to the longest clip of the batch (at least `min_frames`).
pub fn make_batch(
    clips: &[&Features],
    max_frames: usize,
    min_frames: usize,
    pad: f32,
    bands: usize,
    augment: &SpecAugment,
    rng: &mut SplitMix64,
) -> Batch {
    let mels = clips[0].n_mels;
    let mut cropped: Vec<Features> = clips
        .iter()
        .map(|f| {
            if f.frames > max_frames {
                f.crop(rng.below(f.frames - max_frames + 1), max_frames)
            } else {
                (*f).clone()
            }
        })
        .collect();
    for f in &mut cropped {
        augment.apply(f, bands, rng);
    }
    let frames = cropped
        .iter()
        .map(|f| f.frames)
        .max()
        .unwrap_or(0)
        .max(min_frames);
    let mut values = Vec::with_capacity(clips.len() * frames * mels);
    for f in &cropped {
        values.extend_from_slice(&f.data);
        values.resize(values.len() + (frames - f.frames) * mels, pad);
    }
    let hop = cropped[0].hop();
    let mut waveform = Vec::new();
    if hop > 0 {
        for f in &cropped {
            waveform.extend_from_slice(&f.waveform);
            waveform.resize(waveform.len() + (frames - f.frames) * hop, 0.0);
        }
    }
    Batch {
        values,
        batch: clips.len(),
        frames,
        mels,
        waveform,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(frames: usize, mels: usize) -> Features {
        Features {
            waveform: Vec::new(),
            samples: 0,
            frames,
            n_mels: mels,
            data: (0..frames * mels).map(|i| i as f32).collect(),
        }
    }

    #[test]
    fn masks_stay_in_bounds_and_are_reproducible() {
        let aug = SpecAugment {
            time_masks: 2,
            time_mask_frames: 3,
            freq_masks: 2,
            freq_mask_bands: 2,
        };
        let mut a = ramp(10, 4);
        let mut b = ramp(10, 4);
        aug.apply(&mut a, 4, &mut SplitMix64::new(5));
        aug.apply(&mut b, 4, &mut SplitMix64::new(5));
        assert_eq!(a, b);
        let mean = (0..40).sum::<usize>() as f32 / 40.0;
        let masked = a.data.iter().filter(|&&v| v == mean).count();
        assert!(masked <= 2 * 3 * 4 + 2 * 2 * 10);
        let mut c = ramp(10, 4);
        SpecAugment::off().apply(&mut c, 4, &mut SplitMix64::new(5));
        assert_eq!(c, ramp(10, 4));
    }

    #[test]
    fn frequency_masks_cover_the_same_bands_in_every_channel() {
        let aug = SpecAugment {
            time_masks: 0,
            time_mask_frames: 0,
            freq_masks: 3,
            freq_mask_bands: 3,
        };
        // 3 channels of 8 bands: a row is 24 values.
        let mut f = ramp(6, 24);
        aug.apply(&mut f, 8, &mut SplitMix64::new(11));
        let mean = (0..6 * 24).sum::<usize>() as f32 / (6 * 24) as f32;
        let mut masked_somewhere = false;
        for row in f.data.chunks(24) {
            let masked: Vec<Vec<bool>> = row
                .chunks(8)
                .map(|c| c.iter().map(|&v| v == mean).collect())
                .collect();
            assert!(masked.iter().all(|m| *m == masked[0]), "{masked:?}");
            masked_somewhere |= masked[0].iter().any(|&m| m);
        }
        assert!(masked_somewhere);
    }

    #[test]
    fn batches_crop_and_pad() {
        let long = ramp(12, 2);
        let short = ramp(3, 2);
        let mut rng = SplitMix64::new(1);
        let b = make_batch(
            &[&long, &short],
            8,
            4,
            -100.0,
            2,
            &SpecAugment::off(),
            &mut rng,
        );
        assert_eq!((b.batch, b.frames, b.mels), (2, 8, 2));
        assert_eq!(b.values.len(), 2 * 8 * 2);
        // The crop is 8 consecutive frames of the long clip.
        let first = b.values[0];
        assert_eq!(
            b.values[..16].to_vec(),
            (0..16).map(|i| first + i as f32).collect::<Vec<_>>()
        );
        // The short clip is followed by 5 frames of silence.
        assert_eq!(&b.values[16..22], &short.data[..]);
        assert!(b.values[22..].iter().all(|&v| v == -100.0));
        let tiny = make_batch(&[&short], 8, 4, 0.0, 2, &SpecAugment::off(), &mut rng);
        assert_eq!(tiny.frames, 4, "padded to the encoder's minimum");
    }
}
