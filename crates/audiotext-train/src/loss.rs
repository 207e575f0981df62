//! The contrastive losses of the training runs, chosen by a [`LossSpec`] (`fit --loss`).
//!
//! Notation: a batch of `N` clips; audio embeddings `a_i` and text embeddings `t_i` (rows
//! L2-normalised, row `i` of both from clip `i`); cross-modal cosine similarities
//! `S = a t^T`, so `S_ii` is the similarity of a positive pair; `s = 1/temperature`; one key
//! per row, equal for the same clip or clips with identical caption sets. Rows with equal keys
//! are never negatives of each other in any term: a caption of one is a caption of the other,
//! so pushing them apart would teach the encoder a distinction the text cannot make (ESC-50's
//! captions are written per class). Where a term needs negatives, "negative pair `(i, j)`"
//! below means `key_i != key_j`.
//!
//! Terms, by spec name:
//!
//! - `infonce`: symmetric InfoNCE (CLIP's loss; Radford et al. 2021, van den Oord et al.
//!   2018) with soft targets. `L = s S`, loss `(CE(L, Y) + CE(L^T, Y)) / 2` with
//!   `CE(L, Y) = -mean_i sum_j Y_ij log softmax_j(L_i)`. `Y` is the identity when every clip's
//!   captions are its own (Clotho); otherwise `Y_ij = [key_i == key_j] / #{k: key_k == key_i}`:
//!   each row spreads its target over the clips with the same caption set (symmetric, so one
//!   matrix serves both directions). Equal keys are positives here, never negatives.
//! - `ntxent`: NT-Xent (SimCLR; Chen et al. 2020) over the `2N` embeddings
//!   `z = [a_1..a_N, t_1..t_N]`. Row `r`'s positive is its pair `p(r)` in the other modality;
//!   its candidates `A(r)` are `p(r)` and every row of either modality with another key (so
//!   self and same-key rows are out). `l_r = -s z_r.z_p(r) + log sum_{m in A(r)} exp(s z_r.z_m)`,
//!   loss `mean_r l_r`.
//! - `triplet-sum` (VSE; Kiros et al. 2014): both directions, hinge summed over negatives:
//!   `(1/N) sum_i sum_{j neg} ([m - S_ii + S_ij]_+ + [m - S_ii + S_ji]_+)`; margin `m` (0.2).
//! - `triplet-max` (VSE++; Faghri et al. 2018): the hardest negative of each anchor only:
//!   `(1/N) sum_i (max_{j neg} [m - S_ii + S_ij]_+ + max_{j neg} [m - S_ii + S_ji]_+)`.
//!   An anchor without negatives contributes 0 (as in the sum).
//! - `triplet-weighted`: the polynomial loss of Wei et al. 2020 ("Universal weighting metric
//!   learning for cross-modal matching", CVPR), as in the authors' released code
//!   (`polyloss`, also used by Mei et al. 2022 for audio-text retrieval). For each direction
//!   (rows of `S` anchor audio, columns anchor text) and anchor `i` with positive
//!   `x = S_ii`: the informative negatives are `I_i = {S_ij : j neg, S_ij + m > x}`; the
//!   anchor counts only when `I_i` is not empty and `x < 1 - 1e-5` (a perfect pair has
//!   nothing left to learn); then `l_i = [P(x)]_+ + [Q(max I_i)]_+` with the polynomials
//!   `P(x) = sum_k pos_k x^k` (default `0.5 - 0.7 x + 0.2 x^2`: its slope, the weight of the
//!   positive, grows as the pair gets worse) and `Q(y) = sum_k neg_k y^k` (default
//!   `0.03 - 0.4 y + 0.9 y^2`: the weight of the hardest negative grows with its similarity).
//!   Loss `(sum of l_i over both directions) / N`. Parameters `margin` (0.2), `pos0..pos8`,
//!   `neg0..neg8` (the coefficients of `x^0..x^8`).
//! - `vicreg` (Bardes et al. 2022), on the two modalities as the two branches, following the
//!   reference code (facebookresearch/vicreg): invariance `mean_{i,k} (a_ik - t_ik)^2`;
//!   variance `(v(a) + v(t)) / 2` with `v(z) = mean_k [gamma - sqrt(Var_i z_ik + 1e-4)]_+`
//!   (unbiased variance); covariance `c(a) + c(t)` with
//!   `c(z) = sum_{k != l} C(z)_kl^2 / d`, `C(z)` the unbiased covariance of the `d`
//!   dimensions. Loss `sim * invariance + var * variance + cov * covariance`, defaults
//!   `sim=25,var=25,cov=1,gamma=1`. It has no negatives, so keys do not enter.
//! - `cosine`: the cosine embedding loss (as `torch.nn.CosineEmbeddingLoss` fed every
//!   cross-modal pair): positives `1 - S_ii`, negatives `[S_ij - m]_+` (margin 0), averaged
//!   over the `N` positive and all negative pairs; same-key pairs `i != j` are left out.
//!
//! A spec is a sum of weighted terms, `[weight*]name[:key=value,...]` joined by `+`, e.g.
//! `infonce+0.1*vicreg`, `triplet-max:margin=0.3`; see [`LossSpec`].

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use serde::{Deserialize, Serialize};

/// Stands in for an excluded logit or similarity: below any real one (logits are at most
/// `MAX_SCALE` in magnitude), yet finite, so `0 * log_softmax` stays 0 instead of NaN.
const EXCLUDED: f32 = -1.0e9;
/// `triplet-weighted`: an anchor whose positive similarity reaches `1 - this` is skipped.
const PERFECT_PAIR_TOLERANCE: f64 = 1e-5;
/// `vicreg`: added to the variance before its square root (the paper's epsilon).
const VICREG_EPS: f64 = 1e-4;
/// `triplet-weighted`: the highest power a polynomial coefficient may have.
const MAX_POLYNOMIAL_DEGREE: usize = 8;

/// Row-normalised soft targets from per-item keys (equal keys are positives of each other).
pub fn soft_targets(keys: &[u64]) -> Vec<f32> {
    let n = keys.len();
    let mut y = vec![0f32; n * n];
    for i in 0..n {
        let count = keys.iter().filter(|&&k| k == keys[i]).count() as f32;
        for j in 0..n {
            if keys[j] == keys[i] {
                y[i * n + j] = 1.0 / count;
            }
        }
    }
    y
}

/// Symmetric InfoNCE; `scale` is `[1]`, `targets` is `[batch, batch]` (see [`soft_targets`]).
/// Returns a `[1]` tensor.
pub fn info_nce(
    audio: Tensor<2>,
    text: Tensor<2>,
    scale: Tensor<1>,
    targets: Tensor<2>,
) -> Tensor<1> {
    let logits = audio.matmul(text.transpose()) * scale.reshape([1, 1]);
    let a2t = cross_entropy(logits.clone(), targets.clone());
    let t2a = cross_entropy(logits.transpose(), targets);
    (a2t + t2a).div_scalar(2.0)
}

/// `-mean_i sum_j y_ij log softmax_j(logits_i)`.
fn cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    (log_softmax(logits, 1) * targets).sum_dim(1).mean().neg()
}

