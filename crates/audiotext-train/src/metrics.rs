//! Retrieval metrics of the DCASE language-based audio retrieval task, both directions.
//!
//! Inputs are similarity matrices (row-major, one row per query) and, for each caption, the
//! index of the clip it describes. Definitions:
//!
//! - **Ranking.** Candidates are sorted by descending similarity; ties are broken by candidate
//!   index (a stable sort), so the result does not depend on luck. The rank of a candidate is its
//!   1-based position in that order.
//! - **Text-to-audio** (DCASE 2022-2024 task 6b / task 8). Every caption is a query; its only
//!   relevant item is the clip it was written for. `R@k` is the fraction of captions whose clip
//!   ranks within `k`. `mAP@10` is the mean over captions of `AP@10 = 1/rank` when the clip
//!   ranks within 10, else 0 (with one relevant item, average precision is the reciprocal rank).
//! - **Audio-to-text.** Every clip is a query; its relevant items are all its captions (usually
//!   5). `R@k` is the fraction of clips with at least one of their captions within `k`.
//!   `mAP@10` is the mean over clips of `AP@10 = (1/n) * sum over k <= 10 of P@k * rel(k)`,
//!   where `rel(k)` is 1 when the caption at rank k is relevant, `P@k` is the fraction of
//!   relevant captions among the first k, and `n = min(number of relevant captions, 10)`.
//! - **Class precision** (datasets with labels): for a caption query, the fraction of the first
//!   k clips that share the class of the caption's clip; a useful complement where many clips
//!   share one caption text (ESC-50's captions are written per class, so the strict metrics
//!   above cannot tell apart clips of one class).

use serde::Serialize;

/// Recall at 1, 5, 10 and mAP@10 of one retrieval direction, all in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct RetrievalMetrics {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub map10: f64,
    /// Mean rank of the first relevant item (1 = always on top).
    pub mean_rank: f64,
    /// Number of queries.
    pub queries: usize,
}

/// The candidates of one query sorted by descending score, ties by index.
fn order(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// 1-based rank of `target` among `scores` under [`order`]'s rule, without sorting.
pub fn rank_of(scores: &[f32], target: usize) -> usize {
    let s = scores[target];
    1 + scores
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x.total_cmp(&s).is_gt() || (x.total_cmp(&s).is_eq() && i < target))
        .count()
}

fn check_shape(sim: &[f32], rows: usize, cols: usize, what: &str) {
    assert_eq!(
        sim.len(),
        rows * cols,
        "{what}: similarity matrix has {} values, expected {rows} x {cols}",
        sim.len()
    );
}

/// Text-to-audio metrics. `sim` is `captions x clips` (row = caption query);
/// `caption_clip[q]` is the clip of caption `q`.
pub fn text_to_audio(sim: &[f32], caption_clip: &[usize], clips: usize) -> RetrievalMetrics {
    let captions = caption_clip.len();
    check_shape(sim, captions, clips, "text_to_audio");
    let mut m = RetrievalMetrics {
        queries: captions,
        ..Default::default()
    };
    if captions == 0 {
        return m;
    }
    for (q, &clip) in caption_clip.iter().enumerate() {
        let rank = rank_of(&sim[q * clips..(q + 1) * clips], clip);
        m.r1 += (rank <= 1) as u8 as f64;
        m.r5 += (rank <= 5) as u8 as f64;
        m.r10 += (rank <= 10) as u8 as f64;
        if rank <= 10 {
            m.map10 += 1.0 / rank as f64;
        }
        m.mean_rank += rank as f64;
    }
    let n = captions as f64;
    m.r1 /= n;
    m.r5 /= n;
    m.r10 /= n;
    m.map10 /= n;
    m.mean_rank /= n;
    m
}

/// Audio-to-text metrics. `sim` is `clips x captions` (row = clip query);
/// `caption_clip[q]` is the clip of caption `q`.
pub fn audio_to_text(sim: &[f32], caption_clip: &[usize], clips: usize) -> RetrievalMetrics {
    let captions = caption_clip.len();
    check_shape(sim, clips, captions, "audio_to_text");
    let mut m = RetrievalMetrics {
        queries: clips,
        ..Default::default()
    };
    if clips == 0 {
        return m;
    }
    let mut counted = 0usize;
    for c in 0..clips {
        let relevant = caption_clip.iter().filter(|&&x| x == c).count();
        if relevant == 0 {
            continue;
        }
        counted += 1;
        let ranked = order(&sim[c * captions..(c + 1) * captions]);
        let first = ranked
            .iter()
            .position(|&q| caption_clip[q] == c)
            .expect("a relevant caption")
            + 1;
        m.r1 += (first <= 1) as u8 as f64;
        m.r5 += (first <= 5) as u8 as f64;
        m.r10 += (first <= 10) as u8 as f64;
        m.mean_rank += first as f64;
        let mut hits = 0usize;
        let mut ap = 0.0;
        for (k, &q) in ranked.iter().take(10).enumerate() {
            if caption_clip[q] == c {
                hits += 1;
                ap += hits as f64 / (k + 1) as f64;
            }
        }
        m.map10 += ap / relevant.min(10) as f64;
    }
    let n = counted.max(1) as f64;
    m.queries = counted;
    m.r1 /= n;
    m.r5 /= n;
    m.r10 /= n;
    m.map10 /= n;
    m.mean_rank /= n;
    m
}

