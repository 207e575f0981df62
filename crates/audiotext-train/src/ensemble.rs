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
//! # The graph surgery
//!
//! Each of `audio.onnx` and `text.onnx` becomes one graph:
//! - one set of inputs, shared: every member reads the same log-mel (or token ids and attention
//!   mask), so members must agree on the front end, windowing and input layout (on the tokenizer
//!   and `max_tokens` for text); the ensemble's input names are the first member's, and every
//!   member's input is wired to them whatever it was called;
//! - every other name of a member graph (values, initializers, nodes, names inside subgraphs) is
//!   prefixed with `m<i>/`, `i` being the member's position, so graphs whose weights share names
//!   (every export calls its first convolution `block1.conv1.weight`) cannot collide; the nodes
//!   the ensemble adds are named `ensemble/...`;
//! - members whose file is byte-identical (same sha256, same input and output names) share one
//!   copy of the graph: its output is concatenated once per member. An ensemble of audio encoders
//!   trained against the same sentence encoder holds one BERT, not one per member;
//! - the members' outputs are concatenated on axis 1 (`Concat`) and multiplied by `1/sqrt(n)`
//!   (`Mul`) into the output `embedding`.
//!
//! The extension pads a window shorter than the manifest's `encoder.min_frames` with silence.
//! The ensemble declares the smallest of its members' minimums; a member that needs more gets
//! the same padding inside the merged graph (`Shape`, `Gather`, `Sub`, `Max`, `Concat`, `Pad`),
//! so it sees exactly the input it sees alone.
//!
//! One graph imports one opset per domain: the merged graph takes the members' highest
//! default-domain opset, after checking that no member at a lower opset uses an operator whose
//! signature changed in between (ONNX's changelog; ReduceMean's `axes` became an input at 18,
//! say). Every export of this project is at opset 17.
//!
//! # The check
//!
//! After writing, the ensemble and every member are loaded the way the extension loads them
//! (`Bundle`, sha256 checks, ONNX Runtime sessions) and run on generated log-mel windows (full
//! length, shorter, and shorter than every member's minimum) and a few captions. The ensemble's
//! embeddings must equal the members' concatenated and scaled, and its audio-text cosines the
//! mean of the members', within 1e-5; otherwise the command fails and removes the manifest, so
//! that no wrong ensemble can be registered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use prost::Message;
use serde_json::{json, Value};

use crate::split::SplitMix64;
use audiotext_core::audio::LogMel;
use audiotext_core::model::manifest::{
    sha256_file, AudioInput, AudioSection, Manifest, TextSection, MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
};
use audiotext_core::model::Bundle;
use audiotext_onnx::proto::{
    tensor_shape_proto::dimension, type_proto, GraphProto, OperatorSetIdProto,
    StringStringEntryProto, ValueInfoProto,
};
use audiotext_onnx::{
    ir_version_for_opset, value_info, AttributeProto, DataType, Dim, ModelProto, NodeProto,
    TensorProto,
};

use crate::run::ort_runtime;

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
/// Prefix of every name the ensemble itself adds to a graph.
const ENSEMBLE_PREFIX: &str = "ensemble/";
/// Captions the check embeds.
const CHECK_CAPTIONS: [&str; 4] = [
    "a dog barks",
    "rain falls on a tin roof",
    "a car passes by on a wet road while people talk",
    "birds",
];

/// Default-domain operators whose inputs or attributes changed incompatibly at an opset
/// (ONNX's Changelog.md, from opset 13 on): a graph using one of them below that opset cannot be
/// declared at that opset or later without converting the node.
const SIGNATURE_CHANGES: &[(i64, &[&str])] = &[
    (16, &["RoiAlign"]),
    (
        18,
        &[
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSumSquare",
        ],
    ),
    (20, &["DFT", "GridSample"]),
    (21, &["GroupNormalization"]),
];

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

fn default_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| is_default_domain(o.domain.as_deref()))
        .and_then(|o| o.version)
        .unwrap_or(0)
}

fn is_default_domain(domain: Option<&str>) -> bool {
    matches!(domain, None | Some("") | Some("ai.onnx"))
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

/// One encoder graph inside a merged graph: a member's, or one copy shared by the members whose
/// files are byte-identical.
struct GraphCopy {
    /// The first member using the copy, for messages.
    label: String,
    /// Prepended to every name of the graph, e.g. `m0/`.
    prefix: String,
    model: ModelProto,
    /// Each input the member's manifest names, and the input of the merged graph it reads.
    inputs: Vec<(String, String)>,
    /// The member's output (its own name, before prefixing).
    output: String,
    dim: usize,
    /// Padding of the time axis the member needs beyond the ensemble's (audio only).
    pad: Option<TimePadding>,
}

/// `Pad` at the end of the frames axis up to `min_frames`, with the front end's silence, as the
/// extension pads a window for this member alone.
#[derive(Debug, Clone, PartialEq)]
struct TimePadding {
    frames_axis: usize,
    rank: usize,
    min_frames: usize,
    silence: f32,
}

/// Everything `merge` needs for one file.
struct MergePlan {
    /// `text.onnx` or `audio.onnx`, for messages.
    file: &'static str,
    graph_name: String,
    copies: Vec<GraphCopy>,
    /// For each member in order, the copy whose output is its part of the concatenation.
    member_copy: Vec<usize>,
    doc: String,
}

/// Parses a member's ONNX file, refusing one that holds fields our protobuf subset would drop
/// (re-encoding must give back as many bytes as were read).
fn read_onnx(path: &Path, label: &str) -> Result<ModelProto> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{label}: cannot read {}", path.display()))?;
    let model = ModelProto::from_bytes(&bytes)
        .with_context(|| format!("{label}: {} is not an ONNX model", path.display()))?;
    if model.encoded_len() != bytes.len() {
        bail!(
            "{label}: {} holds ONNX fields this tool does not carry (external data, sparse initializers, local functions, training info or non-tensor types): merging it would drop them; re-export the member with audiotext-train",
            path.display()
        );
    }
    Ok(model)
}