/// A loss: a weighted sum of [`Term`]s. Parsed from and written as a spec string (that is how
/// `config.json` stores it): `[weight*]name[:key=value,...]` joined by `+`. Written specs list
/// every parameter, so a run keeps its loss even if a default changes later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LossSpec {
    /// Never empty; weights are finite and positive.
    terms: Vec<Weighted>,
}

/// One term of a [`LossSpec`] with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    pub weight: f64,
    pub term: Term,
}

/// One contrastive loss with its parameters (see the module documentation for the formulas).
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    InfoNce,
    NtXent,
    TripletSum { margin: f64 },
    TripletMax { margin: f64 },
    TripletWeighted(PolynomialWeighting),
    VicReg(VicRegWeights),
    Cosine { margin: f64 },
}

/// Parameters of `triplet-weighted`; coefficient `k` multiplies `x^k`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolynomialWeighting {
    pub margin: f64,
    pub positive: Vec<f64>,
    pub negative: Vec<f64>,
}

/// Parameters of `vicreg`.
#[derive(Debug, Clone, PartialEq)]
pub struct VicRegWeights {
    /// Weight of the invariance term (`sim`).
    pub invariance: f64,
    /// Weight of the variance term (`var`).
    pub variance: f64,
    /// Weight of the covariance term (`cov`).
    pub covariance: f64,
    /// Target standard deviation of each dimension.
    pub gamma: f64,
}

/// Spec names, in the order the help and error messages list them.
const TERM_NAMES: [&str; 7] = [
    "infonce",
    "ntxent",
    "triplet-sum",
    "triplet-max",
    "triplet-weighted",
    "vicreg",
    "cosine",
];

impl Term {
    /// The term called `name`, with its default parameters.
    pub fn named(name: &str) -> Option<Term> {
        Some(match name {
            "infonce" => Term::InfoNce,
            "ntxent" => Term::NtXent,
            "triplet-sum" => Term::TripletSum { margin: 0.2 },
            "triplet-max" => Term::TripletMax { margin: 0.2 },
            "triplet-weighted" => Term::TripletWeighted(PolynomialWeighting {
                margin: 0.2,
                positive: vec![0.5, -0.7, 0.2],
                negative: vec![0.03, -0.4, 0.9],
            }),
            "vicreg" => Term::VicReg(VicRegWeights {
                invariance: 25.0,
                variance: 25.0,
                covariance: 1.0,
                gamma: 1.0,
            }),
            "cosine" => Term::Cosine { margin: 0.0 },
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Term::InfoNce => "infonce",
            Term::NtXent => "ntxent",
            Term::TripletSum { .. } => "triplet-sum",
            Term::TripletMax { .. } => "triplet-max",
            Term::TripletWeighted(_) => "triplet-weighted",
            Term::VicReg(_) => "vicreg",
            Term::Cosine { .. } => "cosine",
        }
    }

    /// Whether the term divides similarities by the temperature.
    pub fn uses_temperature(&self) -> bool {
        matches!(self, Term::InfoNce | Term::NtXent)
    }

    /// The parameters as spec keys and values, in spec order.
    fn parameters(&self) -> Vec<(String, f64)> {
        let margin = |m: f64| vec![("margin".to_string(), m)];
        match self {
            Term::InfoNce | Term::NtXent => Vec::new(),
            Term::TripletSum { margin: m }
            | Term::TripletMax { margin: m }
            | Term::Cosine { margin: m } => margin(*m),
            Term::TripletWeighted(w) => {
                let mut p = margin(w.margin);
                p.extend(
                    w.positive
                        .iter()
                        .enumerate()
                        .map(|(k, &c)| (format!("pos{k}"), c)),
                );
                p.extend(
                    w.negative
                        .iter()
                        .enumerate()
                        .map(|(k, &c)| (format!("neg{k}"), c)),
                );
                p
            }
            Term::VicReg(w) => vec![
                ("sim".into(), w.invariance),
                ("var".into(), w.variance),
                ("cov".into(), w.covariance),
                ("gamma".into(), w.gamma),
            ],
        }
    }

    /// Sets the parameter `key`.
    fn set(&mut self, key: &str, value: f64) -> Result<(), String> {
        let unknown = self.unknown_parameter(key);
        let slot: Option<&mut f64> = match self {
            Term::InfoNce | Term::NtXent => None,
            Term::TripletSum { margin } | Term::TripletMax { margin } | Term::Cosine { margin } => {
                (key == "margin").then_some(margin)
            }
            Term::TripletWeighted(w) => {
                if key == "margin" {
                    Some(&mut w.margin)
                } else {
                    let coefficient = |prefix: &str| -> Option<usize> {
                        key.strip_prefix(prefix)?
                            .parse::<usize>()
                            .ok()
                            .filter(|&k| k <= MAX_POLYNOMIAL_DEGREE)
                    };
                    let (coefficients, k) = match (coefficient("pos"), coefficient("neg")) {
                        (Some(k), _) => (&mut w.positive, k),
                        (_, Some(k)) => (&mut w.negative, k),
                        _ => return Err(unknown),
                    };
                    if coefficients.len() <= k {
                        coefficients.resize(k + 1, 0.0);
                    }
                    Some(&mut coefficients[k])
                }
            }
            Term::VicReg(w) => match key {
                "sim" => Some(&mut w.invariance),
                "var" => Some(&mut w.variance),
                "cov" => Some(&mut w.covariance),
                "gamma" => Some(&mut w.gamma),
                _ => None,
            },
        };
        match slot {
            Some(slot) => {
                *slot = value;
                Ok(())
            }
            None => Err(unknown),
        }
    }

    fn unknown_parameter(&self, key: &str) -> String {
        let keys = match self {
            Term::InfoNce | Term::NtXent => {
                return format!("`{}` takes no parameters (got `{key}`)", self.name())
            }
            Term::TripletWeighted(_) => format!(
                "margin, pos0..pos{MAX_POLYNOMIAL_DEGREE}, neg0..neg{MAX_POLYNOMIAL_DEGREE}"
            ),
            _ => self
                .parameters()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
                .join(", "),
        };
        format!(
            "`{}` has no parameter `{key}`; its parameters: {keys}",
            self.name()
        )
    }

    /// Checks the values that only make sense in a range.
    fn validate(&self) -> Result<(), String> {
        if let Term::VicReg(w) = self {
            if w.invariance < 0.0 || w.variance < 0.0 || w.covariance < 0.0 {
                return Err(format!(
                    "`{self}`: the weights sim, var and cov must not be negative"
                ));
            }
            if w.gamma <= 0.0 {
                return Err(format!("`{self}`: gamma must be positive"));
            }
        }
        Ok(())
    }

    /// A phrase for the bundle manifest.
    fn describe(&self) -> String {
        match self {
            Term::InfoNce => {
                "symmetric InfoNCE, soft targets over clips with identical caption sets".into()
            }
            Term::NtXent => "NT-Xent over the 2N audio and text embeddings, negatives from both \
                             modalities except rows with the same caption set"
                .into(),
            Term::TripletSum { margin } => format!(
                "bidirectional triplet loss summed over all negatives (VSE), margin {margin}"
            ),
            Term::TripletMax { margin } => format!(
                "bidirectional triplet loss on the hardest negative (VSE++), margin {margin}"
            ),
            Term::TripletWeighted(w) => format!(
                "bidirectional polynomial-weighted triplet loss (Wei et al. 2020), margin {}, \
                 positive weighting {}, hardest informative negative weighting {}",
                w.margin,
                polynomial_text(&w.positive, "x"),
                polynomial_text(&w.negative, "y")
            ),
            Term::VicReg(w) => format!(
                "VICReg on audio and text (invariance {}, variance {} at gamma {}, covariance {})",
                w.invariance, w.variance, w.gamma, w.covariance
            ),
            Term::Cosine { margin } => {
                format!(
                    "cosine embedding loss over all cross-modal pairs, negative margin {margin}"
                )
            }
        }
    }

    fn compute(&self, batch: &Batch) -> Tensor<1> {
        match self {
            Term::InfoNce => info_nce(
                batch.audio.clone(),
                batch.text.clone(),
                batch.scale.clone(),
                batch.soft_targets(),
            ),
            Term::NtXent => {
                let z = Tensor::cat(vec![batch.audio.clone(), batch.text.clone()], 0);
                let logits = z.clone().matmul(z.transpose()) * batch.scale.clone().reshape([1, 1]);
                nt_xent(logits, &batch.keys)
            }
            Term::TripletSum { margin } => {
                triplet_sum(batch.similarity.clone(), &batch.negatives, *margin)
            }
            Term::TripletMax { margin } => {
                triplet_max(batch.similarity.clone(), &batch.negatives, *margin)
            }
            Term::TripletWeighted(w) => {
                triplet_weighted(batch.similarity.clone(), &batch.negatives, w)
            }
            Term::VicReg(w) => vicreg(batch.audio.clone(), batch.text.clone(), w),
            Term::Cosine { margin } => {
                cosine_embedding(batch.similarity.clone(), &batch.negatives, *margin)
            }
        }
    }
}

/// `0.5 - 0.7 x + 0.2 x^2` from `[0.5, -0.7, 0.2]`.
fn polynomial_text(coefficients: &[f64], x: &str) -> String {
    let mut text = String::new();
    for (k, &c) in coefficients.iter().enumerate().filter(|(_, &c)| c != 0.0) {
        let monomial = match k {
            0 => String::new(),
            1 => format!(" {x}"),
            _ => format!(" {x}^{k}"),
        };
        if text.is_empty() {
            text = format!("{c}{monomial}");
        } else {
            let sign = if c < 0.0 { '-' } else { '+' };
            text += &format!(" {sign} {}{monomial}", c.abs());
        }
    }
    if text.is_empty() {
        "0".into()
    } else {
        text
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        for (i, (key, value)) in self.parameters().into_iter().enumerate() {
            write!(f, "{}{key}={value}", if i == 0 { ':' } else { ',' })?;
        }
        Ok(())
    }
}

impl Default for LossSpec {
    /// Symmetric InfoNCE alone (the loss of runs made before specs existed).
    fn default() -> LossSpec {
        LossSpec {
            terms: vec![Weighted {
                weight: 1.0,
                term: Term::InfoNce,
            }],
        }
    }
}

impl LossSpec {
    /// Whether any term uses the temperature (otherwise a learned temperature stays put).
    pub fn uses_temperature(&self) -> bool {
        self.terms.iter().any(|t| t.term.uses_temperature())
    }

