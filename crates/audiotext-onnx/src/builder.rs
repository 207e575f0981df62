//! A small graph builder on top of [`super::proto`]: named inputs and outputs with symbolic
//! dimensions, initializers from slices, nodes with attributes, unique value names, and a few
//! helpers for operators whose signature changed between opsets.

use std::collections::HashSet;

use prost::Message;

use super::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// One dimension of a graph input or output: a fixed size or a symbolic name such as `batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
}

impl From<i64> for Dim {
    fn from(value: i64) -> Self {
        Dim::Fixed(value)
    }
}

impl From<usize> for Dim {
    fn from(value: usize) -> Self {
        Dim::Fixed(value as i64)
    }
}

impl From<&str> for Dim {
    fn from(value: &str) -> Self {
        Dim::Symbolic(value.to_string())
    }
}

impl AttributeProto {
    fn named(name: &str, kind: AttributeType) -> AttributeProto {
        AttributeProto {
            name: Some(name.to_string()),
            r#type: Some(kind as i32),
            ..Default::default()
        }
    }

    /// An `INT` attribute.
    pub fn int(name: &str, value: i64) -> AttributeProto {
        AttributeProto {
            i: Some(value),
            ..Self::named(name, AttributeType::Int)
        }
    }

    /// A `FLOAT` attribute.
    pub fn float(name: &str, value: f32) -> AttributeProto {
        AttributeProto {
            f: Some(value),
            ..Self::named(name, AttributeType::Float)
        }
    }

    /// A `STRING` attribute.
    pub fn string(name: &str, value: &str) -> AttributeProto {
        AttributeProto {
            s: Some(value.as_bytes().to_vec()),
            ..Self::named(name, AttributeType::String)
        }
    }

    /// An `INTS` attribute.
    pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
        AttributeProto {
            ints: values.to_vec(),
            ..Self::named(name, AttributeType::Ints)
        }
    }

    /// A `FLOATS` attribute.
    pub fn floats(name: &str, values: &[f32]) -> AttributeProto {
        AttributeProto {
            floats: values.to_vec(),
            ..Self::named(name, AttributeType::Floats)
        }
    }

    /// A `TENSOR` attribute (e.g. `Constant`'s `value`).
    pub fn tensor(name: &str, value: TensorProto) -> AttributeProto {
        AttributeProto {
            t: Some(value),
            ..Self::named(name, AttributeType::Tensor)
        }
    }
}

impl TensorProto {
    /// A float32 tensor stored little-endian in `raw_data`.
    ///
    /// Panics if `data.len()` is not the product of `dims`.
    pub fn from_f32(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
        check_len(name, dims, data.len());
        let mut raw = Vec::with_capacity(data.len() * 4);
        for value in data {
            raw.extend_from_slice(&value.to_le_bytes());
        }
        TensorProto::raw(name, dims, DataType::Float, raw)
    }

    /// An int64 tensor stored little-endian in `raw_data`.
    ///
    /// Panics if `data.len()` is not the product of `dims`.
    pub fn from_i64(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
        check_len(name, dims, data.len());
        let mut raw = Vec::with_capacity(data.len() * 8);
        for value in data {
            raw.extend_from_slice(&value.to_le_bytes());
        }
        TensorProto::raw(name, dims, DataType::Int64, raw)
    }

    fn raw(name: &str, dims: &[i64], data_type: DataType, raw: Vec<u8>) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: Some(data_type as i32),
            name: Some(name.to_string()),
            raw_data: Some(raw),
            ..Default::default()
        }
    }

    /// Decodes the values of a float32 tensor (from `raw_data` or `float_data`).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if self.data_type != Some(DataType::Float as i32) {
            return None;
        }
        match &self.raw_data {
            Some(raw) => Some(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            None => Some(self.float_data.clone()),
        }
    }

    /// Number of elements the dims describe (1 for a scalar).
    pub fn element_count(&self) -> u64 {
        self.dims.iter().map(|&d| d.max(0) as u64).product()
    }
}