/// Members with equal `key`s (byte-identical files, same names) share one graph copy. Returns
/// the first member of each copy, and each member's copy.
fn group_members(members: &[Member], key: impl Fn(&Member) -> String) -> (Vec<usize>, Vec<usize>) {
    let mut first_of_group: Vec<usize> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let member_copy = members
        .iter()
        .map(|m| {
            *by_key.entry(key(m)).or_insert_with(|| {
                first_of_group.push(m.index);
                first_of_group.len() - 1
            })
        })
        .collect();
    (first_of_group, member_copy)
}

fn text_plan(members: &[Member]) -> Result<MergePlan> {
    let first = &members[0];
    let (owners, member_copy) = group_members(members, |m| {
        format!(
            "{} {} {} {} {}",
            m.manifest.files[&m.text.onnx],
            m.text.input_ids,
            m.text.attention_mask,
            m.text.output,
            m.manifest.embedding_dim
        )
    });
    let copies = owners
        .iter()
        .map(|&i| {
            let m = &members[i];
            Ok(GraphCopy {
                label: m.label(),
                prefix: format!("m{i}/"),
                model: read_onnx(&m.dir.join(&m.text.onnx), &m.label())?,
                inputs: vec![
                    (m.text.input_ids.clone(), first.text.input_ids.clone()),
                    (
                        m.text.attention_mask.clone(),
                        first.text.attention_mask.clone(),
                    ),
                ],
                output: m.text.output.clone(),
                dim: m.manifest.embedding_dim,
                pad: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok(MergePlan {
        file: TEXT_ONNX_FILE,
        graph_name: "ensemble_text_encoder".into(),
        copies,
        member_copy,
        doc: format!(
            "token ids + attention mask -> concatenation of {} members' L2-normalised text embeddings / sqrt({})",
            members.len(),
            members.len()
        ),
    })
}

fn audio_plan(members: &[Member], ensemble_min_frames: usize) -> Result<MergePlan> {
    let first = &members[0];
    let layout: Vec<&str> = first.audio.input.layout.split(',').map(str::trim).collect();
    let frames_axis = layout
        .iter()
        .position(|a| *a == "frames")
        .with_context(|| {
            format!(
                "{}: audio.input.layout {:?} has no \"frames\" axis",
                first.label(),
                first.audio.input.layout
            )
        })?;
    let padding = |m: &Member| {
        (m.min_frames > ensemble_min_frames).then(|| TimePadding {
            frames_axis,
            rank: layout.len(),
            min_frames: m.min_frames,
            silence: silence_value(&m.audio),
        })
    };
    let (owners, member_copy) = group_members(members, |m| {
        format!(
            "{} {} {} {} {:?}",
            m.manifest.files[&m.audio.onnx],
            m.audio.input.name,
            m.audio.output,
            m.manifest.embedding_dim,
            padding(m)
        )
    });
    let copies = owners
        .iter()
        .map(|&i| {
            let m = &members[i];
            Ok(GraphCopy {
                label: m.label(),
                prefix: format!("m{i}/"),
                model: read_onnx(&m.dir.join(&m.audio.onnx), &m.label())?,
                inputs: vec![(m.audio.input.name.clone(), first.audio.input.name.clone())],
                output: m.audio.output.clone(),
                dim: m.manifest.embedding_dim,
                pad: padding(m),
            })
        })
        .collect::<Result<_>>()?;
    Ok(MergePlan {
        file: AUDIO_ONNX_FILE,
        graph_name: "ensemble_audio_encoder".into(),
        copies,
        member_copy,
        doc: format!(
            "log-mel ({}) -> concatenation of {} members' L2-normalised audio embeddings / sqrt({})",
            first.audio.input.layout,
            members.len(),
            members.len()
        ),
    })
}

/// The log-mel value of silence, as the extension pads windows (`FrontEnd::silence_value`).
fn silence_value(audio: &AudioSection) -> f32 {
    audio.front_end.silence_value()
}

fn node(
    op: &str,
    name: String,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(name),
        op_type: Some(op.to_string()),
        attribute,
        ..Default::default()
    }
}

/// Nodes and constants padding `input` to `pad.min_frames` frames; returns the padded value.
fn time_padding_nodes(
    input: &str,
    pad: &TimePadding,
    scope: &str,
    nodes: &mut Vec<NodeProto>,
    initializers: &mut Vec<TensorProto>,
) -> String {
    let v = |s: &str| format!("{scope}{s}");
    let mut constant = |s: &str, values: &[i64]| {
        initializers.push(TensorProto::from_i64(&v(s), &[values.len() as i64], values));
        v(s)
    };
    // pads = [begin of every axis..., end of every axis...]: only the end of the frames axis.
    let before = constant("pads_before", &vec![0; pad.rank + pad.frames_axis]);
    let after = constant("pads_after", &vec![0; pad.rank - pad.frames_axis - 1]);
    let axis = constant("frames_axis", &[pad.frames_axis as i64]);
    let min_frames = constant("min_frames", &[pad.min_frames as i64]);
    let zero = constant("zero", &[0]);
    initializers.push(TensorProto::from_f32(&v("silence"), &[], &[pad.silence]));
    let mut add = |op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>| {
        nodes.push(node(op, v(out), inputs, &v(out), attrs));
        v(out)
    };
    let shape = add("Shape", &[input], "shape", vec![]);
    let frames = add(
        "Gather",
        &[&shape, &axis],
        "frames",
        vec![AttributeProto::int("axis", 0)],
    );
    let missing = add("Sub", &[&min_frames, &frames], "missing", vec![]);
    let missing = add("Max", &[&missing, &zero], "missing_clamped", vec![]);
    let mut parts = vec![before.as_str(), missing.as_str()];
    if pad.rank - pad.frames_axis - 1 > 0 {
        parts.push(after.as_str());
    }
    let pads = add(
        "Concat",
        &parts,
        "pads",
        vec![AttributeProto::int("axis", 0)],
    );
    add(
        "Pad",
        &[input, &pads, &v("silence")],
        "padded",
        vec![AttributeProto::string("mode", "constant")],
    )
}

/// Element type and dims of a tensor value.
fn tensor_type(v: &ValueInfoProto) -> Option<(i32, Vec<Option<dimension::Value>>)> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some((
            t.elem_type?,
            t.shape
                .as_ref()
                .map(|s| s.dim.iter().map(|d| d.value.clone()).collect())
                .unwrap_or_default(),
        )),
    }
}

/// Whether two declarations of an input can be fed the same tensor.
fn compatible_inputs(a: &ValueInfoProto, b: &ValueInfoProto) -> bool {
    match (tensor_type(a), tensor_type(b)) {
        (Some((ea, da)), Some((eb, db))) => {
            ea == eb
                && da.len() == db.len()
                && da.iter().zip(&db).all(|pair| match pair {
                    (Some(dimension::Value::DimValue(x)), Some(dimension::Value::DimValue(y))) => {
                        x == y
                    }
                    _ => true,
                })
        }
        _ => false,
    }
}

/// Renames every value of a graph, subgraphs included, and prefixes node names.
fn rename_graph(graph: &mut GraphProto, rename: &dyn Fn(&str) -> String, prefix: &str) {
    for n in &mut graph.node {
        for name in n.input.iter_mut().chain(n.output.iter_mut()) {
            *name = rename(name);
        }
        if let Some(name) = &mut n.name {
            *name = format!("{prefix}{name}");
        }
        for a in &mut n.attribute {
            for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                rename_graph(g, rename, prefix);
            }
        }
    }
    for t in &mut graph.initializer {
        t.name = t.name.as_deref().map(rename);
    }
    for v in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
    {
        v.name = v.name.as_deref().map(rename);
    }
}

