//! `audiotext-train ensemble`: one bundle made of several member bundles, which the extension
//! loads like any other (manifest, `text.onnx`, `tokenizer.json`, `audio.onnx`).
//!
//! # The maths
//!
//! For members `1..n` with embeddings `e_i` (unit-norm, `d_i` dims each) the ensemble's
//! embedding is `e = [e_1, ..., e_n] / sqrt(n)`, with `d_1 + ... + d_n` dims, for audio and text
//! alike. Then `|e|^2 = (|e_1|^2 + ... + |e_n|^2) / n = 1`, and for an audio embedding `a` and a
//! text embedding `t`, `a . t = (a_1 . t_1 + ... + a_n . t_n) / n`: the ensemble's cosine is the
//! mean of the members' cosines, and sqlite-vec's `vec0` works unchanged with the larger
//! dimension. This holds per window. A file longer than one window is pooled by the extension
//! (mean of window embeddings, then L2-normalised), and the normalisation applies to the
//! concatenation as a whole: members whose windows agree with each other weigh a little more
//! in a long file's score than in a plain mean.
//!
//! - [`graph`]: the graph surgery, one ONNX graph of the members' graphs.
//! - [`check`]: the check of a written ensemble against its members.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use audiotext_core::model::manifest::{
    sha256_file, AudioInput, AudioSection, Manifest, TextSection, MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
};
use audiotext_onnx::ModelProto;

use crate::run::ort_runtime;

mod check;
mod graph;
#[cfg(test)]
mod tests;

use check::*;
use graph::*;

pub const TEXT_ONNX_FILE: &str = "text.onnx";
pub const AUDIO_ONNX_FILE: &str = "audio.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const OUTPUT_NAME: &str = "embedding";
/// Largest accepted difference between the ensemble and its members' scaled concatenation (per
/// component), and between its cosines and the mean of theirs.
pub const TOLERANCE: f32 = 1e-5;
/// Oldest default-domain opset accepted: `Squeeze`, `Unsqueeze`, `ReduceSum` and `Split` changed
/// signature at 13, and the padding the ensemble adds needs `Max` on int64 (opset 12).
pub const MIN_OPSET: i64 = 13;
#[derive(Debug, Args)]
pub struct EnsembleArgs {
    /// A member bundle (text and audio encoders); give two or more, in the order their
    /// embeddings are concatenated.
    #[arg(long = "member", value_name = "DIR", required = true)]
    pub members: Vec<PathBuf>,
    /// Bundle folder to write (created if needed; an earlier ensemble there is replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Bundle name [default: "ensemble of " + the members' names].
    #[arg(long)]
    pub name: Option<String>,
    /// ONNX Runtime library for the check [default: next to the executable, dist/,
    /// $AUDIOTEXT_ORT_DYLIB].
    #[arg(long, value_name = "FILE")]
    pub ort: Option<PathBuf>,
}

pub fn run(args: EnsembleArgs) -> Result<()> {
    let report = build(&EnsembleJob {
        members: &args.members,
        out: &args.out,
        name: args.name.clone(),
        ort: args.ort.as_deref(),
    })?;
    println!(
        "ensemble of {} members -> {} ({} dims = {}, scaled by 1/sqrt({}))",
        report.members.len(),
        report.out.display(),
        report.embedding_dim,
        report
            .members
            .iter()
            .map(|m| m.embedding_dim.to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        report.members.len()
    );
    for (i, m) in report.members.iter().enumerate() {
        println!(
            "  member {i}: {} ({}), {} dims",
            m.name,
            m.dir.display(),
            m.embedding_dim
        );
    }
    println!(
        "  {TEXT_ONNX_FILE}: {:.1} MB, {} text graph(s) for {} members; {AUDIO_ONNX_FILE}: {:.1} MB, {} audio graph(s); opset {}",
        report.text_bytes as f64 / 1e6,
        report.text_graphs,
        report.members.len(),
        report.audio_bytes as f64 / 1e6,
        report.audio_graphs,
        report.opset
    );
    let check = &report.check;
    println!(
        "  check ({}): max |diff| audio {:.2e} on {} windows, text {:.2e} on {} captions, cosine vs mean of members {:.2e} (tolerance {TOLERANCE:.0e})",
        check.provider,
        check.audio_max_diff,
        check.windows,
        check.text_max_diff,
        check.captions,
        check.score_max_diff
    );
    println!("  license: {}", report.license);
    Ok(())
}

/// What to build.
pub struct EnsembleJob<'a> {
    pub members: &'a [PathBuf],
    pub out: &'a Path,
    pub name: Option<String>,
    pub ort: Option<&'a Path>,
}