fn check_len(name: &str, dims: &[i64], len: usize) {
    let expected: i64 = dims.iter().product();
    assert!(
        expected >= 0 && expected as usize == len,
        "tensor {name}: dims {dims:?} hold {expected} values but {len} were given"
    );
}

impl ModelProto {
    /// The serialised model, ready to be written as a `.onnx` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Parses a serialised model (the subset this crate models; unknown fields are skipped).
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelProto, prost::DecodeError> {
        ModelProto::decode(bytes)
    }
}

/// The lowest IR version that can carry an opset of the default domain.
pub fn ir_version_for_opset(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => 11,
    }
}

/// Model-level metadata written by [`GraphBuilder::finish`].
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: Option<String>,
    /// `metadata_props` key/value pairs.
    pub metadata: Vec<(String, String)>,
}

/// Builds one graph in the default (`ai.onnx`) domain at a fixed opset.
///
/// Value names are unique: every helper that creates a value takes a name *hint* and returns the
/// name actually used. Graph input and output names are exact; reusing a taken name there is a
/// programming error and panics.
#[derive(Debug)]
pub struct GraphBuilder {
    opset: i64,
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    taken: HashSet<String>,
    node_count: usize,
}

impl GraphBuilder {
    /// An empty graph named `name` that imports the default domain at `opset`.
    pub fn new(name: &str, opset: i64) -> GraphBuilder {
        GraphBuilder {
            opset,
            name: name.to_string(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            taken: HashSet::new(),
            node_count: 0,
        }
    }

    /// The opset of the default domain this graph is built for.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// A value name not used yet: `hint` itself if free, else `hint_1`, `hint_2`, ...
    pub fn unique_name(&mut self, hint: &str) -> String {
        let hint = if hint.is_empty() { "v" } else { hint };
        let mut name = hint.to_string();
        let mut n = 0usize;
        while self.taken.contains(&name) {
            n += 1;
            name = format!("{hint}_{n}");
        }
        self.taken.insert(name.clone());
        name
    }

    fn claim_exact(&mut self, name: &str) {
        assert!(!name.is_empty(), "onnx value names must not be empty");
        assert!(
            self.taken.insert(name.to_string()),
            "onnx value name {name:?} is already used"
        );
    }

    /// Declares a graph input with an exact name.
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> String {
        self.claim_exact(name);
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares `value` (produced by a node, see [`GraphBuilder::node_to`]) as a graph output.
    pub fn output(&mut self, value: &str, elem: DataType, dims: &[Dim]) {
        assert!(
            self.taken.contains(value),
            "graph output {value:?} is not produced by the graph"
        );
        self.outputs.push(value_info(value, elem, dims));
    }

    /// Adds an initializer; returns its (unique) name.
    pub fn initializer(&mut self, mut tensor: TensorProto) -> String {
        let name = self.unique_name(tensor.name.as_deref().unwrap_or("init"));
        tensor.name = Some(name.clone());
        self.initializers.push(tensor);
        name
    }

    /// Adds a float32 initializer from a row-major slice.
    pub fn initializer_f32(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        self.initializer(TensorProto::from_f32(hint, dims, data))
    }

    /// Adds an int64 initializer from a row-major slice.
    pub fn initializer_i64(&mut self, hint: &str, dims: &[i64], data: &[i64]) -> String {
        self.initializer(TensorProto::from_i64(hint, dims, data))
    }

    /// A float32 scalar (0-d) constant.
    pub fn scalar_f32(&mut self, hint: &str, value: f32) -> String {
        self.initializer_f32(hint, &[], &[value])
    }

    /// A 1-d int64 constant (shapes, axes, indices).
    pub fn const_i64(&mut self, hint: &str, values: &[i64]) -> String {
        self.initializer_i64(hint, &[values.len() as i64], values)
    }

    /// Adds a node with one output named after `op`; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let hint = op.to_ascii_lowercase();
        self.node_n(op, inputs, attributes, 1, &hint)
            .pop()
            .expect("one output")
    }

    /// Adds a node with `count` outputs whose names start with `hint`.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        count: usize,
        hint: &str,
    ) -> Vec<String> {
        let outputs: Vec<String> = (0..count).map(|_| self.unique_name(hint)).collect();
        self.push_node(op, inputs, attributes, outputs.clone());
        outputs
    }

