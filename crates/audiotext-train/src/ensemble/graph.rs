//! The graph surgery of `ensemble`.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use prost::Message;

use audiotext_core::model::manifest::AudioSection;
use audiotext_onnx::proto::{
    tensor_shape_proto::dimension, type_proto, GraphProto, OperatorSetIdProto,
    StringStringEntryProto, ValueInfoProto,
};
use audiotext_onnx::{
    ir_version_for_opset, value_info, AttributeProto, DataType, Dim, ModelProto, NodeProto,
    TensorProto,
};

use super::*;

/// Prefix of every name the ensemble itself adds to a graph.
pub(super) const ENSEMBLE_PREFIX: &str = "ensemble/";
/// Default-domain operators whose inputs or attributes changed incompatibly at an opset
/// (ONNX's Changelog.md, from opset 13 on): a graph using one of them below that opset cannot be
/// declared at that opset or later without converting the node.
pub(super) const SIGNATURE_CHANGES: &[(i64, &[&str])] = &[
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

pub(super) fn default_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| is_default_domain(o.domain.as_deref()))
        .and_then(|o| o.version)
        .unwrap_or(0)
}

pub(super) fn is_default_domain(domain: Option<&str>) -> bool {
    matches!(domain, None | Some("") | Some("ai.onnx"))
}

/// One encoder graph inside a merged graph: a member's, or one copy shared by the members whose
/// files are byte-identical.
pub(super) struct GraphCopy {
    /// The first member using the copy, for messages.
    pub(super) label: String,
    /// Prepended to every name of the graph, e.g. `m0/`.
    pub(super) prefix: String,
    pub(super) model: ModelProto,
    /// Each input the member's manifest names, and the input of the merged graph it reads.
    pub(super) inputs: Vec<(String, String)>,
    /// The member's output (its own name, before prefixing).
    pub(super) output: String,
    pub(super) dim: usize,
    /// Padding of the time axis the member needs beyond the ensemble's (audio only).
    pub(super) pad: Option<TimePadding>,
}

/// `Pad` at the end of the frames axis up to `min_frames`, with the front end's silence, as the
/// extension pads a window for this member alone.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TimePadding {
    pub(super) frames_axis: usize,
    pub(super) rank: usize,
    pub(super) min_frames: usize,
    pub(super) silence: f32,
}

/// Everything `merge` needs for one file.
pub(super) struct MergePlan {
    /// `text.onnx` or `audio.onnx`, for messages.
    pub(super) file: &'static str,
    pub(super) graph_name: String,
    pub(super) copies: Vec<GraphCopy>,
    /// For each member in order, the copy whose output is its part of the concatenation.
    pub(super) member_copy: Vec<usize>,
    pub(super) doc: String,
}

/// Parses a member's ONNX file, refusing one that holds fields our protobuf subset would drop
/// (re-encoding must give back as many bytes as were read).
pub(super) fn read_onnx(path: &Path, label: &str) -> Result<ModelProto> {
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
pub(super) fn group_members(
    members: &[Member],
    key: impl Fn(&Member) -> String,
) -> (Vec<usize>, Vec<usize>) {
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

pub(super) fn text_plan(members: &[Member]) -> Result<MergePlan> {
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

pub(super) fn audio_plan(members: &[Member], ensemble_min_frames: usize) -> Result<MergePlan> {
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
pub(super) fn silence_value(audio: &AudioSection) -> f32 {
    audio.front_end.silence_value()
}

pub(super) fn node(
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
pub(super) fn time_padding_nodes(
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
pub(super) fn tensor_type(v: &ValueInfoProto) -> Option<(i32, Vec<Option<dimension::Value>>)> {
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
pub(super) fn compatible_inputs(a: &ValueInfoProto, b: &ValueInfoProto) -> bool {
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
pub(super) fn rename_graph(graph: &mut GraphProto, rename: &dyn Fn(&str) -> String, prefix: &str) {
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
pub(super) fn default_domain_ops(graph: &GraphProto, ops: &mut HashSet<String>) {
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
pub(super) fn merged_opsets(
    copies: &[GraphCopy],
    file: &str,
) -> Result<(Vec<OperatorSetIdProto>, i64)> {
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
/// concatenated in member order and multiplied by `scale` (see the module docs). Long: the
/// surgery's steps share the renaming tables, and read best in the order they are applied.
pub(super) fn merge(plan: MergePlan, scale: f32) -> Result<ModelProto> {
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
pub(super) fn check_single_definitions(graph: &GraphProto, file: &str) -> Result<()> {
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
