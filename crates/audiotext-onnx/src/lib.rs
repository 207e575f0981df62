//! ONNX protobuf subset (written by the exporters).
//!
//! [`proto`] holds hand-written `prost` messages for the part of `onnx.proto` an exporter needs
//! (model, graph, node, attribute, tensor, value info, type, shape, opset import); [`builder`]
//! is a small graph builder on top of it:
//!
//! ```
//! use audiotext_onnx::{AttributeProto, DataType, GraphBuilder, ModelInfo};
//!
//! let mut g = GraphBuilder::new("example", 17);
//! let x = g.input("x", DataType::Float, &["batch".into(), 4i64.into()]);
//! let y = g.linear("fc", &x, &[0.5; 8], Some(&[0.0, 1.0]), 4, 2);
//! g.node_to("Softmax", &[&y], vec![AttributeProto::int("axis", -1)], &["y"]);
//! g.output("y", DataType::Float, &["batch".into(), 2i64.into()]);
//! let bytes = g.finish(ModelInfo::default()).to_bytes();
//! assert!(!bytes.is_empty());
//! ```

pub mod builder;
pub mod proto;

pub use builder::{ir_version_for_opset, value_info, Dim, GraphBuilder, ModelInfo};
pub use proto::{AttributeProto, DataType, ModelProto, NodeProto, TensorProto};
