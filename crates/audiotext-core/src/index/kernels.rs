//! The inner loops: int8 dot products, Hamming distances and float32 dot products, written
//! as plain loops that LLVM vectorizes, and compiled once more for AVX2 and once for AVX-512
//! (picked at run time), so one binary uses the widest registers the CPU has.

use std::sync::OnceLock;

use super::quantize::INT8_SCALE_BYTES;

/// Scores every code of a chunk against a query code, into `scores` (one per code).
/// `codes` holds `scores.len()` codes of `stride` bytes.
type ChunkScorer = unsafe fn(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]);

/// Approximate cosine of each int8 code with the int8 query code (scales included).
pub fn score_int8(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    static PICKED: OnceLock<ChunkScorer> = OnceLock::new();
    let scorer = PICKED.get_or_init(|| pick(int8_portable, int8_avx2, int8_avx512));
    check_shapes(codes, stride, query, scores);
    // SAFETY: `pick` returned a version whose target features this CPU has.
    unsafe { scorer(codes, stride, query, scores) }
}

/// Minus the Hamming distance of each binary code to the query code: higher is closer.
pub fn score_binary(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    static PICKED: OnceLock<ChunkScorer> = OnceLock::new();
    let scorer = PICKED.get_or_init(|| pick(binary_portable, binary_avx2, binary_avx512));
    check_shapes(codes, stride, query, scores);
    // SAFETY: as above.
    unsafe { scorer(codes, stride, query, scores) }
}

fn check_shapes(codes: &[u8], stride: usize, query: &[u8], scores: &[f32]) {
    assert!(query.len() == stride && codes.len() == stride * scores.len());
}

#[allow(unused_variables)]
fn pick(portable: ChunkScorer, avx2: ChunkScorer, avx512: ChunkScorer) -> ChunkScorer {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
        {
            return avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return avx2;
        }
    }
    portable
}

#[inline(always)]
fn int8_loop(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    let query_scale = scale_of(query);
    let query_codes = as_i8(&query[INT8_SCALE_BYTES..]);
    for (code, score) in codes.chunks_exact(stride).zip(scores.iter_mut()) {
        let dot: i32 = as_i8(&code[INT8_SCALE_BYTES..])
            .iter()
            .zip(query_codes)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        *score = scale_of(code) * query_scale * dot as f32;
    }
}

#[inline(always)]
fn binary_loop(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    for (code, score) in codes.chunks_exact(stride).zip(scores.iter_mut()) {
        let distance: u32 = code
            .iter()
            .zip(query)
            .map(|(&a, &b)| (a ^ b).count_ones())
            .sum();
        *score = -(distance as f32);
    }
}