/// What was built, and how well it agrees with its members.
#[derive(Debug, Clone)]
pub struct EnsembleReport {
    pub out: PathBuf,
    pub embedding_dim: usize,
    pub members: Vec<MemberSummary>,
    /// Copies of a text (audio) graph in the merged file: fewer than members when some share one.
    pub text_graphs: usize,
    pub audio_graphs: usize,
    pub text_bytes: u64,
    pub audio_bytes: u64,
    pub opset: i64,
    pub license: String,
    pub check: Check,
}

#[derive(Debug, Clone)]
pub struct MemberSummary {
    pub name: String,
    pub dir: PathBuf,
    pub embedding_dim: usize,
}

/// Result of running the ensemble and its members side by side.
#[derive(Debug, Clone)]
pub struct Check {
    pub audio_max_diff: f32,
    pub text_max_diff: f32,
    pub score_max_diff: f32,
    pub windows: usize,
    pub captions: usize,
    pub provider: String,
}

/// A member bundle, read and checked.
struct Member {
    index: usize,
    /// Canonical folder.
    dir: PathBuf,
    manifest: Manifest,
    manifest_sha256: String,
    text: TextSection,
    audio: AudioSection,
    /// Frames the extension pads each window to (the manifest's `audio.encoder.min_frames`).
    min_frames: usize,
}

impl Member {
    fn label(&self) -> String {
        member_label(self.index, &self.dir)
    }
}

fn member_label(index: usize, dir: &Path) -> String {
    format!("member {index} ({})", dir.display())
}

/// `1/sqrt(n)`, the factor that keeps the concatenation of `n` unit vectors unit-norm.
pub fn ensemble_scale(members: usize) -> f32 {
    (1.0 / (members as f64).sqrt()) as f32
}

