//! The vector search core of `audiotext_index`, free of SQLite: what a vector BLOB holds
//! (`blob`), what a vector's compact code is (`quantize`), the SIMD kernels that compare codes (`kernels`), and the parallel scan that
//! picks the candidates to rescore exactly (`scan`). The SQL layer (sqlite-audiotext's `vector_index`) stores
//! codes in chunks inside the database and keeps them decoded in memory between queries.

pub mod blob;
pub mod kernels;
pub mod quantize;
pub mod scan;

pub use quantize::Quantizer;
pub use scan::{top_candidates, Candidate, CodeChunk};
