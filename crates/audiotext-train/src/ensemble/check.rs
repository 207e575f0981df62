//! The check of `ensemble`.
//!
//! After writing, the ensemble and every member are loaded the way the extension loads them
//! (`Bundle`, sha256 checks, ONNX Runtime sessions) and run on generated log-mel windows (full
//! length, shorter, and shorter than every member's minimum) and a few captions. The ensemble's
//! embeddings must equal the members' concatenated and scaled, and its audio-text cosines the
//! mean of the members', within 1e-5; otherwise the command fails and removes the manifest, so
//! that no wrong ensemble can be registered.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::split::SplitMix64;
use audiotext_core::audio::LogMel;
use audiotext_core::model::manifest::AudioSection;
use audiotext_core::Bundle;

use crate::run::ort_runtime;

use super::*;

/// Captions the check embeds.
pub(super) const CHECK_CAPTIONS: [&str; 4] = [
    "a dog barks",
    "rain falls on a tin roof",
    "a car passes by on a wet road while people talk",
    "birds",
];

/// Log-mel windows with some structure (dB values in about [-100, 0]): two full windows, one
/// shorter, and one of 3 frames, shorter than any encoder's minimum.
pub(super) fn check_windows(audio: &AudioSection) -> Vec<LogMel> {
    let fe = &audio.front_end;
    let full = (f64::from(audio.windowing.clip_seconds) * f64::from(fe.sample_rate)
        / fe.hop_length as f64) as usize
        + 1;
    let mut rng = SplitMix64::new(11);
    [full, full, full * 2 / 5 + 1, 3]
        .into_iter()
        .enumerate()
        .map(|(k, frames)| LogMel {
            frames,
            n_mels: fe.n_mels,
            data: (0..frames * fe.n_mels)
                .map(|i| {
                    let (t, m) = (i / fe.n_mels, i % fe.n_mels);
                    let tone = ((t as f64 * 0.05 * (k + 1) as f64).sin() * 20.0) as f32;
                    -60.0 + tone - m as f32 * 0.3 + (rng.next_f64() as f32 - 0.5) * 10.0
                })
                .collect(),
        })
        .collect()
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Largest |ensemble - concat(members) * scale| over every row and component.
pub(super) fn concat_diff(ensemble: &[Vec<f32>], members: &[Vec<Vec<f32>>], scale: f32) -> f32 {
    let mut worst = 0f32;
    for (row, got) in ensemble.iter().enumerate() {
        let expected = members
            .iter()
            .flat_map(|m| m[row].iter().map(|x| x * scale));
        let len = members.iter().map(|m| m[row].len()).sum::<usize>();
        if got.len() != len {
            return f32::INFINITY;
        }
        for (g, e) in got.iter().zip(expected) {
            worst = worst.max((g - e).abs());
        }
    }
    worst
}

/// Runs the ensemble at `out` and its members the way the extension does, on the same windows
/// and captions; fails when they disagree by more than [`TOLERANCE`].
pub(super) fn check_ensemble(out: &Path, members: &[Member], ort: Option<&Path>) -> Result<Check> {
    ort_runtime(ort).context("the check needs ONNX Runtime; pass --ort FILE")?;
    let open = |dir: &Path| -> Result<Arc<Bundle>> {
        Bundle::open(dir).with_context(|| format!("cannot open the bundle {}", dir.display()))
    };
    let ensemble = open(out)?;
    let audio_section = ensemble
        .manifest
        .audio
        .clone()
        .context("the ensemble has no audio section")?;
    let windows = check_windows(&audio_section);
    let refs: Vec<&LogMel> = windows.iter().collect();
    let ensemble_audio = ensemble.audio_encoder()?.embed_windows(&refs)?;
    let text_encoder = ensemble.text_encoder()?;
    let ensemble_text = text_encoder.embed(&CHECK_CAPTIONS)?;
    let provider = text_encoder.placement.provider.to_string();

    let mut member_audio = Vec::new();
    let mut member_text = Vec::new();
    for m in members {
        let bundle = open(&m.dir)?;
        member_audio.push(
            bundle
                .audio_encoder()
                .with_context(|| format!("{}: audio encoder", m.label()))?
                .embed_windows(&refs)?,
        );
        member_text.push(
            bundle
                .text_encoder()
                .with_context(|| format!("{}: text encoder", m.label()))?
                .embed(&CHECK_CAPTIONS)?,
        );
    }
    let scale = ensemble_scale(members.len());
    let audio_max_diff = concat_diff(&ensemble_audio, &member_audio, scale);
    let text_max_diff = concat_diff(&ensemble_text, &member_text, scale);
    let mut score_max_diff = 0f32;
    for w in 0..windows.len() {
        for c in 0..CHECK_CAPTIONS.len() {
            let ensemble_score = dot(&ensemble_audio[w], &ensemble_text[c]);
            let member_mean = (0..members.len())
                .map(|i| dot(&member_audio[i][w], &member_text[i][c]))
                .sum::<f32>()
                / members.len() as f32;
            score_max_diff = score_max_diff.max((ensemble_score - member_mean).abs());
        }
    }
    let check = Check {
        audio_max_diff,
        text_max_diff,
        score_max_diff,
        windows: windows.len(),
        captions: CHECK_CAPTIONS.len(),
        provider,
    };
    // NaN compares false: test for "within", not for "beyond".
    let within = |d: f32| d <= TOLERANCE;
    if !(within(audio_max_diff) && within(text_max_diff) && within(score_max_diff)) {
        bail!(
            "ensemble vs concat(members)/sqrt({}): max |diff| audio {audio_max_diff:.3e}, text {text_max_diff:.3e}, cosine vs mean of members {score_max_diff:.3e}; the tolerance is {TOLERANCE:.0e}",
            members.len()
        );
    }
    Ok(check)
}