    /// A sentence for the bundle manifest.
    pub fn describe(&self) -> String {
        match self.terms.as_slice() {
            [only] if only.weight == 1.0 => only.term.describe(),
            terms => terms
                .iter()
                .map(|t| format!("{} x ({})", t.weight, t.term.describe()))
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }

    /// The loss of a batch as a `[1]` tensor. `audio` and `text` are `[batch, dim]` with
    /// L2-normalised rows (row `i` of both from the same clip), `scale` is `[1]`
    /// (`1/temperature`), `keys` has one key per row (equal: same clip or caption set).
    pub fn compute(
        &self,
        audio: Tensor<2>,
        text: Tensor<2>,
        scale: Tensor<1>,
        keys: &[u64],
    ) -> Tensor<1> {
        assert_eq!(audio.dims(), text.dims(), "audio and text batches differ");
        assert_eq!(audio.dims()[0], keys.len(), "one key per batch row");
        let batch = Batch::new(audio, text, scale, keys);
        self.terms
            .iter()
            .map(|t| t.term.compute(&batch).mul_scalar(t.weight))
            .reduce(|a, b| a + b)
            .expect("a loss spec has at least one term")
    }
}

impl fmt::Display for LossSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            if t.weight != 1.0 {
                write!(f, "{}*", t.weight)?;
            }
            write!(f, "{}", t.term)?;
        }
        Ok(())
    }
}

/// The grammar and the known terms with their defaults, for error messages.
fn spec_help() -> String {
    let terms: Vec<String> = TERM_NAMES
        .iter()
        .filter_map(|name| Term::named(name))
        .map(|t| t.to_string())
        .collect();
    format!(
        "a loss spec is `[weight*]name[:key=value,...]` joined by `+` (e.g. \
         `infonce+0.1*vicreg`); known terms, with their defaults: {}",
        terms.join(" | ")
    )
}

impl FromStr for LossSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<LossSpec, String> {
        if spec.trim().is_empty() {
            return Err(format!("empty loss spec; {}", spec_help()));
        }
        let terms = split_terms(spec)
            .into_iter()
            .map(|text| parse_weighted(text.trim(), spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LossSpec { terms })
    }
}

/// Splits at each `+` that is not the sign of a number's exponent (`1e+3`).
fn split_terms(spec: &str) -> Vec<&str> {
    let bytes = spec.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let exponent_sign = i >= 2
            && matches!(bytes[i - 1], b'e' | b'E')
            && (bytes[i - 2].is_ascii_digit() || bytes[i - 2] == b'.')
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if b == b'+' && !exponent_sign {
            pieces.push(&spec[start..i]);
            start = i + 1;
        }
    }
    pieces.push(&spec[start..]);
    pieces
}

fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// One `[weight*]name[:key=value,...]`.
fn parse_weighted(text: &str, spec: &str) -> Result<Weighted, String> {
    if text.is_empty() {
        return Err(format!(
            "empty term in the loss spec `{spec}`; {}",
            spec_help()
        ));
    }
    let (weight, body) = match text.split_once('*') {
        Some((weight, body)) => {
            let weight = parse_number(weight).filter(|&w| w > 0.0).ok_or_else(|| {
                format!(
                    "the weight `{}` of `{text}` is not a positive number",
                    weight.trim()
                )
            })?;
            (weight, body.trim())
        }
        None => (1.0, text),
    };
    let (name, parameters) = match body.split_once(':') {
        Some((name, parameters)) => (name.trim(), Some(parameters)),
        None => (body, None),
    };
    let mut term = Term::named(&name.to_ascii_lowercase())
        .ok_or_else(|| format!("unknown loss term `{name}`; {}", spec_help()))?;
    if let Some(parameters) = parameters {
        let mut seen: Vec<&str> = Vec::new();
        for pair in parameters.split(',') {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "`{}` in `{body}` is not key=value; {}",
                    pair.trim(),
                    spec_help()
                )
            })?;
            let key = key.trim();
            if seen.contains(&key) {
                return Err(format!("`{key}` is given twice in `{body}`"));
            }
            seen.push(key);
            let value = parse_number(value).ok_or_else(|| {
                format!(
                    "`{key}={}` in `{body}` is not a finite number",
                    value.trim()
                )
            })?;
            term.set(key, value)?;
        }
    }
    term.validate()?;
    Ok(Weighted { weight, term })
}