    /// Adds a node whose outputs have exact names (e.g. the graph's output).
    pub fn node_to(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        outputs: &[&str],
    ) {
        for output in outputs {
            self.claim_exact(output);
        }
        self.push_node(
            op,
            inputs,
            attributes,
            outputs.iter().map(|s| s.to_string()).collect(),
        );
    }

    fn push_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        outputs: Vec<String>,
    ) {
        for input in inputs {
            assert!(
                input.is_empty() || self.taken.contains(*input),
                "node {op}: input {input:?} is not defined yet"
            );
        }
        self.node_count += 1;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs,
            name: Some(format!("{op}_{}", self.node_count)),
            op_type: Some(op.to_string()),
            attribute: attributes,
            ..Default::default()
        });
    }

    /// `ReduceSum`/`ReduceMean`/`ReduceMax`/`ReduceL2`/... over `axes`, with `axes` passed as an
    /// input or an attribute as the opset requires (an input for `ReduceSum` from opset 13, for
    /// all reductions from opset 18).
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let axes_as_input = self.opset >= 18 || (op == "ReduceSum" && self.opset >= 13);
        let keep = AttributeProto::int("keepdims", keepdims as i64);
        if axes_as_input {
            let axes = self.const_i64("axes", axes);
            self.node(op, &[x, &axes], vec![keep])
        } else {
            self.node(op, &[x], vec![AttributeProto::ints("axes", axes), keep])
        }
    }

    /// `Unsqueeze` (axes are an input from opset 13).
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let axes = self.const_i64("axes", axes);
            self.node("Unsqueeze", &[x, &axes], vec![])
        } else {
            self.node("Unsqueeze", &[x], vec![AttributeProto::ints("axes", axes)])
        }
    }

    /// `Squeeze` (axes are an input from opset 13).
    pub fn squeeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let axes = self.const_i64("axes", axes);
            self.node("Squeeze", &[x, &axes], vec![])
        } else {
            self.node("Squeeze", &[x], vec![AttributeProto::ints("axes", axes)])
        }
    }

    /// `x @ W^T + b` for a PyTorch `nn.Linear` weight of shape `[out, in]` (row-major); the
    /// weight is stored transposed (`[in, out]`) so that `MatMul` needs no `Transpose`.
    pub fn linear(
        &mut self,
        hint: &str,
        x: &str,
        weight_out_in: &[f32],
        bias: Option<&[f32]>,
        in_features: usize,
        out_features: usize,
    ) -> String {
        assert_eq!(
            weight_out_in.len(),
            in_features * out_features,
            "{hint}: weight size"
        );
        let mut transposed = vec![0f32; weight_out_in.len()];
        for o in 0..out_features {
            for i in 0..in_features {
                transposed[i * out_features + o] = weight_out_in[o * in_features + i];
            }
        }
        let w = self.initializer_f32(
            &format!("{hint}.weight"),
            &[in_features as i64, out_features as i64],
            &transposed,
        );
        let y = self.node("MatMul", &[x, &w], vec![]);
        match bias {
            Some(bias) => {
                assert_eq!(bias.len(), out_features, "{hint}: bias size");
                let b = self.initializer_f32(&format!("{hint}.bias"), &[out_features as i64], bias);
                self.node("Add", &[&y, &b], vec![])
            }
            None => y,
        }
    }

    /// `LayerNormalization` over the last axis (opset 17+).
    pub fn layer_norm(
        &mut self,
        hint: &str,
        x: &str,
        gamma: &[f32],
        beta: &[f32],
        epsilon: f32,
    ) -> String {
        assert!(
            self.opset >= 17,
            "LayerNormalization needs opset 17 or later"
        );
        assert_eq!(
            gamma.len(),
            beta.len(),
            "{hint}: LayerNorm weight and bias sizes differ"
        );
        let n = gamma.len() as i64;
        let g = self.initializer_f32(&format!("{hint}.weight"), &[n], gamma);
        let b = self.initializer_f32(&format!("{hint}.bias"), &[n], beta);
        self.node(
            "LayerNormalization",
            &[x, &g, &b],
            vec![
                AttributeProto::int("axis", -1),
                AttributeProto::float("epsilon", epsilon),
            ],
        )
    }

    /// Number of float32 values held by the initializers so far.
    pub fn float_initializer_elements(&self) -> u64 {
        self.initializers
            .iter()
            .filter(|t| t.data_type == Some(DataType::Float as i32))
            .map(|t| t.element_count())
            .sum()
    }

    /// Number of nodes so far.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The finished model.
    pub fn finish(self, info: ModelInfo) -> ModelProto {
        assert!(
            !self.outputs.is_empty(),
            "graph {} declares no output",
            self.name
        );
        ModelProto {
            ir_version: Some(ir_version_for_opset(self.opset)),
            producer_name: Some(info.producer_name),
            producer_version: Some(info.producer_version),
            domain: None,
            model_version: None,
            doc_string: info.doc_string,
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(self.name),
                initializer: self.initializers,
                doc_string: None,
                input: self.inputs,
                output: self.outputs,
                value_info: Vec::new(),
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            metadata_props: info
                .metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: Some(key),
                    value: Some(value),
                })
                .collect(),
        }
    }
}

