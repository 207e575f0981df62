//! ../src/sql's BLOB parsing (no SQLite).

#[path = "../../../src/sql/blob.rs"]
pub mod blob;
