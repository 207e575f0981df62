//! ONNX protobuf subset (written by the exporters).