/// Default-domain operators a graph uses, subgraphs included.
fn default_domain_ops(graph: &GraphProto, ops: &mut HashSet<String>) {
    for n in &graph.node {
        if is_default_domain(n.domain.as_deref()) {
            if let Some(op) = &n.op_type {
                ops.insert(op.clone());
            }
        }
        for a in &n.attribute {
            for g in a.g.iter().chain(&a.graphs) {
                default_domain_ops(g, ops);
            }
        }
    }
}

/// The opsets of the merged graph: the highest default-domain opset of the copies (when no
/// copy at a lower one uses an operator that changed in between) and the other domains'.
fn merged_opsets(copies: &[GraphCopy], file: &str) -> Result<(Vec<OperatorSetIdProto>, i64)> {
    let mut versions = Vec::with_capacity(copies.len());
    let mut other_domains: BTreeMap<String, (i64, &str)> = BTreeMap::new();
    for copy in copies {
        let mut default = None;
        for import in &copy.model.opset_import {
            let version = import.version.unwrap_or(1);
            let domain = import.domain.clone().unwrap_or_default();
            if is_default_domain(Some(&domain)) {
                default = Some(version);
                continue;
            }
            match other_domains.get(&domain) {
                Some((v, owner)) if *v != version => bail!(
                    "{owner}'s {file} imports {domain:?} at version {v} and {}'s at {version}; one graph holds one version per domain: re-export them at the same version",
                    copy.label
                ),
                _ => {
                    other_domains.insert(domain, (version, copy.label.as_str()));
                }
            }
        }
        let default = default
            .with_context(|| format!("{}'s {file} imports no default-domain opset", copy.label))?;
        if default < MIN_OPSET {
            bail!(
                "{}'s {file} is at opset {default}; ensembles are built from opset {MIN_OPSET} on: re-export it (audiotext-train exports at 17)",
                copy.label
            );
        }
        versions.push(default);
    }
    let (highest_at, &highest) = versions
        .iter()
        .enumerate()
        .max_by_key(|(_, v)| **v)
        .expect("at least one copy");
    for (copy, &version) in copies.iter().zip(&versions) {
        if version == highest {
            continue;
        }
        let mut ops = HashSet::new();
        if let Some(graph) = &copy.model.graph {
            default_domain_ops(graph, &mut ops);
        }
        for (since, changed) in SIGNATURE_CHANGES {
            if *since <= version || *since > highest {
                continue;
            }
            if let Some(op) = changed.iter().find(|op| ops.contains(**op)) {
                bail!(
                    "{}'s {file} is at opset {version} and uses {op}, whose inputs changed at opset {since}, while {}'s is at opset {highest}; one graph holds one opset: export the members at the same opset",
                    copy.label,
                    copies[highest_at].label
                );
            }
        }
    }
    let mut imports = vec![OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(highest),
    }];
    imports.extend(
        other_domains
            .into_iter()
            .map(|(domain, (version, _))| OperatorSetIdProto {
                domain: Some(domain),
                version: Some(version),
            }),
    );
    Ok((imports, highest))
}

