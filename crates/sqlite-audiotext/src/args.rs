//! Argument parsing shared by the functions: every message names the function's argument by
//! position and role, says what it got, and what to pass instead.

use std::os::raw::c_int;

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{IndexConstraintOp, IndexInfo};

use audiotext_core::index::blob::{vector_from_blob, VectorBlobError};

/// Name of SQLite's storage class of a value, for messages.
pub fn type_name(value: ValueRef<'_>) -> &'static str {
    match value {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// The message for TEXT whose bytes are not UTF-8 (SQLite stores what it is given).
pub fn not_utf8(index: usize, role: &str) -> String {
    format!(
        "argument {} ({role}) is not valid UTF-8: SQLite keeps the bytes it is given (CAST of a BLOB, a C string in another encoding); pass UTF-8 text",
        index + 1
    )
}

/// A TEXT argument; `None` for NULL (the caller returns NULL, as SQL functions do).
pub fn text<'a>(ctx: &'a Context<'_>, index: usize, role: &str) -> Result<Option<&'a str>, String> {
    match ctx.get_raw(index) {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| not_utf8(index, role)),
        other => Err(format!(
            "argument {} ({role}) must be TEXT, got {}",
            index + 1,
            type_name(other)
        )),
    }
}

/// The model name of a function whose optional first argument names a model: with `n_required`
/// arguments the model is `default`, with one more the first argument names it.
pub fn model_name<'a>(ctx: &'a Context<'_>, n_required: usize) -> Result<(&'a str, usize), String> {
    if ctx.len() == n_required {
        return Ok(("default", 0));
    }
    match ctx.get_raw(0) {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .map(|name| (name, 1))
            .map_err(|_| not_utf8(0, "model")),
        other => Err(format!(
            "argument 1 (model) must be TEXT naming a model registered in temp.audiotext_models, got {}",
            type_name(other)
        )),
    }
}

/// A float32 little-endian vector BLOB (sqlite-vec's layout), every value finite.
pub fn vector(bytes: &[u8], index: usize, role: &str) -> Result<Vec<f32>, String> {
    vector_from_blob(bytes).map_err(|e| match e {
        VectorBlobError::Length(len) => format!(
            "argument {} ({role}) is a BLOB of {len} bytes, which is not a float32 vector (a multiple of 4 bytes, as audio_embed and text_embed return)",
            index + 1
        ),
        VectorBlobError::NonFinite { dimension, value } => format!(
            "argument {} ({role}) holds {value} at element {dimension} of {}: a vector must be finite (NaN or infinity cannot be compared); recompute it with audio_embed or text_embed",
            index + 1,
            bytes.len() / 4
        ),
    })
}

/// The `dir_or_glob` argument (argument 1) of the table-valued functions that read a folder
/// (`audio_files`, `audio_embed_files`, `audio_segment_files`): TEXT, not empty.
pub fn dir_or_glob(value: &Value) -> Result<&str, String> {
    match value {
        Value::Text(t) if !t.is_empty() => Ok(t),
        Value::Text(_) => Err(
            "argument 1 (dir_or_glob) is empty: name a folder or a glob \
                               pattern such as 'sounds/**/*.wav'"
                .into(),
        ),
        other => Err(format!(
            "argument 1 (dir_or_glob) must be TEXT (a folder or a glob), got {}",
            type_name(ValueRef::from(other))
        )),
    }
}

/// xBestIndex of a table-valued function whose arguments are the `count` HIDDEN columns from
/// column `first_hidden` on: each argument given (an `=` constraint) goes to xFilter, in column
/// order, and bit i of `idx_num` says argument i was given. A plan without argument 1 (the
/// source) cannot run: it is made to look hopeless, not cheap.
pub fn plan_table_arguments(
    info: &mut IndexInfo,
    first_hidden: c_int,
    count: usize,
) -> Result<bool, String> {
    let mut given: Vec<Option<usize>> = vec![None; count];
    for (i, constraint) in info.constraints().enumerate() {
        let hidden = constraint.column() - first_hidden;
        if constraint.is_usable()
            && constraint.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ
            && (0..count as c_int).contains(&hidden)
        {
            given[hidden as usize] = Some(i);
        }
    }
    let mut idx_num = 0;
    let mut argv = 1;
    for (bit, slot) in given.iter().enumerate() {
        if let Some(i) = slot {
            let mut usage = info.constraint_usage(*i);
            usage.set_argv_index(argv);
            usage.set_omit(true);
            argv += 1;
            idx_num |= 1 << bit;
        }
    }
    info.set_idx_num(idx_num);
    info.set_estimated_cost(if idx_num & 1 != 0 { 1e3 } else { 1e12 });
    Ok(true)
}