/// Writes the ensemble bundle into `job.out` and checks it in ONNX Runtime.
pub fn build(job: &EnsembleJob) -> Result<EnsembleReport> {
    if job.members.len() < 2 {
        bail!(
            "an ensemble needs at least two --member bundles, got {}{}; to use one bundle, register it directly",
            job.members.len(),
            job.members
                .first()
                .map(|m| format!(" ({})", m.display()))
                .unwrap_or_default()
        );
    }
    let members: Vec<Member> = job
        .members
        .iter()
        .enumerate()
        .map(|(i, dir)| load_member(i, dir))
        .collect::<Result<_>>()?;
    check_compatible(&members)?;
    prepare_out(job.out, &members)?;
    // Before anything is written: without a runtime there is no check, and no ensemble.
    ort_runtime(job.ort)
        .context("the ensemble is checked in ONNX Runtime after writing; pass --ort FILE")?;

    let n = members.len();
    let scale = ensemble_scale(n);
    let embedding_dim: usize = members.iter().map(|m| m.manifest.embedding_dim).sum();
    let first = &members[0];

    // text.onnx
    let text_plan = text_plan(&members)?;
    let text_graphs = text_plan.copies.len();
    let text_model = merge(text_plan, scale)?;
    let text_opset = default_opset(&text_model);
    let text_bytes = write_model(&job.out.join(TEXT_ONNX_FILE), &text_model)?;
    drop(text_model);
    std::fs::copy(
        first.dir.join(&first.text.tokenizer),
        job.out.join(TOKENIZER_FILE),
    )
    .with_context(|| {
        format!(
            "cannot copy {} from {}",
            first.text.tokenizer,
            first.label()
        )
    })?;

    // audio.onnx
    let min_frames = members.iter().map(|m| m.min_frames).min().unwrap_or(1);
    let audio_plan = audio_plan(&members, min_frames)?;
    let audio_graphs = audio_plan.copies.len();
    let audio_model = merge(audio_plan, scale)?;
    let audio_opset = default_opset(&audio_model);
    let audio_bytes = write_model(&job.out.join(AUDIO_ONNX_FILE), &audio_model)?;

    let license = combined_license(&members);
    let mut manifest = ensemble_manifest(
        &members,
        job.name.clone(),
        embedding_dim,
        min_frames,
        (text_opset, audio_opset),
        &license,
    );
    manifest
        .write(job.out)
        .with_context(|| format!("cannot write the manifest into {}", job.out.display()))?;

    let check = match check_ensemble(job.out, &members, job.ort) {
        Ok(check) => check,
        Err(error) => {
            // A wrong ensemble must not be loadable.
            let _ = std::fs::remove_file(job.out.join(MANIFEST_FILE));
            return Err(error.context(format!(
                "the ensemble in {} does not reproduce its members; its manifest was removed (the other files are left for inspection)",
                job.out.display()
            )));
        }
    };
    manifest.training.as_mut().expect("set above")["ensemble"]["check"] = json!({
        "audio_max_abs_diff": check.audio_max_diff,
        "text_max_abs_diff": check.text_max_diff,
        "cosine_vs_member_mean_max_abs_diff": check.score_max_diff,
        "windows": check.windows,
        "captions": check.captions,
        "provider": check.provider,
        "tolerance": TOLERANCE,
    });
    manifest
        .write(job.out)
        .with_context(|| format!("cannot write the manifest into {}", job.out.display()))?;

    Ok(EnsembleReport {
        out: job.out.to_path_buf(),
        embedding_dim,
        members: members
            .iter()
            .map(|m| MemberSummary {
                name: m.manifest.name.clone(),
                dir: m.dir.clone(),
                embedding_dim: m.manifest.embedding_dim,
            })
            .collect(),
        text_graphs,
        audio_graphs,
        text_bytes,
        audio_bytes,
        opset: text_opset.max(audio_opset),
        license,
        check,
    })
}

