//! Mixing two clips with joined captions, as an augmentation (`fit --mix-prob`).
//!
//! A mix of clips A and B is described by one caption of each joined with "while"
//! ("a dog barks while rain falls on a roof"). Its log-mel is the sum of the two sounds in the
//! power domain, `10 log10(10^(a/10) + 10^(b/10))` per frame and band: for two independent
//! sources the cross terms of `|X + Y|^2` average out, so the mel power of the mixture is the
//! sum of the mel powers (the front-end's log-mel is `10 log10(power)` with reference 1).
//! The shorter clip contributes silence after its end.
//!
//! The joined captions must be embedded by the frozen text encoder, so a pool of mixes is drawn
//! once per run (seeded) and embedded with the other captions; during training a batch row is
//! replaced by a mix from the pool with the given probability. A mix counts as its own item:
//! it is neither a positive nor an exempt negative of the clips it was made from.

use serde::{Deserialize, Serialize};

use crate::cache::Features;
use crate::split::{fnv1a, SplitMix64};

/// Settings of the mixing augmentation (part of the run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixOptions {
    /// Chance that a training row is replaced by a mix (0 = off).
    pub probability: f64,
    /// Mixes drawn per training clip (as its first half) for the pool.
    pub per_clip: usize,
}

impl Default for MixOptions {
    fn default() -> MixOptions {
        MixOptions {
            probability: 0.0,
            per_clip: 2,
        }
    }
}

/// One mix of the pool: indices of its two clips, its caption and that caption's embedding.
#[derive(Debug, Clone)]
pub struct Mix {
    pub first: usize,
    pub second: usize,
    pub caption: String,
    pub embedding: Vec<f32>,
    /// The contrastive key of the mix (distinct from every clip's caption key).
    pub key: u64,
}

impl Mix {
    /// The mix of two clips, each with the caption drawn for it, described by the two joined;
    /// its embedding is filled in once the captions are embedded.
    fn joined((first, a): (usize, &str), (second, b): (usize, &str)) -> Mix {
        let caption = join_captions(a, b);
        Mix {
            first,
            second,
            key: fnv1a(format!("mix\u{1f}{caption}").as_bytes()),
            caption,
            embedding: Vec::new(),
        }
    }
}

/// "a dog barks." + "Rain falls." -> "a dog barks while rain falls".
pub fn join_captions(first: &str, second: &str) -> String {
    let first = first
        .trim()
        .trim_end_matches(['.', '!', ';', ','])
        .trim_end();
    let second = second
        .trim()
        .trim_end_matches(['.', '!', ';', ','])
        .trim_end();
    let mut chars = second.chars();
    let second = match (chars.next(), chars.clone().next()) {
        // Keep acronyms and names such as "TV" or "CD" as they are.
        (Some(c), Some(d)) if c.is_uppercase() && !d.is_uppercase() => {
            c.to_lowercase().collect::<String>() + chars.as_str()
        }
        _ => second.to_string(),
    };
    format!("{first} while {second}")
}

/// The mixture's log-mel (see the module docs).
pub fn mix_features(a: &Features, b: &Features) -> Features {
    assert_eq!(a.n_mels, b.n_mels, "mixing features of different mel sizes");
    let n = a.n_mels;
    let frames = a.frames.max(b.frames);
    let power = |f: &Features, i: usize| {
        if i < f.frames * n {
            10f32.powf(f.data[i] / 10.0)
        } else {
            0.0
        }
    };
    let data = (0..frames * n)
        .map(|i| 10.0 * (power(a, i) + power(b, i)).max(1e-30).log10())
        .collect();
    // Waveform encoders hear the sum of the two signals (the shorter one ends in silence).
    let mut waveform = vec![0f32; a.waveform.len().max(b.waveform.len())];
    for f in [a, b] {
        for (w, x) in waveform.iter_mut().zip(&f.waveform) {
            *w += x;
        }
    }
    Features {
        waveform,
        samples: a.samples.max(b.samples),
        frames,
        n_mels: n,
        data,
    }
}

/// Draws the pool: `per_clip` mixes with each training clip first, its partner a training clip
/// with a different caption set, one caption of each chosen at random. Returns the mixes
/// without embeddings (the caller embeds `caption`).
pub fn draw_pool(
    train: &[usize],
    captions: &dyn Fn(usize) -> Vec<String>,
    caption_key: &dyn Fn(usize) -> u64,
    per_clip: usize,
    seed: u64,
) -> Vec<Mix> {
    let mut pool = Vec::new();
    for (n, &first) in train.iter().enumerate() {
        let mut rng = SplitMix64::derive(seed, &[0x6d1c, n as u64]);
        let partners: Vec<usize> = train
            .iter()
            .copied()
            .filter(|&j| caption_key(j) != caption_key(first))
            .collect();
        if partners.is_empty() {
            continue;
        }
        let first_captions = captions(first);
        for _ in 0..per_clip {
            let second = partners[rng.below(partners.len())];
            let second_captions = captions(second);
            if first_captions.is_empty() || second_captions.is_empty() {
                continue;
            }
            pool.push(Mix::joined(
                (first, &first_captions[rng.below(first_captions.len())]),
                (second, &second_captions[rng.below(second_captions.len())]),
            ));
        }
    }
    pool
}