/// One graph from the plan's copies: shared inputs, prefixed member graphs, their outputs
/// concatenated in member order and multiplied by `scale` (see the module docs).
fn merge(plan: MergePlan, scale: f32) -> Result<ModelProto> {
    let file = plan.file;
    let (opset_import, opset) = merged_opsets(&plan.copies, file)?;
    let ir_version = plan
        .copies
        .iter()
        .filter_map(|c| c.model.ir_version)
        .chain([ir_version_for_opset(opset)])
        .max()
        .expect("one value at least");

    let mut inputs: Vec<ValueInfoProto> = Vec::new();
    let mut input_owner: HashMap<String, (ValueInfoProto, String)> = HashMap::new();
    let mut nodes: Vec<NodeProto> = Vec::new();
    let mut initializers: Vec<TensorProto> = Vec::new();
    let mut annotations: Vec<ValueInfoProto> = Vec::new();
    let mut copy_outputs: Vec<String> = Vec::new();
    let mut copy_dims: Vec<usize> = Vec::new();
    let mut batch_dim: Option<String> = None;

    for mut copy in plan.copies {
        let label = copy.label.clone();
        let mut graph = copy
            .model
            .graph
            .take()
            .with_context(|| format!("{label}'s {file} has no graph"))?;
        let initializer_names: HashSet<String> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .collect();
        // Old exporters list initializers among the inputs too; those are weights, not inputs.
        let real_inputs: Vec<ValueInfoProto> = graph
            .input
            .drain(..)
            .filter(|v| !initializer_names.contains(v.name.as_deref().unwrap_or("")))
            .collect();
        let declared: Vec<&str> = copy.inputs.iter().map(|(m, _)| m.as_str()).collect();
        for input in &real_inputs {
            let name = input.name.as_deref().unwrap_or("");
            if !declared.contains(&name) {
                bail!(
                    "{label}'s {file} has an input {name:?} its manifest does not name (it names {declared:?}); the extension feeds only those, so this member cannot be loaded as it is: re-export it"
                );
            }
        }
        // Where each member input reads from in the merged graph.
        let mut reads: HashMap<String, String> = HashMap::new();
        for (member_name, shared_name) in &copy.inputs {
            let declaration = real_inputs
                .iter()
                .find(|v| v.name.as_deref() == Some(member_name.as_str()))
                .with_context(|| {
                    format!("{label}'s {file} has no input {member_name:?}, which its manifest names; re-export that member")
                })?;
            match input_owner.get(shared_name) {
                Some((first, owner)) => {
                    if !compatible_inputs(first, declaration) {
                        bail!(
                            "{label}'s {file} declares its input {member_name:?} with another type or shape than {owner}'s {shared_name:?}; both are fed the same tensor, so they must agree"
                        );
                    }
                }
                None => {
                    let mut shared = declaration.clone();
                    shared.name = Some(shared_name.clone());
                    inputs.push(shared.clone());
                    input_owner.insert(shared_name.clone(), (shared, label.clone()));
                }
            }
            let source = match &copy.pad {
                Some(pad) => time_padding_nodes(
                    shared_name,
                    pad,
                    &format!("{ENSEMBLE_PREFIX}{}pad/", copy.prefix),
                    &mut nodes,
                    &mut initializers,
                ),
                None => shared_name.clone(),
            };
            reads.insert(member_name.clone(), source);
        }

        let output = graph
            .output
            .iter()
            .find(|v| v.name.as_deref() == Some(copy.output.as_str()))
            .with_context(|| {
                format!(
                    "{label}'s {file} has no output {:?}, which its manifest names; re-export that member",
                    copy.output
                )
            })?;
        if let Some((_, dims)) = tensor_type(output) {
            if let Some(Some(dimension::Value::DimValue(d))) = dims.get(1) {
                if *d as usize != copy.dim {
                    bail!(
                        "{label}'s {file} outputs {d} dims, while its manifest says embedding_dim {}; re-export that member",
                        copy.dim
                    );
                }
            }
            if let Some(Some(dimension::Value::DimParam(p))) = dims.first() {
                batch_dim.get_or_insert_with(|| p.clone());
            }
        }

        let prefix = copy.prefix.clone();
        let rename = |name: &str| -> String {
            if name.is_empty() {
                // An omitted optional input stays omitted.
                String::new()
            } else if let Some(source) = reads.get(name) {
                source.clone()
            } else {
                format!("{prefix}{name}")
            }
        };
        // Annotations of the member's inputs would now describe the shared input: dropped.
        graph
            .value_info
            .retain(|v| !reads.contains_key(v.name.as_deref().unwrap_or("")));
        rename_graph(&mut graph, &rename, &prefix);
        copy_outputs.push(rename(&copy.output));
        copy_dims.push(copy.dim);
        nodes.append(&mut graph.node);
        initializers.append(&mut graph.initializer);
        annotations.append(&mut graph.value_info);
    }

    let concat = format!("{ENSEMBLE_PREFIX}concat");
    let scale_name = format!("{ENSEMBLE_PREFIX}scale");
    let parts: Vec<&str> = plan
        .member_copy
        .iter()
        .map(|&c| copy_outputs[c].as_str())
        .collect();
    nodes.push(node(
        "Concat",
        concat.clone(),
        &parts,
        &concat,
        vec![AttributeProto::int("axis", 1)],
    ));
    initializers.push(TensorProto::from_f32(&scale_name, &[], &[scale]));
    nodes.push(node(
        "Mul",
        format!("{ENSEMBLE_PREFIX}scale_output"),
        &[&concat, &scale_name],
        OUTPUT_NAME,
        vec![],
    ));
    let total: usize = plan.member_copy.iter().map(|&c| copy_dims[c]).sum();
    let batch = batch_dim.unwrap_or_else(|| "batch".into());
    let graph = GraphProto {
        node: nodes,
        name: Some(plan.graph_name),
        initializer: initializers,
        doc_string: None,
        input: inputs,
        output: vec![value_info(
            OUTPUT_NAME,
            DataType::Float,
            &[Dim::Symbolic(batch), Dim::Fixed(total as i64)],
        )],
        value_info: annotations,
    };
    check_single_definitions(&graph, file)?;
    Ok(ModelProto {
        ir_version: Some(ir_version),
        producer_name: Some("audiotext-train ensemble".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: Some(plan.doc),
        graph: Some(graph),
        opset_import,
        metadata_props: vec![StringStringEntryProto {
            key: Some("ensemble".into()),
            value: Some(format!(
                "{} members; embedding = concat(member embeddings) / sqrt({})",
                plan.member_copy.len(),
                plan.member_copy.len()
            )),
        }],
    })
}

/// Every value of the merged graph is defined once (an input, an initializer or a node output)
/// and defined before a node reads it: the prefixes keep members apart, this proves it.
fn check_single_definitions(graph: &GraphProto, file: &str) -> Result<()> {
    let mut defined: HashSet<&str> = HashSet::new();
    let inputs = graph.input.iter().filter_map(|v| v.name.as_deref());
    let weights = graph.initializer.iter().filter_map(|t| t.name.as_deref());
    for name in inputs.chain(weights) {
        if !defined.insert(name) {
            bail!("internal error: the merged {file} defines {name:?} twice");
        }
    }
    for n in &graph.node {
        for input in n.input.iter().filter(|i| !i.is_empty()) {
            // A subgraph may read outer values; top-level nodes read what is defined above.
            if !defined.contains(input.as_str()) {
                bail!(
                    "internal error: in the merged {file}, node {:?} reads {input:?} before it is defined",
                    n.name.as_deref().unwrap_or("")
                );
            }
        }
        for output in n.output.iter().filter(|o| !o.is_empty()) {
            if !defined.insert(output) {
                bail!("internal error: the merged {file} defines {output:?} twice");
            }
        }
    }
    Ok(())
}

// --- the manifest ---------------------------------------------------------------------------------

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

/// Log-mel windows with some structure (dB values in about [-100, 0]): two full windows, one
/// shorter, and one of 3 frames, shorter than any encoder's minimum.
fn check_windows(audio: &AudioSection) -> Vec<LogMel> {
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

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Largest |ensemble - concat(members) * scale| over every row and component.
fn concat_diff(ensemble: &[Vec<f32>], members: &[Vec<Vec<f32>>], scale: f32) -> f32 {
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
fn check_ensemble(out: &Path, members: &[Member], ort: Option<&Path>) -> Result<Check> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use audiotext_core::audio::{FrontEnd, Windowing};
    use audiotext_onnx::{GraphBuilder, ModelInfo};

    const N_MELS: usize = 16;
    const VOCAB: &[&str] = &[
        "[UNK]", "a", "dog", "barks", "rain", "falls", "on", "tin", "roof", "car", "passes", "by",
        "wet", "road", "while", "people", "talk", "birds", "the", "sings",
    ];

    use crate::testing::TempDir;

    fn front_end() -> FrontEnd {
        FrontEnd {
            sample_rate: 16_000,
            n_fft: 512,
            win_length: 512,
            hop_length: 256,
            n_mels: N_MELS,
            fmax: 8_000.0,
            ..FrontEnd::panns_32k()
        }
    }

    fn windowing() -> Windowing {
        Windowing {
            clip_seconds: 0.5,
            hop_seconds: 0.5,
            min_seconds: 0.2,
            pooling: "mean".into(),
        }
    }

    /// A word-level tokenizer over `vocab` (lower-cased, split on whitespace).
    fn tokenizer_json(vocab: &[&str]) -> String {
        let ids: serde_json::Map<String, Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), json!(i)))
            .collect();
        json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": ids, "unk_token": "[UNK]"},
        })
        .to_string()
    }

    fn random(seed: u64, len: usize) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len)
            .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
            .collect()
    }

    /// `x / max(|x|, eps)` over axis 1 into the graph output `embedding`.
    fn normalise_to_output(g: &mut GraphBuilder, x: &str, dim: usize) {
        let norm = g.reduce("ReduceL2", x, &[1], true);
        let eps = g.scalar_f32("eps", 1e-12);
        let norm = g.node("Max", &[&norm, &eps], vec![]);
        g.node_to("Div", &[x, &norm], vec![], &["embedding"]);
        g.output(
            "embedding",
            DataType::Float,
            &["batch".into(), (dim as i64).into()],
        );
    }

    /// A sentence encoder in miniature: token embeddings, masked mean, L2 normalisation.
    fn text_onnx(dim: usize, seed: u64) -> ModelProto {
        let mut g = GraphBuilder::new("tiny_text", 17);
        let dims: [Dim; 2] = ["batch".into(), "tokens".into()];
        let ids = g.input("input_ids", DataType::Int64, &dims);
        let mask = g.input("attention_mask", DataType::Int64, &dims);
        let table = g.initializer_f32(
            "embeddings",
            &[VOCAB.len() as i64, dim as i64],
            &random(seed, VOCAB.len() * dim),
        );
        let tokens = g.node(
            "Gather",
            &[&table, &ids],
            vec![AttributeProto::int("axis", 0)],
        );
        let mask = g.node(
            "Cast",
            &[&mask],
            vec![AttributeProto::int("to", DataType::Float as i64)],
        );
        let mask = g.unsqueeze(&mask, &[2]);
        let masked = g.node("Mul", &[&tokens, &mask], vec![]);
        let sum = g.reduce("ReduceSum", &masked, &[1], false);
        let count = g.reduce("ReduceSum", &mask, &[1], false);
        let one = g.scalar_f32("one", 1.0);
        let count = g.node("Max", &[&count, &one], vec![]);
        let mean = g.node("Div", &[&sum, &count], vec![]);
        normalise_to_output(&mut g, &mean, dim);
        g.finish(ModelInfo::default())
    }

    /// An audio encoder in miniature. Its convolution spans `min_frames` frames without time
    /// padding, so it fails on shorter windows, like an encoder whose poolings need a minimum.
    /// Member graphs share weight names (`conv.weight`, ...), which the merge must keep apart;
    /// a `Constant` node checks that node outputs are renamed too.
    fn audio_onnx(dim: usize, seed: u64, min_frames: usize) -> ModelProto {
        let mut g = GraphBuilder::new("tiny_audio", 17);
        let x = g.input(
            "log_mel",
            DataType::Float,
            &[
                "batch".into(),
                1i64.into(),
                "frames".into(),
                (N_MELS as i64).into(),
            ],
        );
        let gain = g.node(
            "Constant",
            &[],
            vec![AttributeProto::tensor(
                "value",
                TensorProto::from_f32("gain", &[], &[0.02]),
            )],
        );
        let x = g.node("Mul", &[&x, &gain], vec![]);
        let k = min_frames as i64;
        let w = g.initializer_f32(
            "conv.weight",
            &[4, 1, k, 3],
            &random(seed, 4 * 3 * min_frames),
        );
        let b = g.initializer_f32("conv.bias", &[4], &random(seed + 100, 4));
        let y = g.node(
            "Conv",
            &[&x, &w, &b],
            vec![
                AttributeProto::ints("kernel_shape", &[k, 3]),
                AttributeProto::ints("pads", &[0, 1, 0, 1]),
            ],
        );
        let y = g.node("Relu", &[&y], vec![]);
        let y = g.reduce("ReduceMean", &y, &[3], false);
        let max = g.reduce("ReduceMax", &y, &[2], false);
        let mean = g.reduce("ReduceMean", &y, &[2], false);
        let y = g.node("Add", &[&max, &mean], vec![]);
        let y = g.linear(
            "proj",
            &y,
            &random(seed + 200, dim * 4),
            Some(&random(seed + 300, dim)),
            4,
            dim,
        );
        normalise_to_output(&mut g, &y, dim);
        g.finish(ModelInfo::default())
    }

    struct MemberSpec<'a> {
        name: &'a str,
        dim: usize,
        text: Vec<u8>,
        audio: Vec<u8>,
        min_frames: usize,
        tokenizer: String,
        front_end: FrontEnd,
        windowing: Windowing,
        license: &'a str,
    }

    impl<'a> MemberSpec<'a> {
        fn new(name: &'a str, dim: usize, seed: u64, min_frames: usize) -> MemberSpec<'a> {
            MemberSpec {
                name,
                dim,
                text: text_onnx(dim, seed).to_bytes(),
                audio: audio_onnx(dim, seed + 1, min_frames).to_bytes(),
                min_frames,
                tokenizer: tokenizer_json(VOCAB),
                front_end: front_end(),
                windowing: windowing(),
                license: "Apache-2.0 (tiny)",
            }
        }

        fn write(&self, dir: &Path) -> PathBuf {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("text.onnx"), &self.text).unwrap();
            std::fs::write(dir.join("audio.onnx"), &self.audio).unwrap();
            std::fs::write(dir.join("tokenizer.json"), &self.tokenizer).unwrap();
            let mut m = Manifest {
                format_version: MANIFEST_FORMAT_VERSION,
                name: self.name.into(),
                embedding_dim: self.dim,
                text: Some(TextSection {
                    onnx: "text.onnx".into(),
                    tokenizer: "tokenizer.json".into(),
                    max_tokens: 16,
                    pooling: "mean".into(),
                    input_ids: "input_ids".into(),
                    attention_mask: "attention_mask".into(),
                    output: "embedding".into(),
                    source: None,
                }),
                audio: Some(AudioSection {
                    onnx: "audio.onnx".into(),
                    front_end: self.front_end.clone(),
                    windowing: self.windowing.clone(),
                    input: AudioInput {
                        waveform: None,
                        name: "log_mel".into(),
                        layout: "batch,1,frames,mels".into(),
                    },
                    output: "embedding".into(),
                    encoder: Some(json!({"min_frames": self.min_frames})),
                    quantization: None,
                }),
                training: Some(json!({"note": format!("test member {}", self.name)})),
                license: Some(self.license.into()),
                files: Default::default(),
            };
            m.write(dir).unwrap();
            dir.to_path_buf()
        }
    }

    fn graph_of(path: &Path) -> GraphProto {
        ModelProto::from_bytes(&std::fs::read(path).unwrap())
            .unwrap()
            .graph
            .unwrap()
    }

    fn count_ops(graph: &GraphProto, op: &str) -> usize {
        graph
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn ensemble_embeds_as_scaled_concatenation_and_scores_as_mean_of_members() {
        if let Err(e) = ort_runtime(None) {
            eprintln!("skipping: the ensemble test needs ONNX Runtime ({e})");
            return;
        }
        let tmp = TempDir::new("e2e");
        // Different text and audio graphs and dims; `c` has a byte copy of `a`'s text encoder
        // (shared in the ensemble); `b` needs 5 frames where the others need 1.
        let a = MemberSpec::new("a", 8, 1, 1).write(&tmp.0.join("a"));
        let b_spec = MemberSpec {
            license: "CC0-1.0 (tiny b)",
            ..MemberSpec::new("b", 6, 20, 5)
        };
        let b = b_spec.write(&tmp.0.join("b"));
        let c_spec = MemberSpec {
            text: std::fs::read(a.join("text.onnx")).unwrap(),
            ..MemberSpec::new("c", 8, 40, 1)
        };
        let c = c_spec.write(&tmp.0.join("c"));
        let out = tmp.0.join("ensemble");
        let members = vec![a.clone(), b.clone(), c.clone()];
        let report = build(&EnsembleJob {
            members: &members,
            out: &out,
            name: None,
            ort: None,
        })
        .unwrap();
        eprintln!("{:?}", report.check);
        assert_eq!(report.embedding_dim, 22);
        assert_eq!((report.text_graphs, report.audio_graphs), (2, 3));
        assert!(report.check.audio_max_diff <= TOLERANCE);

        // The manifest.
        let manifest = Manifest::read(&out).unwrap();
        assert_eq!(manifest.name, "ensemble of a + b + c");
        assert_eq!(manifest.embedding_dim, 22);
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            ["audio.onnx", "text.onnx", "tokenizer.json"]
        );
        let record = &manifest.training.as_ref().unwrap()["ensemble"];
        assert!(record["formula"].as_str().unwrap().contains("sqrt(3)"));
        let listed = record["members"].as_array().unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(
            listed[1]["manifest_sha256"],
            json!(sha256_file(&b.join(MANIFEST_FILE)).unwrap())
        );
        assert_eq!(listed[1]["dims"], json!([8, 14]));
        assert!(record["check"]["audio_max_abs_diff"].as_f64().unwrap() <= 1e-5);
        assert_eq!(
            manifest.license.as_deref(),
            Some("the terms of every member apply: Apache-2.0 (tiny); CC0-1.0 (tiny b)")
        );
        assert_eq!(
            manifest.audio.as_ref().unwrap().encoder.as_ref().unwrap()["min_frames"],
            json!(1)
        );

        // The graphs: one text copy for a and c, in-graph padding for b only.
        let text = graph_of(&out.join("text.onnx"));
        assert_eq!(count_ops(&text, "Gather"), 2);
        let concat = text
            .node
            .iter()
            .find(|n| n.op_type.as_deref() == Some("Concat"))
            .unwrap();
        assert_eq!(
            concat.input,
            ["m0/embedding", "m1/embedding", "m0/embedding"]
        );
        let audio = graph_of(&out.join("audio.onnx"));
        assert_eq!(count_ops(&audio, "Conv"), 3);
        assert_eq!(count_ops(&audio, "Pad"), 1);
        assert_eq!(audio.input.len(), 1);
        assert_eq!(audio.output[0].name.as_deref(), Some("embedding"));

        // Independently of the build's own check: other windows and captions, through the
        // extension's loading path.
        let mut rng = SplitMix64::new(5);
        let windows: Vec<LogMel> = [40usize, 40, 7, 2]
            .iter()
            .map(|&frames| LogMel {
                frames,
                n_mels: N_MELS,
                data: (0..frames * N_MELS)
                    .map(|_| -80.0 + 70.0 * rng.next_f64() as f32)
                    .collect(),
            })
            .collect();
        let refs: Vec<&LogMel> = windows.iter().collect();
        let captions = [
            "the dog sings",
            "rain on the road",
            "birds talk while a car passes",
        ];
        let embed = |dir: &Path| {
            let bundle = Bundle::open(dir).unwrap();
            (
                bundle
                    .audio_encoder()
                    .unwrap()
                    .embed_windows(&refs)
                    .unwrap(),
                bundle.text_encoder().unwrap().embed(&captions).unwrap(),
            )
        };
        let (ens_audio, ens_text) = embed(&out);
        let parts: Vec<_> = members.iter().map(|m| embed(m)).collect();
        let scale = 1.0 / 3f32.sqrt();
        let mut worst = (0f32, 0f32, 0f32);
        for w in 0..windows.len() {
            let expected: Vec<f32> = parts
                .iter()
                .flat_map(|(audio, _)| audio[w].iter().map(|x| x * scale))
                .collect();
            worst.0 = worst.0.max(max_abs_diff(&ens_audio[w], &expected));
            let norm = dot(&ens_audio[w], &ens_audio[w]).sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "window {w}: norm {norm}");
        }
        for t in 0..captions.len() {
            let expected: Vec<f32> = parts
                .iter()
                .flat_map(|(_, text)| text[t].iter().map(|x| x * scale))
                .collect();
            worst.1 = worst.1.max(max_abs_diff(&ens_text[t], &expected));
        }
        let mut spread = 0f32;
        for w in 0..windows.len() {
            for t in 0..captions.len() {
                let member_scores: Vec<f32> = parts
                    .iter()
                    .map(|(audio, text)| dot(&audio[w], &text[t]))
                    .collect();
                let mean = member_scores.iter().sum::<f32>() / 3.0;
                worst.2 = worst.2.max((dot(&ens_audio[w], &ens_text[t]) - mean).abs());
                spread = spread.max(
                    member_scores.iter().cloned().fold(f32::MIN, f32::max)
                        - member_scores.iter().cloned().fold(f32::MAX, f32::min),
                );
            }
        }
        eprintln!(
            "max |diff|: audio {:.2e}, text {:.2e}, cosine vs mean {:.2e}; member cosines spread {spread:.2}",
            worst.0, worst.1, worst.2
        );
        assert!(
            worst.0 <= 1e-5 && worst.1 <= 1e-5 && worst.2 <= 1e-5,
            "{worst:?}"
        );
        assert!(
            spread > 0.1,
            "the members must disagree for the test to mean anything"
        );

        // The check itself fails on an ensemble that does not match its members.
        let shuffled: Vec<Member> = [&b, &a, &c]
            .iter()
            .enumerate()
            .map(|(i, dir)| load_member(i, dir).unwrap())
            .collect();
        let error = check_ensemble(&out, &shuffled, None).unwrap_err();
        assert!(
            format!("{error:#}").contains("ensemble vs concat(members)/sqrt(3)"),
            "{error:#}"
        );

        // Rebuilding into the same folder replaces the earlier ensemble.
        let again = build(&EnsembleJob {
            members: &members[..2],
            out: &out,
            name: Some("a+b".into()),
            ort: None,
        })
        .unwrap();
        assert_eq!(again.embedding_dim, 14);
        assert_eq!(Manifest::read(&out).unwrap().name, "a+b");
    }

    fn build_error(members: &[PathBuf], out: &Path) -> String {
        let error = build(&EnsembleJob {
            members,
            out,
            name: None,
            ort: None,
        })
        .expect_err("the build must fail");
        format!("{error:#}")
    }

    #[test]
    fn incompatible_members_are_refused_with_the_field_and_both_members() {
        let tmp = TempDir::new("errors");
        let out = tmp.0.join("out");
        let a = MemberSpec::new("a", 8, 1, 1).write(&tmp.0.join("a"));

        let message = build_error(std::slice::from_ref(&a), &out);
        assert!(
            message.contains("at least two --member bundles, got 1"),
            "{message}"
        );

        let other_fmax = MemberSpec {
            front_end: FrontEnd {
                fmax: 7_000.0,
                ..front_end()
            },
            ..MemberSpec::new("b", 8, 2, 1)
        }
        .write(&tmp.0.join("fmax"));
        let message = build_error(&[a.clone(), other_fmax.clone()], &out);
        assert!(
            message.contains("differ in audio.fmax: 8000.0 vs 7000.0")
                && message.contains(&format!(
                    "member 0 ({})",
                    a.canonicalize().unwrap().display()
                ))
                && message.contains(&format!(
                    "member 1 ({})",
                    other_fmax.canonicalize().unwrap().display()
                )),
            "{message}"
        );

        let other_window = MemberSpec {
            windowing: Windowing {
                clip_seconds: 1.0,
                ..windowing()
            },
            ..MemberSpec::new("b", 8, 2, 1)
        }
        .write(&tmp.0.join("window"));
        let message = build_error(&[a.clone(), other_window], &out);
        assert!(
            message.contains("differ in audio.windowing.clip_seconds: 0.5 vs 1.0"),
            "{message}"
        );

        let other_tokenizer = MemberSpec {
            tokenizer: tokenizer_json(&VOCAB[..10]),
            ..MemberSpec::new("b", 8, 2, 1)
        }
        .write(&tmp.0.join("tokenizer"));
        let message = build_error(&[a.clone(), other_tokenizer], &out);
        assert!(
            message.contains("differ in text.tokenizer (sha256 of the file)")
                && message.contains("same tokenizer.json"),
            "{message}"
        );

        let message = build_error(&[a.clone(), a.clone()], &a);
        assert!(message.contains("would overwrite a member"), "{message}");

        // A damaged member file is caught before anything is written.
        let damaged = MemberSpec::new("d", 8, 3, 1).write(&tmp.0.join("damaged"));
        std::fs::write(damaged.join("audio.onnx"), b"truncated").unwrap();
        let message = build_error(&[a, damaged], &out);
        assert!(
            message.contains("audio.onnx is damaged or was replaced"),
            "{message}"
        );
        assert!(!out.join(MANIFEST_FILE).exists());
    }

    fn copy_of(label: &str, model: ModelProto) -> GraphCopy {
        GraphCopy {
            label: label.into(),
            prefix: String::new(),
            model,
            inputs: vec![],
            output: "embedding".into(),
            dim: 1,
            pad: None,
        }
    }

    fn reduce_model(opset: i64, op: &str) -> ModelProto {
        let mut g = GraphBuilder::new("g", opset);
        let x = g.input("x", DataType::Float, &["n".into(), 4i64.into()]);
        let y = if op == "Relu" {
            g.node("Relu", &[&x], vec![])
        } else {
            g.reduce(op, &x, &[1], false)
        };
        g.node_to("Identity", &[&y], vec![], &["embedding"]);
        g.output("embedding", DataType::Float, &["n".into()]);
        g.finish(ModelInfo::default())
    }

    #[test]
    fn opsets_merge_to_the_highest_unless_an_operator_changed_in_between() {
        let (imports, opset) = merged_opsets(
            &[
                copy_of("member 0", reduce_model(17, "Relu")),
                copy_of("member 1", reduce_model(18, "ReduceMean")),
            ],
            "audio.onnx",
        )
        .unwrap();
        assert_eq!(opset, 18);
        assert_eq!(imports.len(), 1);
        let error = merged_opsets(
            &[
                copy_of("member 0", reduce_model(17, "ReduceMean")),
                copy_of("member 1", reduce_model(18, "Relu")),
            ],
            "audio.onnx",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains(
                "member 0's audio.onnx is at opset 17 and uses ReduceMean, whose inputs changed at opset 18"
            ),
            "{error}"
        );
        let error = merged_opsets(
            &[copy_of("member 0", reduce_model(12, "Relu"))],
            "audio.onnx",
        )
        .unwrap_err();
        assert!(error.to_string().contains("opset 12"), "{error}");
    }

    #[test]
    fn files_with_fields_the_merge_would_drop_are_refused() {
        let tmp = TempDir::new("lossless");
        let path = tmp.0.join("audio.onnx");
        let mut bytes = audio_onnx(4, 1, 1).to_bytes();
        std::fs::write(&path, &bytes).unwrap();
        read_onnx(&path, "member 0").unwrap();
        // ModelProto.training_info (field 20), which our protobuf subset skips when decoding.
        bytes.extend_from_slice(&[0xa2, 0x01, 0x00]);
        std::fs::write(&path, &bytes).unwrap();
        let error = read_onnx(&path, "member 0").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("holds ONNX fields this tool does not carry"),
            "{error}"
        );
    }
}