fn write_model(path: &Path, model: &ModelProto) -> Result<u64> {
    let bytes = model.to_bytes();
    std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// Reads a member's manifest and checks its files against the sha256 it records.
fn load_member(index: usize, dir: &Path) -> Result<Member> {
    let canonical = dir.canonicalize().with_context(|| {
        format!(
            "{}: cannot open the bundle folder",
            member_label(index, dir)
        )
    })?;
    let label = member_label(index, &canonical);
    let manifest =
        Manifest::read(&canonical).with_context(|| format!("{label} is not a bundle"))?;
    let text = manifest.text.clone().with_context(|| {
        format!("{label} has no text encoder; every member of an ensemble needs text and audio encoders (add one with `audiotext-train export-text --out {}`)", canonical.display())
    })?;
    if text.centre.is_some() {
        // The ensemble's text graph joins the members' raw text.onnx outputs; a member's centre
        // lives outside its graph and has no place in theirs.
        bail!("{label} has a text centre (text.centre in its manifest, from fit-head --text-centre), which an ensemble cannot carry; export that member without --text-centre");
    }
    let audio = manifest.audio.clone().with_context(|| {
        format!("{label} has no audio encoder; every member of an ensemble needs text and audio encoders (add one with `audiotext-train export --out {}`)", canonical.display())
    })?;
    for name in [&text.onnx, &text.tokenizer, &audio.onnx] {
        let recorded = manifest.files.get(name).with_context(|| {
            format!("{label}: its manifest records no sha256 for {name}; re-export that member")
        })?;
        let actual = sha256_file(&canonical.join(name)).with_context(|| label.clone())?;
        if &actual != recorded {
            bail!("{label}: {name} is damaged or was replaced: its sha256 is {actual}, while its manifest records {recorded}; re-export that member");
        }
    }
    let manifest_sha256 = sha256_file(&canonical.join(MANIFEST_FILE))?;
    let min_frames = declared_min_frames(&audio);
    Ok(Member {
        index,
        dir: canonical,
        manifest,
        manifest_sha256,
        text,
        audio,
        min_frames,
    })
}

/// `audio.encoder.min_frames` as the extension reads it: 1 when absent.
fn declared_min_frames(audio: &AudioSection) -> usize {
    audio
        .encoder
        .as_ref()
        .and_then(|e| e.get("min_frames"))
        .and_then(Value::as_u64)
        .map_or(1, |n| n.max(1) as usize)
}

/// Members must read the same inputs: one log-mel per window, one tokenisation per text.
fn check_compatible(members: &[Member]) -> Result<()> {
    const AUDIO_WHY: &str = "the ensemble computes one log-mel per window and feeds it to every member, so all members need the same front end, windowing and input layout: ensemble encoders trained with the same settings";
    const TEXT_WHY: &str = "the ensemble tokenizes each text once and feeds the same token ids to every member, so all members need the same tokenizer.json and max_tokens: ensemble encoders trained against the same text model family";
    let first = &members[0];
    for other in &members[1..] {
        let pairs = [
            (
                "audio",
                to_json(&first.audio.front_end),
                to_json(&other.audio.front_end),
                AUDIO_WHY,
            ),
            (
                "audio.windowing",
                to_json(&first.audio.windowing),
                to_json(&other.audio.windowing),
                AUDIO_WHY,
            ),
            (
                "audio.input.layout",
                json!(first.audio.input.layout),
                json!(other.audio.input.layout),
                AUDIO_WHY,
            ),
            (
                "text.tokenizer (sha256 of the file)",
                json!(first.manifest.files[&first.text.tokenizer]),
                json!(other.manifest.files[&other.text.tokenizer]),
                TEXT_WHY,
            ),
            (
                "text.max_tokens",
                json!(first.text.max_tokens),
                json!(other.text.max_tokens),
                TEXT_WHY,
            ),
        ];
        for (field, a, b, why) in pairs {
            if let Some((field, a, b)) = first_difference(field, &a, &b) {
                bail!(
                    "{} and {} differ in {field}: {a} vs {b}; {why}",
                    first.label(),
                    other.label()
                );
            }
        }
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("manifest sections serialise")
}

/// The first field where two values differ, named `field.key` inside objects.
fn first_difference(field: &str, a: &Value, b: &Value) -> Option<(String, Value, Value)> {
    if a == b {
        return None;
    }
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for key in keys {
            let (va, vb) = (
                x.get(key).cloned().unwrap_or(Value::Null),
                y.get(key).cloned().unwrap_or(Value::Null),
            );
            if va != vb {
                return Some((format!("{field}.{key}"), va, vb));
            }
        }
    }
    Some((field.to_string(), a.clone(), b.clone()))
}

/// Refuses to write over a member or over a bundle that is not an ensemble.
fn prepare_out(out: &Path, members: &[Member]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let canonical = out.canonicalize()?;
    if let Some(member) = members.iter().find(|m| m.dir == canonical) {
        bail!(
            "--out {} is {}: the ensemble would overwrite a member; choose another folder",
            out.display(),
            member.label()
        );
    }
    if out.join(MANIFEST_FILE).is_file() {
        let is_ensemble = Manifest::read(out)
            .ok()
            .and_then(|m| m.training)
            .is_some_and(|t| t.get("ensemble").is_some());
        if !is_ensemble {
            bail!(
                "{} already holds a bundle that is not an ensemble; refusing to overwrite it: choose another --out folder",
                out.display()
            );
        }
    }
    Ok(())
}

// --- merging graphs ------------------------------------------------------------------------------

/// The members' licences, each clause once: an ensemble is bound by the terms of every member.
/// Exported bundles write `audio encoder: ...; text encoder: ...`, and members trained against
/// one text encoder would otherwise repeat its clause.
fn combined_license(members: &[Member]) -> String {
    let mut clauses: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new(); // whole licences, to skip repeats
    for m in members {
        let license = m.manifest.license.clone().unwrap_or_else(|| {
            format!(
                "{} ({}): licence not recorded; check its terms before use",
                m.manifest.name,
                m.dir.display()
            )
        });
        if seen.contains(&license) {
            continue;
        }
        for clause in license.split("; ") {
            if !clauses.iter().any(|c| c == clause) {
                clauses.push(clause.to_string());
            }
        }
        seen.push(license);
    }
    let joined = clauses.join("; ");
    if seen.len() == 1 {
        joined
    } else {
        format!("the terms of every member apply: {joined}")
    }
}

fn ensemble_manifest(
    members: &[Member],
    name: Option<String>,
    embedding_dim: usize,
    min_frames: usize,
    (text_opset, audio_opset): (i64, i64),
    license: &str,
) -> Manifest {
    let first = &members[0];
    let n = members.len();
    let formula = format!(
        "embedding = concat(member embeddings, in member order) / sqrt({n}), for text and audio alike; members' embeddings being unit-norm, the ensemble's is too, and cos(audio, text) = mean of the members' cosines (per window; a file's pooled embedding is normalised as a whole)"
    );
    let mut offset = 0;
    let member_records: Vec<Value> = members
        .iter()
        .map(|m| {
            let record = json!({
                "member": m.index,
                "name": m.manifest.name,
                "path": m.dir.display().to_string(),
                "manifest_sha256": m.manifest_sha256,
                "embedding_dim": m.manifest.embedding_dim,
                "dims": [offset, offset + m.manifest.embedding_dim],
                "files": m.manifest.files,
                "license": m.manifest.license,
                "training": m.manifest.training,
            });
            offset += m.manifest.embedding_dim;
            record
        })
        .collect();
    let mut poolings: Vec<&str> = Vec::new();
    for m in members {
        if !poolings.contains(&m.text.pooling.as_str()) {
            poolings.push(&m.text.pooling);
        }
    }
    let text_source = json!({
        "ensemble": format!("{n} text encoders; byte-identical text.onnx files share one copy of their graph"),
        "members": members.iter().map(|m| json!({
            "member": m.index,
            "text_onnx_sha256": m.manifest.files[&m.text.onnx],
            "pooling": m.text.pooling,
            "source": m.text.source,
        })).collect::<Vec<_>>(),
        "opset": text_opset,
    });
    let audio_encoder = json!({
        "architecture": format!("ensemble of {n} audio encoders: {formula}"),
        "members": members.iter().map(|m| json!({
            "member": m.index,
            "name": m.manifest.name,
            "min_frames": m.min_frames,
            "encoder": m.audio.encoder,
        })).collect::<Vec<_>>(),
        "min_frames": min_frames,
        "short_inputs": "padded at the end to min_frames with silence by the extension; members that need more are padded to their own min_frames inside the graph",
        "opset": audio_opset,
        "exported_by": format!("audiotext-train {}", env!("CARGO_PKG_VERSION")),
    });
    Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        name: name.unwrap_or_else(|| {
            format!(
                "ensemble of {}",
                members
                    .iter()
                    .map(|m| m.manifest.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" + ")
            )
        }),
        embedding_dim,
        text: Some(TextSection {
            onnx: TEXT_ONNX_FILE.into(),
            tokenizer: TOKENIZER_FILE.into(),
            max_tokens: first.text.max_tokens,
            pooling: poolings.join("+"),
            input_ids: first.text.input_ids.clone(),
            attention_mask: first.text.attention_mask.clone(),
            output: OUTPUT_NAME.into(),
            source: Some(text_source),
            centre: None,
        }),
        audio: Some(AudioSection {
            onnx: AUDIO_ONNX_FILE.into(),
            front_end: first.audio.front_end.clone(),
            windowing: first.audio.windowing.clone(),
            input: AudioInput {
                waveform: None,
                name: first.audio.input.name.clone(),
                layout: first.audio.input.layout.clone(),
            },
            output: OUTPUT_NAME.into(),
            encoder: Some(audio_encoder),
            quantization: None,
        }),
        training: Some(json!({
            "ensemble": {
                "formula": formula,
                "members": member_records,
                "built_by": format!("audiotext-train {} ensemble", env!("CARGO_PKG_VERSION")),
            }
        })),
        license: Some(license.to_string()),
        files: BTreeMap::new(),
    }
}

// --- the check ------------------------------------------------------------------------------------
