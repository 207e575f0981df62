//! What `fit-head` validates on, and how: class retrieval for held-out phrasings, the DCASE
//! metrics for the clips' own captions, the open-world split of both (ESC-50's queries with
//! and without the other sources' clips as distractors), and the report on held-out concepts.

use std::path::Path;

use anyhow::{Context, Result};

use super::train::clip_embeddings;
use crate::fit::EpochLog;
use crate::metrics::{self, ClassRetrieval};
use crate::model::Contrastive;

use super::frozen::Item;

/// The source whose clips and classes the open-world metrics treat as the reference set
/// (ESC-50): its queries are scored with and without the other sources' clips as distractors.
pub(super) const REFERENCE_SOURCE: &str = "esc50";

/// The validation clips' items and every query, embedded.
pub(super) struct Validation<'a> {
    pub(super) items: &'a [Item],
    pub(super) clip_class: Vec<usize>,
    /// Per clip: from the reference source (ESC-50)?
    pub(super) clip_is_reference: Vec<bool>,
    /// Per class query: of a class the reference source has?
    pub(super) query_is_reference: Vec<bool>,
    /// (validation clip, caption embedding): the DCASE metrics' queries.
    pub(super) caption_queries: Vec<(usize, Vec<f32>)>,
    /// (class, query embedding): held-out phrasings.
    pub(super) class_queries: Vec<(usize, Vec<f32>)>,
}

impl Validation<'_> {
    /// Values per window of the backbone's output.
    fn dim(&self) -> usize {
        self.items
            .first()
            .map_or(0, |i| i.windows.len() / i.count.max(1))
    }
}

/// Validation metrics into `log`: class retrieval for the held-out queries (or, without them,
/// the captions), DCASE metrics for the captions.
pub(super) fn validate(model: &Contrastive, v: &Validation, dim: usize, log: &mut EpochLog) {
    let clips = clip_embeddings(model, v.items, dim);
    let captions: Vec<Vec<f32>> = v.caption_queries.iter().map(|(_, e)| e.clone()).collect();
    let caption_clip: Vec<usize> = v.caption_queries.iter().map(|(c, _)| *c).collect();
    let sim = metrics::similarity(&captions, &clips);
    let t2a = metrics::text_to_audio(&sim, &caption_clip, clips.len());
    log.t2a_r1 = Some(t2a.r1);
    log.t2a_r5 = Some(t2a.r5);
    log.t2a_r10 = Some(t2a.r10);
    log.t2a_map10 = Some(t2a.map10);
    let class: ClassRetrieval = if v.class_queries.is_empty() {
        let query_class: Vec<usize> = caption_clip.iter().map(|&c| v.clip_class[c]).collect();
        metrics::class_retrieval(&sim, &query_class, &v.clip_class)
    } else {
        let queries: Vec<Vec<f32>> = v.class_queries.iter().map(|(_, e)| e.clone()).collect();
        let query_class: Vec<usize> = v.class_queries.iter().map(|(c, _)| *c).collect();
        metrics::class_retrieval(
            &metrics::similarity(&queries, &clips),
            &query_class,
            &v.clip_class,
        )
    };
    log.class_p1 = Some(class.p1);
    log.class_map10 = Some(class.map10);
    log.class_p10 = Some(class.p10);
    log.open_world = open_world(v, &clips, &caption_clip, &captions);
}