impl TryFrom<String> for LossSpec {
    type Error = String;

    fn try_from(spec: String) -> Result<LossSpec, String> {
        spec.parse()
    }
}

impl From<LossSpec> for String {
    fn from(spec: LossSpec) -> String {
        spec.to_string()
    }
}

/// What the terms share: the embeddings, the similarities and which pairs are negatives.
struct Batch {
    audio: Tensor<2>,
    text: Tensor<2>,
    scale: Tensor<1>,
    keys: Vec<u64>,
    /// `S = a t^T`.
    similarity: Tensor<2>,
    /// `[N, N]`, true where the keys differ.
    negatives: Tensor<2, Bool>,
}

impl Batch {
    fn new(audio: Tensor<2>, text: Tensor<2>, scale: Tensor<1>, keys: &[u64]) -> Batch {
        let similarity = audio.clone().matmul(text.clone().transpose());
        let negatives = negative_pairs(keys, &audio.device());
        Batch {
            audio,
            text,
            scale,
            keys: keys.to_vec(),
            similarity,
            negatives,
        }
    }

    fn soft_targets(&self) -> Tensor<2> {
        let n = self.keys.len();
        Tensor::from_data(
            TensorData::new(soft_targets(&self.keys), [n, n]),
            &self.audio.device(),
        )
    }
}

/// `[N, N]`, true where `keys[i] != keys[j]`.
fn negative_pairs(keys: &[u64], device: &Device) -> Tensor<2, Bool> {
    let n = keys.len();
    let values: Vec<bool> = (0..n * n).map(|ij| keys[ij / n] != keys[ij % n]).collect();
    Tensor::from_bool(TensorData::new(values, [n, n]), device)
}

/// The diagonal of a square matrix as a column `[N, 1]` (`S_ii`: the positive pairs).
fn diagonal(m: &Tensor<2>) -> Tensor<2> {
    let n = m.dims()[0];
    (m.clone() * Tensor::eye(n, &m.device())).sum_dim(1)
}

/// `[m - S_ii + S_ij]_+` with anchors on the rows, 0 where `j` is not a negative of `i`. The
/// other direction is the same on `S^T` (same diagonal, symmetric negatives).
fn hinges(similarity: Tensor<2>, negatives: &Tensor<2, Bool>, margin: f64) -> Tensor<2> {
    let positive = diagonal(&similarity);
    relu((similarity - positive).add_scalar(margin)) * negatives.clone().float()
}

/// `triplet-sum`; `similarity` is `S = a t^T`.
fn triplet_sum(similarity: Tensor<2>, negatives: &Tensor<2, Bool>, margin: f64) -> Tensor<1> {
    let n = similarity.dims()[0];
    let a2t = hinges(similarity.clone(), negatives, margin).sum();
    let t2a = hinges(similarity.transpose(), negatives, margin).sum();
    (a2t + t2a).div_scalar(n as f64)
}

/// `triplet-max`; hinges are >= 0 and 0 off the negatives, so a row's maximum is its hardest
/// negative's hinge, or 0 when it has none.
fn triplet_max(similarity: Tensor<2>, negatives: &Tensor<2, Bool>, margin: f64) -> Tensor<1> {
    let n = similarity.dims()[0];
    let a2t = hinges(similarity.clone(), negatives, margin)
        .max_dim(1)
        .sum();
    let t2a = hinges(similarity.transpose(), negatives, margin)
        .max_dim(1)
        .sum();
    (a2t + t2a).div_scalar(n as f64)
}

/// `triplet-weighted`; `similarity` is `S = a t^T`.
fn triplet_weighted(
    similarity: Tensor<2>,
    negatives: &Tensor<2, Bool>,
    weighting: &PolynomialWeighting,
) -> Tensor<1> {
    let n = similarity.dims()[0];
    let a2t = polynomial_anchor_losses(similarity.clone(), negatives, weighting);
    let t2a = polynomial_anchor_losses(similarity.transpose(), negatives, weighting);
    (a2t.sum() + t2a.sum()).div_scalar(n as f64)
}

/// `l_i` of `triplet-weighted` for the anchors on the rows, `[N, 1]` (0 where skipped).
fn polynomial_anchor_losses(
    similarity: Tensor<2>,
    negatives: &Tensor<2, Bool>,
    weighting: &PolynomialWeighting,
) -> Tensor<2> {
    let positive = diagonal(&similarity);
    // S_ij + m > S_ii, among the negatives.
    let informative = (similarity.clone() - positive.clone())
        .greater_elem(-weighting.margin)
        .bool_and(negatives.clone());
    let has_informative = informative.clone().float().sum_dim(1).greater_elem(0.0);
    let counts =
        has_informative.bool_and(positive.clone().lower_elem(1.0 - PERFECT_PAIR_TOLERANCE));
    let skipped = counts.clone().bool_not();
    let hardest = similarity
        .mask_fill(informative.bool_not(), EXCLUDED)
        .max_dim(1)
        // Skipped rows hold EXCLUDED here; keep the polynomial away from it.
        .mask_fill(skipped, 0.0);
    let loss = relu(polynomial(positive, &weighting.positive))
        + relu(polynomial(hardest, &weighting.negative));
    loss * counts.float()
}

/// `sum_k c_k x^k` elementwise (Horner).
fn polynomial(x: Tensor<2>, coefficients: &[f64]) -> Tensor<2> {
    let mut acc = x.zeros_like();
    for &c in coefficients.iter().rev() {
        acc = (acc * x.clone()).add_scalar(c);
    }
    acc
}

/// `cosine`; `similarity` is `S = a t^T` (cosines, the rows being normalised).
fn cosine_embedding(similarity: Tensor<2>, negatives: &Tensor<2, Bool>, margin: f64) -> Tensor<1> {
    let n = similarity.dims()[0];
    let negatives = negatives.clone().float();
    let pairs = negatives.clone().sum().add_scalar(n as f64);
    let positive = diagonal(&similarity).neg().add_scalar(1.0).sum();
    let negative = (relu(similarity.sub_scalar(margin)) * negatives).sum();
    (positive + negative) / pairs
}