unsafe fn int8_portable(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    int8_loop(codes, stride, query, scores)
}
unsafe fn binary_portable(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    binary_loop(codes, stride, query, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn int8_avx2(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    int8_loop(codes, stride, query, scores)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn binary_avx2(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    binary_loop(codes, stride, query, scores)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx2,fma,popcnt")]
unsafe fn int8_avx512(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    int8_loop(codes, stride, query, scores)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx2,fma,popcnt")]
unsafe fn binary_avx512(codes: &[u8], stride: usize, query: &[u8], scores: &mut [f32]) {
    binary_loop(codes, stride, query, scores)
}
#[cfg(not(target_arch = "x86_64"))]
use {
    binary_portable as binary_avx2, binary_portable as binary_avx512, int8_portable as int8_avx2,
    int8_portable as int8_avx512,
};

fn scale_of(code: &[u8]) -> f32 {
    f32::from_le_bytes([code[0], code[1], code[2], code[3]])
}

fn as_i8(bytes: &[u8]) -> &[i8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

/// `Σ a_i b_i` with eight independent sums, so LLVM can vectorize a float reduction (it may not
/// reorder one running sum); `a` and `b` have the same length.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut sums = [0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_body, b_tail) = b.split_at(a_body.len().min(b.len()));
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

/// `Σ a_i b_i` and `Σ a_i²` of a little-endian float32 BLOB `a` against `b`, read straight from
/// the bytes (no copy, no allocation): the exact scan's per-row work. `a` holds `4 * b.len()`
/// bytes.
pub fn dot_and_norm_le_bytes(a: &[u8], b: &[f32]) -> (f32, f32) {
    type Kernel = unsafe fn(&[u8], &[f32]) -> (f32, f32);
    static PICKED: OnceLock<Kernel> = OnceLock::new();
    let kernel = PICKED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return dot_and_norm_avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return dot_and_norm_avx2;
            }
        }
        dot_and_norm_portable
    });
    assert_eq!(a.len(), b.len() * 4);
    // SAFETY: the CPU has the features of the version picked.
    unsafe { kernel(a, b) }
}

unsafe fn dot_and_norm_portable(a: &[u8], b: &[f32]) -> (f32, f32) {
    dot_and_norm_loop(a, b)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_and_norm_avx2(a: &[u8], b: &[f32]) -> (f32, f32) {
    dot_and_norm_loop(a, b)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_and_norm_avx512(a: &[u8], b: &[f32]) -> (f32, f32) {
    dot_and_norm_loop(a, b)
}

#[inline(always)]
fn dot_and_norm_loop(a: &[u8], b: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let mut dots = [0f32; LANES];
    let mut norms = [0f32; LANES];
    let whole = b.len() - b.len() % LANES;
    for (x, y) in a[..whole * 4]
        .chunks_exact(LANES * 4)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for lane in 0..LANES {
            let v = f32::from_le_bytes([
                x[lane * 4],
                x[lane * 4 + 1],
                x[lane * 4 + 2],
                x[lane * 4 + 3],
            ]);
            dots[lane] += v * y[lane];
            norms[lane] += v * v;
        }
    }
    let (mut dot, mut norm) = (dots.iter().sum::<f32>(), norms.iter().sum::<f32>());
    for (x, y) in a[whole * 4..].chunks_exact(4).zip(&b[whole..]) {
        let v = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        dot += v * y;
        norm += v * v;
    }
    (dot, norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Quantizer;

    fn codes(quantizer: Quantizer, vectors: &[Vec<f32>]) -> Vec<u8> {
        let stride = quantizer.code_bytes(vectors[0].len());
        let mut out = vec![0u8; stride * vectors.len()];
        for (v, code) in vectors.iter().zip(out.chunks_exact_mut(stride)) {
            quantizer.encode(v, code);
        }
        out
    }

    fn vectors(n: usize, dim: usize, seed: u32) -> Vec<Vec<f32>> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..dim)
                    .map(|_| {
                        state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                        (state >> 8) as f32 / (1 << 24) as f32 - 0.5
                    })
                    .collect();
                crate::index::quantize::unit(&v).unwrap()
            })
            .collect()
    }

    #[test]
    fn every_version_scores_alike() {
        for dim in [1, 7, 384, 385] {
            let data = vectors(33, dim, dim as u32);
            let query = &vectors(1, dim, 99)[0];
            for quantizer in Quantizer::ALL {
                let stride = quantizer.code_bytes(dim);
                let all = codes(quantizer, &data);
                let q = codes(quantizer, std::slice::from_ref(query));
                let loop_fn: fn(&[u8], usize, &[u8], &mut [f32]) = match quantizer {
                    Quantizer::Int8 => int8_loop,
                    Quantizer::Binary => binary_loop,
                };
                let mut reference = vec![0f32; data.len()];
                loop_fn(&all, stride, &q, &mut reference);
                let mut dispatched = vec![0f32; data.len()];
                match quantizer {
                    Quantizer::Int8 => score_int8(&all, stride, &q, &mut dispatched),
                    Quantizer::Binary => score_binary(&all, stride, &q, &mut dispatched),
                }
                assert_eq!(reference, dispatched, "{quantizer:?} dim {dim}");
                if quantizer == Quantizer::Int8 {
                    for (v, approx) in data.iter().zip(&reference) {
                        let exact: f32 = v.iter().zip(query).map(|(a, b)| a * b).sum();
                        assert!(
                            (approx - exact).abs() < 0.02,
                            "dim {dim}: {approx} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn float_dot_products_match_a_plain_sum() {
        for dim in [1, 8, 13, 384] {
            let a = &vectors(1, dim, 5)[0];
            let b = &vectors(1, dim, 6)[0];
            let plain: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!((dot_f32(a, b) - plain).abs() < 1e-5);
            let bytes: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
            let (dot, norm) = dot_and_norm_le_bytes(&bytes, b);
            assert!((dot - plain).abs() < 1e-5 && (norm - 1.0).abs() < 1e-5);
        }
    }
}