/// The open-world metrics, when the gallery holds reference (ESC-50) clips and others.
fn open_world(
    v: &Validation,
    clips: &[Vec<f32>],
    caption_clip: &[usize],
    captions: &[Vec<f32>],
) -> Option<crate::fit::OpenWorldMetrics> {
    let reference_clips = v.clip_is_reference.iter().filter(|&&r| r).count();
    if reference_clips == 0 || reference_clips == clips.len() || v.class_queries.is_empty() {
        return None;
    }
    let scored = |queries: &[&(usize, Vec<f32>)], gallery: &[usize]| {
        let q: Vec<Vec<f32>> = queries.iter().map(|(_, e)| e.clone()).collect();
        let g: Vec<Vec<f32>> = gallery.iter().map(|&c| clips[c].clone()).collect();
        let query_class: Vec<usize> = queries.iter().map(|(c, _)| *c).collect();
        let clip_class: Vec<usize> = gallery.iter().map(|&c| v.clip_class[c]).collect();
        metrics::class_retrieval(&metrics::similarity(&q, &g), &query_class, &clip_class)
    };
    let (reference_queries, other_queries): (Vec<_>, Vec<_>) = v
        .class_queries
        .iter()
        .zip(&v.query_is_reference)
        .partition(|(_, &r)| r);
    let reference_queries: Vec<&(usize, Vec<f32>)> =
        reference_queries.into_iter().map(|(q, _)| q).collect();
    let other_queries: Vec<&(usize, Vec<f32>)> =
        other_queries.into_iter().map(|(q, _)| q).collect();
    let everything: Vec<usize> = (0..clips.len()).collect();
    let reference: Vec<usize> = everything
        .iter()
        .copied()
        .filter(|&c| v.clip_is_reference[c])
        .collect();
    let alone = scored(&reference_queries, &reference);
    let with_distractors = scored(&reference_queries, &everything);
    let others = (!other_queries.is_empty()).then(|| scored(&other_queries, &everything));
    // The other sources' clips, each found by its own captions among all clips.
    let (other_captions, other_targets): (Vec<Vec<f32>>, Vec<usize>) = captions
        .iter()
        .zip(caption_clip)
        .filter(|(_, &c)| !v.clip_is_reference[c])
        .map(|(e, &c)| (e.clone(), c))
        .unzip();
    let t2a = metrics::text_to_audio(
        &metrics::similarity(&other_captions, clips),
        &other_targets,
        clips.len(),
    );
    Some(crate::fit::OpenWorldMetrics {
        reference_alone_p1: alone.p1,
        reference_alone_map10: alone.map10,
        reference_with_distractors_p1: with_distractors.p1,
        reference_with_distractors_map10: with_distractors.map10,
        others_p1: others.as_ref().map(|m| m.p1),
        others_map10: others.as_ref().map(|m| m.map10),
        others_caption_r1: t2a.r1,
        others_caption_r10: t2a.r10,
        others_caption_map10: t2a.map10,
        gallery_clips: clips.len(),
        reference_clips,
    })
}

/// The run's report on concepts that never trained (`--holdout-classes`).
pub(super) const HOLDOUT_FILE: &str = "holdout.tsv";

/// For each query of a held-out class: its class, the query, the best clip's score, and the
/// classes of the five best clips of the validation gallery, best first.
pub(super) fn write_holdout_report(
    model: &Contrastive,
    v: &Validation,
    queries: &[(usize, String)],
    classes: &[String],
    holdout: &[String],
    path: &Path,
) -> Result<()> {
    let clips = clip_embeddings(model, v.items, v.dim());
    let mut out = String::from("class\tquery\ttop score\ttop 5 classes\n");
    for ((class, text), (_, embedding)) in queries.iter().zip(&v.class_queries) {
        if !holdout.contains(&classes[*class]) {
            continue;
        }
        let sim = metrics::similarity(std::slice::from_ref(embedding), &clips);
        let mut order: Vec<usize> = (0..clips.len()).collect();
        order.sort_by(|&a, &b| sim[b].total_cmp(&sim[a]));
        let top: Vec<&str> = order
            .iter()
            .take(5)
            .map(|&c| classes.get(v.clip_class[c]).map_or("?", String::as_str))
            .collect();
        out += &format!(
            "{}\t{text}\t{:.3}\t{}\n",
            classes[*class],
            sim[order[0]],
            top.join(", ")
        );
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}