/// Text-to-audio class precision at `k`: mean over caption queries of the fraction of the top
/// `k` clips whose class equals the class of the caption's clip. `clip_class[c]` is a class
/// index per clip.
pub fn class_precision_at(
    sim: &[f32],
    caption_clip: &[usize],
    clip_class: &[usize],
    k: usize,
) -> f64 {
    let clips = clip_class.len();
    check_shape(sim, caption_clip.len(), clips, "class_precision_at");
    if caption_clip.is_empty() || k == 0 {
        return 0.0;
    }
    let k = k.min(clips);
    let mut total = 0.0;
    for (q, &clip) in caption_clip.iter().enumerate() {
        let ranked = order(&sim[q * clips..(q + 1) * clips]);
        let hits = ranked
            .iter()
            .take(k)
            .filter(|&&c| clip_class[c] == clip_class[clip])
            .count();
        total += hits as f64 / k as f64;
    }
    total / caption_clip.len() as f64
}

/// Class-level text-to-audio retrieval: every clip of the query's class is relevant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ClassRetrieval {
    /// Fraction of queries whose top clip is of the query's class.
    pub p1: f64,
    /// Mean over queries of the fraction of the top 10 clips of the query's class.
    pub p10: f64,
    /// Mean over queries of AP@10: the sum of precision@k at each relevant rank k <= 10,
    /// divided by min(relevant clips, 10) (so a perfect top 10 scores 1 however many clips
    /// the class has).
    pub map10: f64,
    /// Queries scored: those whose class has at least one clip.
    pub queries: usize,
    /// Queries left out because no clip is of their class (nothing to find: no precision).
    pub without_clips: usize,
}

/// [`ClassRetrieval`] for `sim` (`queries x clips`), `query_class[q]` the class of query `q`
/// and `clip_class[c]` that of clip `c`.
pub fn class_retrieval(sim: &[f32], query_class: &[usize], clip_class: &[usize]) -> ClassRetrieval {
    let clips = clip_class.len();
    check_shape(sim, query_class.len(), clips, "class_retrieval");
    let mut m = ClassRetrieval::default();
    for (q, &class) in query_class.iter().enumerate() {
        let relevant = clip_class.iter().filter(|&&c| c == class).count();
        if relevant == 0 {
            m.without_clips += 1;
            continue;
        }
        m.queries += 1;
        let ranked = order(&sim[q * clips..(q + 1) * clips]);
        let mut hits = 0usize;
        let mut ap = 0.0;
        for (k, &c) in ranked.iter().take(10).enumerate() {
            if clip_class[c] == class {
                hits += 1;
                ap += hits as f64 / (k + 1) as f64;
            }
        }
        if clip_class[ranked[0]] == class {
            m.p1 += 1.0;
        }
        m.p10 += hits as f64 / 10f64.min(clips as f64);
        m.map10 += ap / relevant.min(10) as f64;
    }
    if m.queries == 0 {
        return m;
    }
    let n = m.queries as f64;
    m.p1 /= n;
    m.p10 /= n;
    m.map10 /= n;
    m
}

/// `a @ b^T` for row-major `a` (`n x d`) and `b` (`m x d`): cosine similarities when the rows
/// are L2-normalised.
pub fn similarity(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            out.push(x.iter().zip(y).map(|(p, q)| p * q).sum());
        }
    }
    out
}