/// `ntxent` from the scaled Gram matrix `s z z^T` of `z = [a; t]` (`[2N, 2N]`).
fn nt_xent(logits: Tensor<2>, keys: &[u64]) -> Tensor<1> {
    let n = keys.len();
    let device = logits.device();
    let partner = |r: usize| (r + n) % (2 * n);
    let mut candidates = vec![false; 4 * n * n];
    let mut targets = vec![0f32; 4 * n * n];
    for r in 0..2 * n {
        for m in 0..2 * n {
            candidates[r * 2 * n + m] = m == partner(r) || keys[r % n] != keys[m % n];
        }
        targets[r * 2 * n + partner(r)] = 1.0;
    }
    let excluded =
        Tensor::<2, Bool>::from_bool(TensorData::new(candidates, [2 * n, 2 * n]), &device)
            .bool_not();
    let targets = Tensor::from_data(TensorData::new(targets, [2 * n, 2 * n]), &device);
    cross_entropy(logits.mask_fill(excluded, EXCLUDED), targets)
}

/// `vicreg`, with both modalities as the branches.
fn vicreg(audio: Tensor<2>, text: Tensor<2>, weights: &VicRegWeights) -> Tensor<1> {
    let invariance = (audio.clone() - text.clone()).square().mean();
    let variance = (standard_deviation_hinge(audio.clone(), weights.gamma)
        + standard_deviation_hinge(text.clone(), weights.gamma))
    .div_scalar(2.0);
    let covariance = off_diagonal_covariance(audio) + off_diagonal_covariance(text);
    invariance.mul_scalar(weights.invariance)
        + variance.mul_scalar(weights.variance)
        + covariance.mul_scalar(weights.covariance)
}

/// `z` minus the mean of each column.
fn centred(z: Tensor<2>) -> Tensor<2> {
    z.clone() - z.mean_dim(0)
}

/// The unbiased covariance `[d, d]` of the columns of `[n, d]`.
fn covariance(z: Tensor<2>) -> Tensor<2> {
    let n = z.dims()[0];
    let centred = centred(z);
    centred
        .clone()
        .transpose()
        .matmul(centred)
        .div_scalar(n.saturating_sub(1).max(1) as f64)
}

/// `mean_k [gamma - sqrt(Var z_k + eps)]_+` (unbiased variances of the columns).
fn standard_deviation_hinge(z: Tensor<2>, gamma: f64) -> Tensor<1> {
    let n = z.dims()[0];
    let variances = centred(z)
        .square()
        .sum_dim(0)
        .div_scalar(n.saturating_sub(1).max(1) as f64);
    relu(
        variances
            .add_scalar(VICREG_EPS)
            .sqrt()
            .neg()
            .add_scalar(gamma),
    )
    .mean()
}