/// A `ValueInfoProto` for a tensor of `elem` with the given dims.
pub fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Symbolic(s) => dimension::Value::DimParam(s.clone()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model(opset: i64) -> ModelProto {
        let mut g = GraphBuilder::new("tiny", opset);
        let x = g.input("x", DataType::Float, &["batch".into(), 3i64.into()]);
        let w = g.initializer_f32("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let y = g.node("MatMul", &[&x, &w], vec![]);
        let s = g.reduce("ReduceSum", &y, &[1], false);
        g.node_to("Identity", &[&s], vec![], &["out"]);
        g.output("out", DataType::Float, &["batch".into()]);
        g.finish(ModelInfo {
            producer_name: "test".into(),
            producer_version: "0".into(),
            doc_string: None,
            metadata: vec![("k".into(), "v".into())],
        })
    }

    #[test]
    fn model_round_trips_through_prost() {
        let model = tiny_model(17);
        let bytes = model.to_bytes();
        let decoded = ModelProto::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, model);
        assert_eq!(decoded.ir_version, Some(8));
        assert_eq!(decoded.opset_import[0].version, Some(17));
        let graph = decoded.graph.unwrap();
        assert_eq!(graph.input[0].name.as_deref(), Some("x"));
        assert_eq!(graph.output[0].name.as_deref(), Some("out"));
        assert_eq!(
            graph.initializer[0].to_f32().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let ops: Vec<_> = graph
            .node
            .iter()
            .map(|n| n.op_type.clone().unwrap())
            .collect();
        assert_eq!(ops, ["MatMul", "ReduceSum", "Identity"]);
        // ReduceSum takes its axes as a second input from opset 13.
        assert_eq!(graph.node[1].input.len(), 2);
        match &graph.input[0].r#type.as_ref().unwrap().value {
            Some(type_proto::Value::TensorType(t)) => {
                assert_eq!(t.elem_type, Some(DataType::Float as i32));
                let dims = &t.shape.as_ref().unwrap().dim;
                assert_eq!(
                    dims[0].value,
                    Some(dimension::Value::DimParam("batch".into()))
                );
                assert_eq!(dims[1].value, Some(dimension::Value::DimValue(3)));
            }
            other => panic!("unexpected type {other:?}"),
        }
    }

    #[test]
    fn wire_format_matches_onnx_proto() {
        // OperatorSetIdProto { domain = "" (1), version = 17 (2) }.
        let opset = OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        };
        assert_eq!(opset.encode_to_vec(), [0x0a, 0x00, 0x10, 17]);
        // proto2 optional: an INT attribute equal to 0 is still written, type is field 20.
        let attr = AttributeProto::int("a", 0);
        assert_eq!(
            attr.encode_to_vec(),
            [0x0a, 0x01, b'a', 0x18, 0x00, 0xa0, 0x01, 0x02]
        );
        // TensorProto.dims (1) is not packed; data_type is field 2, name 8, raw_data 9.
        let t = TensorProto::from_i64("t", &[2], &[1, 2]);
        let mut expected = vec![0x08, 0x02, 0x10, 0x07, 0x42, 0x01, b't', 0x4a, 16];
        expected.extend_from_slice(&1i64.to_le_bytes());
        expected.extend_from_slice(&2i64.to_le_bytes());
        assert_eq!(t.encode_to_vec(), expected);
        // AttributeProto.ints (8) is not packed either.
        let ints = AttributeProto::ints("p", &[0, 2]);
        assert_eq!(
            ints.encode_to_vec(),
            [0x0a, 0x01, b'p', 0x40, 0x00, 0x40, 0x02, 0xa0, 0x01, 0x07]
        );
        // TensorShapeProto.Dimension: dim_value 1, dim_param 2.
        let v = value_info(
            "x",
            DataType::Int64,
            &[Dim::Symbolic("b".into()), Dim::Fixed(4)],
        );
        let bytes = v.encode_to_vec();
        let decoded = ValueInfoProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, v);
        assert!(bytes.windows(3).any(|w| w == [0x12, 0x01, b'b']));
        assert!(bytes.windows(2).any(|w| w == [0x08, 0x04]));
    }

    #[test]
    fn names_are_unique_and_opset_picks_axes_form() {
        let mut g = GraphBuilder::new("g", 17);
        assert_eq!(g.unique_name("a"), "a");
        assert_eq!(g.unique_name("a"), "a_1");
        assert_eq!(g.unique_name("a"), "a_2");
        let x = g.input("x", DataType::Float, &["n".into(), 4i64.into()]);
        let m = g.reduce("ReduceMean", &x, &[1], true);
        let model = {
            g.node_to("Identity", &[&m], vec![], &["y"]);
            g.output("y", DataType::Float, &["n".into(), 1i64.into()]);
            g.finish(ModelInfo::default())
        };
        let node = &model.graph.as_ref().unwrap().node[0];
        assert_eq!(
            node.input.len(),
            1,
            "opset 17 ReduceMean takes axes as an attribute"
        );
        assert!(node
            .attribute
            .iter()
            .any(|a| a.name.as_deref() == Some("axes") && a.ints == [1]));

        let mut g = GraphBuilder::new("g", 18);
        let x = g.input("x", DataType::Float, &["n".into(), 4i64.into()]);
        let m = g.reduce("ReduceMean", &x, &[1], true);
        g.node_to("Identity", &[&m], vec![], &["y"]);
        g.output("y", DataType::Float, &["n".into(), 1i64.into()]);
        let model = g.finish(ModelInfo::default());
        assert_eq!(model.graph.as_ref().unwrap().node[0].input.len(), 2);
        assert_eq!(model.ir_version, Some(8));
    }

    #[test]
    fn linear_stores_the_weight_transposed() {
        let mut g = GraphBuilder::new("g", 17);
        let x = g.input("x", DataType::Float, &["n".into(), 3i64.into()]);
        // PyTorch layout [out = 2, in = 3].
        let y = g.linear(
            "fc",
            &x,
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            Some(&[0.5, -0.5]),
            3,
            2,
        );
        g.node_to("Identity", &[&y], vec![], &["y"]);
        g.output("y", DataType::Float, &["n".into(), 2i64.into()]);
        assert_eq!(g.float_initializer_elements(), 8);
        let model = g.finish(ModelInfo::default());
        let w = &model.graph.as_ref().unwrap().initializer[0];
        assert_eq!(w.dims, [3, 2]);
        assert_eq!(w.to_f32().unwrap(), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    #[should_panic(expected = "already used")]
    fn exact_names_cannot_be_reused() {
        let mut g = GraphBuilder::new("g", 17);
        g.input("x", DataType::Float, &[]);
        g.input("x", DataType::Float, &[]);
    }
}