/// Transposes a row-major `rows x cols` matrix.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn text_to_audio_by_hand() {
        // 3 clips; captions 0,1 -> clip 0, caption 2 -> clip 1, caption 3 -> clip 2.
        let caption_clip = [0, 0, 1, 2];
        #[rustfmt::skip]
        let sim = [
            0.9, 0.1, 0.2, // clip 0 rank 1
            0.1, 0.5, 0.3, // clip 0 rank 3
            0.8, 0.7, 0.1, // clip 1 rank 2
            0.4, 0.4, 0.4, // clip 2 rank 3: ties are broken by index
        ];
        let m = text_to_audio(&sim, &caption_clip, 3);
        assert_eq!(m.queries, 4);
        assert!(close(m.r1, 0.25));
        assert!(close(m.r5, 1.0));
        assert!(close(m.r10, 1.0));
        assert!(close(m.map10, (1.0 + 1.0 / 3.0 + 0.5 + 1.0 / 3.0) / 4.0));
        assert!(close(m.mean_rank, (1.0 + 3.0 + 2.0 + 3.0) / 4.0));
    }

    #[test]
    fn map10_is_zero_beyond_rank_ten() {
        // One caption, 12 clips, its clip (0) scores lowest: rank 12.
        let mut sim = vec![1.0f32; 12];
        sim[0] = 0.0;
        let m = text_to_audio(&sim, &[0], 12);
        assert_eq!(
            (m.r1, m.r5, m.r10, m.map10, m.mean_rank),
            (0.0, 0.0, 0.0, 0.0, 12.0)
        );
        // Rank 10 still counts: 1/10.
        let mut sim = vec![0.0f32; 12];
        for s in sim.iter_mut().take(9).skip(1) {
            *s = 1.0;
        }
        sim[9] = 1.0;
        let m = text_to_audio(&sim, &[11], 12);
        assert!(close(m.map10, 0.0));
        sim[11] = 0.5;
        let m = text_to_audio(&sim, &[11], 12);
        assert!(close(m.map10, 0.1) && close(m.r10, 1.0) && close(m.r5, 0.0));
    }

    #[test]
    fn audio_to_text_by_hand() {
        // 2 clips, 4 captions: 0,1 -> clip 0; 2,3 -> clip 1.
        let caption_clip = [0, 0, 1, 1];
        #[rustfmt::skip]
        let sim = [
            // clip 0 ranks captions 2, 0, 3, 1: relevant at ranks 2 and 4.
            0.8, 0.1, 0.9, 0.5,
            // clip 1 ranks captions 3, 2, 0, 1: relevant at ranks 1 and 2.
            0.3, 0.2, 0.7, 0.9,
        ];
        let m = audio_to_text(&sim, &caption_clip, 2);
        assert_eq!(m.queries, 2);
        assert!(close(m.r1, 0.5));
        assert!(close(m.r5, 1.0));
        // clip 0: (1/2 + 2/4) / 2 = 0.5; clip 1: (1/1 + 2/2) / 2 = 1.
        assert!(close(m.map10, 0.75));
        assert!(close(m.mean_rank, 1.5));
    }

    #[test]
    fn class_precision_and_helpers() {
        // 2 captions, 4 clips with classes [a, a, b, b].
        let clip_class = [0, 0, 1, 1];
        #[rustfmt::skip]
        let sim = [
            0.9, 0.1, 0.8, 0.2, // caption of clip 0: top 2 = clips 0 (a), 2 (b)
            0.1, 0.2, 0.3, 0.4, // caption of clip 3: top 2 = clips 3 (b), 2 (b)
        ];
        assert!(close(
            class_precision_at(&sim, &[0, 3], &clip_class, 2),
            (0.5 + 1.0) / 2.0
        ));
        assert!(close(
            class_precision_at(&sim, &[0, 3], &clip_class, 1),
            1.0
        ));
        let a = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let b = vec![vec![0.6, 0.8]];
        assert_eq!(similarity(&a, &b), vec![0.6, 0.8]);
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        assert_eq!(rank_of(&[0.5, 0.5, 0.5], 2), 3);
        assert_eq!(rank_of(&[0.5, 0.9, 0.5], 0), 2);
    }
    #[test]
    fn class_retrieval_scores_ranks_by_class() {
        // Clips of classes [0, 1, 0, 1]; query 0 (class 0) ranks clips 0, 1, 2, 3;
        // query 1 (class 1) ranks 0, 2, 1, 3.
        let sim = [0.9, 0.8, 0.7, 0.1, 0.9, 0.2, 0.8, 0.1];
        let m = class_retrieval(&sim, &[0, 1], &[0, 1, 0, 1]);
        assert_eq!(m.queries, 2);
        assert!((m.p1 - 0.5).abs() < 1e-12);
        // Query 0: hits at ranks 1 and 3: (1 + 2/3) / 2; query 1: ranks 3 and 4: (1/3 + 2/4) / 2.
        let want = ((1.0 + 2.0 / 3.0) / 2.0 + (1.0 / 3.0 + 0.5) / 2.0) / 2.0;
        assert!((m.map10 - want).abs() < 1e-12, "{}", m.map10);
        // Four clips: precision over the 4 there are, 2 of each class.
        assert!((m.p10 - 0.5).abs() < 1e-12);
        // A query of a class without clips is left out, and counted as such; none left: 0s.
        let m = class_retrieval(&[0.9, 0.8, 0.5, 0.4], &[0, 7], &[0, 1]);
        assert_eq!((m.queries, m.without_clips, m.p1), (1, 1, 1.0));
        let m = class_retrieval(&[0.5, 0.4], &[7], &[0, 1]);
        assert_eq!(
            (m.queries, m.without_clips, m.p1, m.map10),
            (0, 1, 0.0, 0.0)
        );
    }
}