/// `sum_{k != l} C_kl^2 / d`.
fn off_diagonal_covariance(z: Tensor<2>) -> Tensor<1> {
    let d = z.dims()[1];
    let device = z.device();
    let off_diagonal = Tensor::<2>::ones([d, d], &device) - Tensor::eye(d, &device);
    (covariance(z) * off_diagonal)
        .square()
        .sum()
        .div_scalar(d as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{l2_normalize, to_vec};

    fn t2(values: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
    }

    fn scale(s: f32, device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(vec![s], [1]), device)
    }

    fn spec(text: &str) -> LossSpec {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// `spec` on audio `a` and text `t` (row-major, `rows x cols`) at scale `s`.
    fn loss(text: &str, a: &[f32], t: &[f32], cols: usize, s: f32, keys: &[u64]) -> f32 {
        let d = Device::flex();
        let rows = keys.len();
        to_vec(spec(text).compute(
            t2(a, rows, cols, &d),
            t2(t, rows, cols, &d),
            scale(s, &d),
            keys,
        ))[0]
    }

    fn close(actual: f32, expected: f64, what: &str) {
        assert!(
            (actual as f64 - expected).abs() < 1e-5,
            "{what}: {actual} != {expected}"
        );
    }

    const EYE2: [f32; 4] = [1.0, 0.0, 0.0, 1.0];
    /// Text rows `(0.6, 0.8)`, `(0, 1)`: with audio `I`, `S = [[0.6, 0], [0.8, 1]]`.
    const TEXT2: [f32; 4] = [0.6, 0.8, 0.0, 1.0];
    const EYE3: [f32; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    /// Text rows `t_0 = (1, 0, 0)`, `t_1 = (0.6, 0.8, 0)`, `t_2 = (0, 0.6, 0.8)`: with audio
    /// `I`, `S_ij = t_j[i]`, so `S = [[1, 0.6, 0], [0, 0.8, 0.6], [0, 0, 0.8]]`.
    const TEXT3: [f32; 9] = [1.0, 0.0, 0.0, 0.6, 0.8, 0.0, 0.0, 0.6, 0.8];

    #[test]
    fn matches_hand_computed_values() {
        let d = Device::flex();
        let eye = t2(&EYE2, 2, 2, &d);
        // Logits = I: each row is -log(e / (e + 1)) = ln(1 + e^-1).
        let loss = info_nce(eye.clone(), eye.clone(), scale(1.0, &d), eye.clone());
        assert!((to_vec(loss)[0] - 0.313_261_7).abs() < 1e-6);

        // a = I, t = [[0.6, 0.8], [0, 1]], s = 2: logits [[1.2, 0], [1.6, 2]].
        // a->t: (ln(e^1.2 + 1) - 1.2 + ln(e^1.6 + e^2) - 2) / 2 = 0.388149
        // t->a: (ln(e^1.2 + e^1.6) - 1.2 + ln(1 + e^2) - 2) / 2 = 0.519972
        let t = t2(&TEXT2, 2, 2, &d);
        let loss = info_nce(eye.clone(), t, scale(2.0, &d), eye);
        assert!((to_vec(loss)[0] - 0.454_060_2).abs() < 1e-6);
    }

    #[test]
    fn soft_targets_share_mass_between_equal_keys() {
        let y = soft_targets(&[7, 7, 3]);
        assert_eq!(y, vec![0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0]);
        // Identity embeddings, s = 1, keys [a, a, b]: rows 0 and 1 score
        // -(0.5 (1 - L) + 0.5 (0 - L)) with L = ln(e + 2); row 2 scores L - 1. Mean 0.884778.
        let d = Device::flex();
        let eye = t2(&EYE3, 3, 3, &d);
        let loss = info_nce(eye.clone(), eye, scale(1.0, &d), t2(&y, 3, 3, &d));
        assert!((to_vec(loss)[0] - 0.884_778).abs() < 1e-6);
    }

    #[test]
    fn infonce_term_is_info_nce_with_soft_targets() {
        // The two cases above, through the spec.
        close(
            loss("infonce", &EYE2, &TEXT2, 2, 2.0, &[1, 2]),
            0.454_060_2,
            "distinct keys",
        );
        close(
            loss("infonce", &EYE3, &EYE3, 3, 1.0, &[7, 7, 3]),
            0.884_778,
            "shared keys",
        );
    }

    #[test]
    fn ntxent_matches_hand_computed_values() {
        // z = [a_0, a_1, t_0, t_1] = [(1, 0), (0, 1), (0.6, 0.8), (0, 1)], s = 2. Gram s z z^T:
        //   a_0: [2, 0, 1.2, 0]   a_1: [0, 2, 1.6, 2]   t_0: [1.2, 1.6, 2, 1.6]   t_1: [0, 2, 1.6, 2]
        // Each row: -logit(partner) + ln sum over the other three rows of exp(logit):
        //   a_0: ln(1 + e^1.2 + 1) - 1.2 = 0.471495
        //   a_1: ln(1 + e^1.6 + e^2) - 2 = 0.590924
        //   t_0: ln(e^1.2 + e^1.6 + e^1.6) - 1.2 = 1.382198
        //   t_1: ln(1 + e^2 + e^1.6) - 2 = 0.590924
        // Mean 0.758885.
        close(
            loss("ntxent", &EYE2, &TEXT2, 2, 2.0, &[1, 2]),
            0.758_885_2,
            "ntxent",
        );
        // Equal keys: each row's only candidate is its partner, so every row scores 0.
        close(
            loss("ntxent", &EYE2, &TEXT2, 2, 2.0, &[1, 1]),
            0.0,
            "ntxent, one key",
        );
    }

    #[test]
    fn triplets_match_hand_computed_values() {
        // S = [[1, 0.6, 0], [0, 0.8, 0.6], [0, 0, 0.8]], margin 0.9, hinge [0.9 - S_ii + S_ij]_+.
        // Audio anchors (rows): row 0: 0.5 (S_01), 0 (S_02); row 1: 0.1 (S_10), 0.7 (S_12);
        //   row 2: 0.1, 0.1.
        // Text anchors (columns): col 0: 0, 0; col 1: 0.7 (S_01), 0.1 (S_21);
        //   col 2: 0.1 (S_02), 0.7 (S_12).
        // Sum: (0.5 + 0.8 + 0.2 + 0 + 0.8 + 0.8) / 3 = 3.1 / 3.
        // Max: (0.5 + 0.7 + 0.1 + 0 + 0.7 + 0.7) / 3 = 2.7 / 3.
        let distinct = [1, 2, 3];
        let sum = loss("triplet-sum:margin=0.9", &EYE3, &TEXT3, 3, 1.0, &distinct);
        close(sum, 3.1 / 3.0, "triplet-sum");
        let max = loss("triplet-max:margin=0.9", &EYE3, &TEXT3, 3, 1.0, &distinct);
        close(max, 2.7 / 3.0, "triplet-max");
        // Keys [5, 5, 6]: rows/columns 0 and 1 lose each other as negatives.
        // Sum: row 0: 0; row 1: 0.7; row 2: 0.2; col 0: 0; col 1: 0.1; col 2: 0.8 -> 1.8 / 3.
        // Max: row 0: 0; row 1: 0.7; row 2: 0.1; col 0: 0; col 1: 0.1; col 2: 0.7 -> 1.6 / 3.
        let shared = [5, 5, 6];
        let sum = loss("triplet-sum:margin=0.9", &EYE3, &TEXT3, 3, 1.0, &shared);
        close(sum, 1.8 / 3.0, "triplet-sum, shared key");
        let max = loss("triplet-max:margin=0.9", &EYE3, &TEXT3, 3, 1.0, &shared);
        close(max, 1.6 / 3.0, "triplet-max, shared key");
        // One key for all: nobody has a negative, every term is 0 (not NaN).
        for name in ["triplet-sum", "triplet-max", "triplet-weighted"] {
            close(loss(name, &EYE3, &TEXT3, 3, 1.0, &[4, 4, 4]), 0.0, name);
        }
    }

    #[test]
    fn triplet_weighted_matches_hand_computed_values() {
        // S = [[1, 0.6, 0], [0, 0.8, 0.6], [0, 0, 0.8]], margin 0.9: a negative is informative
        // when S_ij + 0.9 > S_ii. P(x) = 0.5 - 0.7 x + 0.2 x^2, Q(y) = 0.03 - 0.4 y + 0.9 y^2.
        // P(0.8) = 0.5 - 0.56 + 0.128 = 0.068; Q(0.6) = 0.03 - 0.24 + 0.324 = 0.114;
        // Q(0) = 0.03.
        // Row 0 and column 0: positive 1 >= 1 - 1e-5, skipped.
        // Row 1: negatives 0 and 0.6 both informative, hardest 0.6: 0.068 + 0.114 = 0.182.
        // Row 2: negatives 0, 0, hardest 0: 0.068 + 0.03 = 0.098.
        // Column 1: negatives 0.6 (S_01), 0 (S_21): 0.182. Column 2: 0 (S_02), 0.6 (S_12): 0.182.
        // (0.182 + 0.098 + 0.182 + 0.182) / 3 = 0.644 / 3.
        let weighted = "triplet-weighted:margin=0.9";
        let value = loss(weighted, &EYE3, &TEXT3, 3, 1.0, &[1, 2, 3]);
        close(value, 0.644 / 3.0, "triplet-weighted");
        // Keys [5, 5, 6]: row 1 keeps S_12 = 0.6: 0.182; row 2 keeps 0, 0: 0.098; column 1
        // keeps S_21 = 0: 0.098; column 2 keeps S_02 = 0 and S_12 = 0.6: 0.182. 0.56 / 3.
        let value = loss(weighted, &EYE3, &TEXT3, 3, 1.0, &[5, 5, 6]);
        close(value, 0.56 / 3.0, "triplet-weighted, shared key");
        // Margin 0.1: no negative is within 0.1 of its positive, so no anchor counts.
        let value = loss(
            "triplet-weighted:margin=0.1",
            &EYE3,
            &TEXT3,
            3,
            1.0,
            &[1, 2, 3],
        );
        close(value, 0.0, "triplet-weighted, nothing informative");
        // P = 0 and Q(y) = y: the mean of the counted hardest negatives, (0.6 + 0 + 0.6 + 0.6) / 3.
        let only_negative = "triplet-weighted:margin=0.9,pos0=0,pos1=0,pos2=0,neg0=0,neg1=1,neg2=0";
        let value = loss(only_negative, &EYE3, &TEXT3, 3, 1.0, &[1, 2, 3]);
        close(value, 0.6, "triplet-weighted, Q(y) = y");
    }

    #[test]
    fn vicreg_matches_hand_computed_values() {
        // a = I, t = [[0.6, 0.8], [0, 1]].
        // Invariance: ((1 - 0.6)^2 + 0.8^2 + 0 + 0) / 4 = 0.2.
        // Variance (unbiased, n - 1 = 1): a's columns [1, 0], [0, 1]: var 0.5, std
        //   sqrt(0.5001) = 0.707178, hinge 0.292822 each; t's columns [0.6, 0]: var 0.18,
        //   hinge 1 - sqrt(0.1801) = 0.575618; [0.8, 1]: var 0.02, hinge 1 - sqrt(0.0201)
        //   = 0.858226; mean 0.716922. (0.292822 + 0.716922) / 2 = 0.504872.
        // Covariance: a centred [[0.5, -0.5], [-0.5, 0.5]], C_01 = -0.5, 2 * 0.25 / 2 = 0.25;
        //   t centred [[0.3, -0.1], [-0.3, 0.1]], C_01 = -0.06, 2 * 0.0036 / 2 = 0.0036.
        // 25 * 0.2 + 25 * 0.504872 + (0.25 + 0.0036) = 17.875404.
        let value = loss("vicreg", &EYE2, &TEXT2, 2, 1.0, &[1, 2]);
        assert!((value - 17.875_404).abs() < 1e-4, "vicreg {value}");
        close(
            loss("vicreg:sim=1,var=0,cov=0", &EYE2, &TEXT2, 2, 1.0, &[1, 2]),
            0.2,
            "invariance",
        );
        // gamma 0.5: a's stds 0.707 pass; t: (0.5 - 0.424382 + 0.5 - 0.141774) / 2 = 0.216922.
        let variance_only = "vicreg:sim=0,var=1,cov=0,gamma=0.5";
        let value = loss(variance_only, &EYE2, &TEXT2, 2, 1.0, &[1, 2]);
        close(value, 0.216_922 / 2.0, "variance at gamma 0.5");
        close(
            loss("vicreg:sim=0,var=0,cov=1", &EYE2, &TEXT2, 2, 1.0, &[1, 2]),
            0.2536,
            "covariance",
        );
    }

    #[test]
    fn cosine_matches_hand_computed_values() {
        // S = [[0.6, 0], [0.8, 1]]. Positives 1 - 0.6 + 1 - 1 = 0.4.
        // Margin 0: negatives [0]_+ + [0.8]_+ = 0.8; (0.4 + 0.8) / 4 pairs = 0.3.
        close(
            loss("cosine", &EYE2, &TEXT2, 2, 1.0, &[1, 2]),
            0.3,
            "cosine",
        );
        // Margin 0.5: [0 - 0.5]_+ + [0.8 - 0.5]_+ = 0.3; (0.4 + 0.3) / 4 = 0.175.
        close(
            loss("cosine:margin=0.5", &EYE2, &TEXT2, 2, 1.0, &[1, 2]),
            0.175,
            "margin 0.5",
        );
        // One key: only the 2 positives, 0.4 / 2.
        close(
            loss("cosine", &EYE2, &TEXT2, 2, 1.0, &[1, 1]),
            0.2,
            "cosine, one key",
        );
    }

    /// Changing the similarities of same-key pairs changes no term that uses negatives; the
    /// same change between rows with different keys does (so the check can see a change).
    #[test]
    fn equal_keys_are_never_negatives() {
        let d = Device::flex();
        let s = [0.9, 0.3, -0.2, 0.1, 0.7, 0.4, 0.5, -0.3, 0.8];
        let mut changed = s;
        changed[1] = 0.95; // S_01
        changed[3] = -0.9; // S_10
        let shared = negative_pairs(&[5, 5, 6], &d);
        let distinct = negative_pairs(&[5, 7, 6], &d);
        let weighting = match Term::named("triplet-weighted") {
            Some(Term::TripletWeighted(w)) => PolynomialWeighting { margin: 1.0, ..w },
            _ => unreachable!(),
        };
        type SimilarityTerm = Box<dyn Fn(Tensor<2>, &Tensor<2, Bool>) -> Tensor<1>>;
        let terms: Vec<(&str, SimilarityTerm)> = vec![
            (
                "triplet-sum",
                Box::new(|s: Tensor<2>, n: &Tensor<2, Bool>| triplet_sum(s, n, 0.5)),
            ),
            (
                "triplet-max",
                Box::new(|s: Tensor<2>, n: &Tensor<2, Bool>| triplet_max(s, n, 0.5)),
            ),
            (
                "triplet-weighted",
                Box::new(move |s: Tensor<2>, n: &Tensor<2, Bool>| {
                    triplet_weighted(s, n, &weighting)
                }),
            ),
            (
                "cosine",
                Box::new(|s: Tensor<2>, n: &Tensor<2, Bool>| cosine_embedding(s, n, 0.0)),
            ),
        ];
        for (name, term) in &terms {
            let value = |values: &[f32], negatives: &Tensor<2, Bool>| {
                to_vec(term(t2(values, 3, 3, &d), negatives))[0]
            };
            assert_eq!(value(&s, &shared), value(&changed, &shared), "{name}");
            assert_ne!(value(&s, &distinct), value(&changed, &distinct), "{name}");
        }

        // NT-Xent on a 6 x 6 Gram matrix (rows a_0, a_1, a_2, t_0, t_1, t_2), keys [5, 5, 6]:
        // entries between rows of clips 0 and 1, other than the partners (0, 3), (1, 4) and
        // their transposes, are never candidates; self-similarities neither.
        let gram: Vec<f32> = (0..36)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let mut changed = gram.clone();
        for (r, m) in [
            (0, 1),
            (1, 0),
            (0, 4),
            (4, 0),
            (1, 3),
            (3, 1),
            (3, 4),
            (4, 3),
            (2, 2),
        ] {
            changed[r * 6 + m] += 7.0;
        }
        let value = |values: &[f32], keys: &[u64]| to_vec(nt_xent(t2(values, 6, 6, &d), keys))[0];
        assert_eq!(
            value(&gram, &[5, 5, 6]),
            value(&changed, &[5, 5, 6]),
            "ntxent"
        );
        assert_ne!(
            value(&gram, &[5, 7, 6]),
            value(&changed, &[5, 7, 6]),
            "ntxent"
        );
    }

    #[test]
    fn weighted_sum_is_the_sum_of_weighted_terms() {
        let a = [0.6, 0.8, 0.0, 0.0, 1.0, 0.0, 0.8, 0.0, 0.6];
        let keys = [1, 2, 1];
        let parts = [
            (0.5, "infonce"),
            (2.0, "triplet-max:margin=0.3"),
            (0.1, "vicreg"),
            (1.0, "ntxent"),
        ];
        let expected: f64 = parts
            .iter()
            .map(|(w, term)| w * loss(term, &a, &TEXT3, 3, 5.0, &keys) as f64)
            .sum();
        let total = loss(
            "0.5*infonce+2*triplet-max:margin=0.3+0.1*vicreg+ntxent",
            &a,
            &TEXT3,
            3,
            5.0,
            &keys,
        );
        assert!(
            (total as f64 - expected).abs() < 1e-5,
            "{total} != {expected}"
        );
    }

    #[test]
    fn specs_round_trip_through_text_and_serde() {
        for text in [
            "infonce",
            "ntxent",
            "triplet-sum:margin=0.2",
            "triplet-max:margin=0.35",
            "triplet-weighted:margin=0.2,pos0=0.5,pos1=-0.7,pos2=0.2,neg0=0.03,neg1=-0.4,neg2=0.9",
            "vicreg:sim=25,var=25,cov=1,gamma=1",
            "cosine:margin=0",
            "infonce+0.1*vicreg:sim=25,var=25,cov=1,gamma=1",
            "0.5*ntxent+2*triplet-max:margin=0.2+0.001*cosine:margin=-0.5",
        ] {
            let parsed = spec(text);
            assert_eq!(parsed.to_string(), text, "written form of {text}");
            assert_eq!(spec(&parsed.to_string()), parsed);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<LossSpec>(&json).unwrap(), parsed);
        }
        // Defaults are written out; spaces, case, weight 1 and exponents are accepted.
        assert_eq!(spec("triplet-max").to_string(), "triplet-max:margin=0.2");
        assert_eq!(
            spec(" InfoNCE + 1*vicreg : sim = 1e+1 ").to_string(),
            "infonce+vicreg:sim=10,var=25,cov=1,gamma=1"
        );
        assert_eq!(spec("2.5e-1*ntxent").to_string(), "0.25*ntxent");
        assert_eq!(
            spec("triplet-weighted:neg3=1").to_string(),
            "triplet-weighted:margin=0.2,pos0=0.5,pos1=-0.7,pos2=0.2,neg0=0.03,neg1=-0.4,\
             neg2=0.9,neg3=1"
        );
        assert_eq!(LossSpec::default(), spec("infonce"));
    }

    #[test]
    fn bad_specs_are_refused_with_the_known_names() {
        let error = |text: &str| {
            text.parse::<LossSpec>()
                .expect_err(&format!("{text} should be refused"))
        };
        for (text, expected) in [
            ("", "empty loss spec"),
            ("infonse", "unknown loss term `infonse`"),
            ("infonce+", "empty term"),
            (
                "-1*infonce",
                "the weight `-1` of `-1*infonce` is not a positive number",
            ),
            ("x*infonce", "the weight `x`"),
            (
                "triplet-max:p=2",
                "`triplet-max` has no parameter `p`; its parameters: margin",
            ),
            ("triplet-weighted:pos9=1", "neg0..neg8"),
            ("infonce:margin=0.2", "`infonce` takes no parameters"),
            (
                "triplet-sum:margin",
                "`margin` in `triplet-sum:margin` is not key=value",
            ),
            (
                "triplet-sum:margin=abc",
                "`margin=abc` in `triplet-sum:margin=abc` is not a finite number",
            ),
            ("cosine:margin=inf", "is not a finite number"),
            ("vicreg:sim=1,sim=2", "`sim` is given twice"),
            ("vicreg:gamma=0", "gamma must be positive"),
            ("vicreg:cov=-1", "must not be negative"),
        ] {
            let message = error(text);
            assert!(message.contains(expected), "{text}: {message}");
        }
        // Grammar errors list every term with its defaults.
        let message = error("nope");
        for name in TERM_NAMES {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
        assert!(message.contains("triplet-max:margin=0.2"), "{message}");
        assert!(serde_json::from_str::<LossSpec>("\"nope\"").is_err());
    }

    #[test]
    fn descriptions_and_temperature_use() {
        assert_eq!(
            LossSpec::default().describe(),
            "symmetric InfoNCE, soft targets over clips with identical caption sets"
        );
        assert_eq!(
            spec("0.5*triplet-max+2*cosine").describe(),
            "0.5 x (bidirectional triplet loss on the hardest negative (VSE++), margin 0.2) + \
             2 x (cosine embedding loss over all cross-modal pairs, negative margin 0)"
        );
        assert!(spec("triplet-weighted").describe().contains(
            "positive weighting 0.5 - 0.7 x + 0.2 x^2, hardest informative negative \
                       weighting 0.03 - 0.4 y + 0.9 y^2"
        ));
        assert!(spec("infonce").uses_temperature());
        assert!(spec("triplet-max+0.5*ntxent").uses_temperature());
        assert!(!spec("triplet-sum+vicreg+cosine+triplet-weighted").uses_temperature());
    }

    /// A `config.json` written before `loss` existed still loads, with InfoNCE; a spec is
    /// stored as its text.
    #[test]
    fn old_run_configs_load_with_infonce() {
        use crate::run::TrainOptions;
        let old_train_section = serde_json::json!({
            "epochs": 1,
            "batch_size": 2,
            "lr": 1e-3,
            "min_lr_ratio": 0.01,
            "warmup_epochs": 0.0,
            "weight_decay": 0.0,
            "seed": 0,
            "max_frames": 10,
            "specaug": crate::specaug::SpecAugment::off(),
            "clip_grad_norm": 0.0,
            "keep_checkpoints": 0,
        });
        let mut options: TrainOptions = serde_json::from_value(old_train_section).unwrap();
        assert_eq!(options.loss, LossSpec::default());
        options.loss = spec("triplet-max:margin=0.3");
        let json = serde_json::to_value(&options).unwrap();
        assert_eq!(json["loss"], "triplet-max:margin=0.3");
        assert_eq!(
            serde_json::from_value::<TrainOptions>(json).unwrap(),
            options
        );
    }

    /// Every term, and a sum, trains: a tiny linear map from fixed inputs to the audio
    /// embeddings, against fixed text embeddings, lowers the loss in 15 AdamW steps
    /// (learning rate 0.01), and every value on the way is finite.
    #[test]
    fn every_term_lowers_its_loss_on_a_tiny_batch() {
        let _rng = crate::burn_rng_lock();
        use burn::module::Param;
        use burn::nn::LinearConfig;
        use burn::optim::{AdamWConfig, GradientsParams};

        let device = Device::flex().autodiff();
        let (n, d_in, dim) = (6, 5, 4);
        // Rows 2 and 3 share a caption set (same key, same text).
        let keys = [10, 11, 12, 12, 13, 14];
        let inputs: Vec<f32> = (0..n * d_in)
            .map(|i| (i as f32 * 1.3 + 0.5).sin())
            .collect();
        let mut text: Vec<f32> = (0..n * dim).map(|i| (i as f32 * 2.1 + 1.0).cos()).collect();
        text.copy_within(2 * dim..3 * dim, 3 * dim);
        let weights: Vec<f32> = (0..d_in * dim)
            .map(|i| (i as f32 * 0.7).sin() * 0.5)
            .collect();
        let mut specs: Vec<String> = TERM_NAMES.iter().map(|s| s.to_string()).collect();
        specs.push("infonce+0.1*vicreg+triplet-max".into());
        for text_spec in specs {
            let loss_spec = spec(&text_spec);
            let mut model = LinearConfig::new(d_in, dim).init(&device);
            model.weight = Param::from_tensor(t2(&weights, d_in, dim, &device));
            model.bias = Some(Param::from_tensor(Tensor::zeros([dim], &device)));
            let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
            let mut losses = Vec::new();
            for _ in 0..15 {
                let audio = l2_normalize(model.forward(t2(&inputs, n, d_in, &device)));
                let text = l2_normalize(t2(&text, n, dim, &device));
                let loss = loss_spec.compute(audio, text, scale(10.0, &device), &keys);
                losses.push(to_vec(loss.clone())[0]);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(0.01, model, grads);
            }
            assert!(
                losses.iter().all(|l| l.is_finite()),
                "{text_spec}: {losses:?}"
            );
            // Every term is positive here; each drops by 20% or more (measured).
            let (first, last) = (losses[0], losses[losses.len() - 1]);
            assert!(
                first > 0.0 && last < 0.9 * first,
                "{text_spec} did not decrease: {losses:?}"
            );
        }
    }
}