/// A pool of `count` foreground-on-background mixes: each puts a clip of `foregrounds` over one
/// of `backgrounds` (speech, music, rain, traffic...) with another caption set, described by
/// one caption of each joined with "while", which is how real recordings are described ("a dog
/// barks while cars pass by"). Seeded: the same inputs draw the same pool.
pub fn draw_background_pool(
    foregrounds: &[usize],
    backgrounds: &[usize],
    captions: &dyn Fn(usize) -> Vec<String>,
    caption_key: &dyn Fn(usize) -> u64,
    count: usize,
    seed: u64,
) -> Vec<Mix> {
    let mut pool = Vec::new();
    if foregrounds.is_empty() || backgrounds.is_empty() {
        return pool;
    }
    let mut rng = SplitMix64::derive(seed, &[0x6267, count as u64]);
    // A bounded number of draws: a pool whose every pair shares captions ends instead of looping.
    for _ in 0..count * 4 {
        if pool.len() == count {
            break;
        }
        let first = foregrounds[rng.below(foregrounds.len())];
        let second = backgrounds[rng.below(backgrounds.len())];
        let (a, b) = (captions(first), captions(second));
        if caption_key(first) == caption_key(second) || a.is_empty() || b.is_empty() {
            continue;
        }
        pool.push(Mix::joined(
            (first, &a[rng.below(a.len())]),
            (second, &b[rng.below(b.len())]),
        ));
    }
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_pools_pair_foregrounds_with_backgrounds() {
        let captions = |i: usize| vec![format!("sound {i}")];
        let key = |i: usize| i as u64;
        let pool = draw_background_pool(&[0, 1, 2], &[7, 8], &captions, &key, 20, 3);
        assert_eq!(pool.len(), 20);
        for m in &pool {
            assert!([0, 1, 2].contains(&m.first) && [7, 8].contains(&m.second));
            assert_eq!(
                m.caption,
                format!("sound {} while sound {}", m.first, m.second)
            );
        }
        // Seeded, and nothing to draw when every background shares the foreground's captions.
        let again = draw_background_pool(&[0, 1, 2], &[7, 8], &captions, &key, 20, 3);
        assert_eq!(
            pool.iter().map(|m| (m.first, m.second)).collect::<Vec<_>>(),
            again
                .iter()
                .map(|m| (m.first, m.second))
                .collect::<Vec<_>>()
        );
        assert!(draw_background_pool(&[4], &[4], &captions, &key, 5, 0).is_empty());
    }

    #[test]
    fn captions_join_with_while() {
        assert_eq!(
            join_captions("A dog barks.", "Rain falls on a roof."),
            "A dog barks while rain falls on a roof"
        );
        assert_eq!(
            join_captions("  birds sing ", "TV static hisses"),
            "birds sing while TV static hisses"
        );
        assert_eq!(join_captions("a", "b"), "a while b");
    }

    fn features(frames: usize, value: f32) -> Features {
        Features {
            waveform: Vec::new(),
            samples: 0,
            frames,
            n_mels: 2,
            data: vec![value; frames * 2],
        }
    }

    #[test]
    fn mixing_adds_power() {
        // Equal levels: +10 log10(2) = +3.0103 dB; against the -100 dB floor: unchanged
        // to within 1e-5 dB; the shorter clip adds nothing after its end.
        let m = mix_features(&features(3, -20.0), &features(2, -20.0));
        assert_eq!(m.frames, 3);
        assert!((m.data[0] + 16.989_7).abs() < 1e-3, "{}", m.data[0]);
        assert!((m.data[5] + 20.0).abs() < 1e-5);
        let m = mix_features(&features(2, -30.0), &features(2, -100.0));
        assert!((m.data[0] + 30.0).abs() < 1e-5);
        // 0 dB + -10 dB = 10 log10(1.1) = 0.4139 dB
        let m = mix_features(&features(1, 0.0), &features(1, -10.0));
        assert!((m.data[0] - 0.413_927).abs() < 1e-4);
    }

    #[test]
    fn pools_pair_clips_with_different_captions_reproducibly() {
        let train = vec![0, 1, 2, 3];
        let captions = |i: usize| vec![format!("sound {i}"), format!("noise {i}")];
        // Clips 0 and 1 share a caption set, so they never mix with each other.
        let key = |i: usize| if i < 2 { 7 } else { i as u64 };
        let pool = draw_pool(&train, &captions, &key, 3, 11);
        assert_eq!(pool.len(), 12);
        for m in &pool {
            assert_ne!(key(m.first), key(m.second));
            assert!(m.caption.contains(" while "));
            assert!(m.caption.contains(&m.first.to_string()));
        }
        let again = draw_pool(&train, &captions, &key, 3, 11);
        assert_eq!(
            pool.iter().map(|m| &m.caption).collect::<Vec<_>>(),
            again.iter().map(|m| &m.caption).collect::<Vec<_>>()
        );
    }
}
