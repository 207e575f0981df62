//! `rowid IN (...)` handed to a virtual table whole (SQLite 3.38's `sqlite3_vtab_in`), which
//! rusqlite offers only with bindings newer than the SQLite we must load into.
//!
//! The C side (`vtab_in.c`) calls SQLite through the API table it was loaded with. rusqlite's
//! `IndexInfo` and `Filters` keep their raw pointers private, so they are read here from the
//! wrappers' one field, and each read is checked against what the wrapper itself reports
//! before it is used; a mismatch (another rusqlite layout) means "not available", never a guess.

use std::os::raw::c_int;

use rusqlite::ffi;
use rusqlite::types::Value;
use rusqlite::vtab::{Filters, IndexInfo};

extern "C" {
    fn audiotext_vtab_in(
        info: *mut ffi::sqlite3_index_info,
        constraint: c_int,
        handle: c_int,
    ) -> c_int;
    fn audiotext_vtab_in_first(
        list: *mut ffi::sqlite3_value,
        value: *mut *mut ffi::sqlite3_value,
    ) -> c_int;
    fn audiotext_vtab_in_next(
        list: *mut ffi::sqlite3_value,
        value: *mut *mut ffi::sqlite3_value,
    ) -> c_int;
}

const _: () = assert!(
    std::mem::size_of::<IndexInfo>() == std::mem::size_of::<*mut ffi::sqlite3_index_info>()
);
const _: () = assert!(
    std::mem::size_of::<Filters<'static>>()
        == std::mem::size_of::<&'static [*mut ffi::sqlite3_value]>()
);

/// Whether the running SQLite hands IN lists over whole (3.38 and newer).
pub fn available() -> bool {
    // SAFETY: a plain call through the API table the extension was loaded with.
    unsafe { ffi::sqlite3_libversion_number() >= 3_038_000 }
}

/// The `sqlite3_index_info` behind `info`, if its fields agree with what `info` reports.
fn raw_info(info: &IndexInfo) -> Option<*mut ffi::sqlite3_index_info> {
    // SAFETY: `IndexInfo` is a one-field tuple struct around this pointer (sizes checked above);
    // the pointer is only dereferenced after the checks below agree with the safe accessors.
    let raw = unsafe { *(info as *const IndexInfo).cast::<*mut ffi::sqlite3_index_info>() };
    if raw.is_null() {
        return None;
    }
    // SAFETY: non-null; a wrong guess is caught by the comparisons before any use.
    let fields = unsafe { &*raw };
    let agrees = fields.nConstraint as usize == info.constraints().count()
        && fields.nOrderBy as usize == info.num_of_order_by()
        && fields.colUsed == info.col_used();
    agrees.then_some(raw)
}

/// Whether constraint `i` is an `IN (...)` that xFilter can receive whole; if `take` is set,
/// asks SQLite to hand it over that way (the argument then reads with `in_values`).
pub fn is_in_list(info: &mut IndexInfo, i: usize, take: bool) -> bool {
    let Some(raw) = raw_info(info) else {
        return false;
    };
    // SAFETY: a checked index_info of the running xBestIndex call, and a constraint index
    // within nConstraint (enumerated from it by the caller).
    unsafe {
        audiotext_vtab_in(raw, i as c_int, -1) != 0
            && (!take || audiotext_vtab_in(raw, i as c_int, 1) != 0)
    }
}

/// The values of argument `argv` of xFilter, an `IN (...)` list `is_in_list` took.
pub fn in_values(args: &Filters<'_>, argv: usize) -> Result<Vec<Value>, String> {
    // SAFETY: `Filters` wraps one slice reference of the call's argv (sizes checked above); the
    // slice is used only if its length agrees with the wrapper's.
    let raw: &[*mut ffi::sqlite3_value] =
        unsafe { *(args as *const Filters<'_>).cast::<&[*mut ffi::sqlite3_value]>() };
    let list =
        match raw.get(argv) {
            Some(&list) if raw.len() == args.len() && !list.is_null() => list,
            _ => return Err(
                "the IN list could not be read (an unexpected rusqlite layout); please report this"
                    .into(),
            ),
        };
    let mut values = Vec::new();
    let mut value: *mut ffi::sqlite3_value = std::ptr::null_mut();
    // SAFETY: `list` is xFilter's argument for a constraint taken whole; SQLite checks that it
    // is an IN list and returns an error code otherwise.
    let mut rc = unsafe { audiotext_vtab_in_first(list, &mut value) };
    while rc == ffi::SQLITE_OK && !value.is_null() {
        // SAFETY: SQLite's value, valid until the next call on the list; copied out now.
        values.push(unsafe { owned(value) });
        rc = unsafe { audiotext_vtab_in_next(list, &mut value) };
    }
    if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_DONE {
        Ok(values)
    } else {
        Err(format!("reading the IN list failed (SQLite error {rc})"))
    }
}

/// A copy of an `sqlite3_value`.
///
/// # Safety
/// `value` is a valid protected or unprotected value of the running call.
unsafe fn owned(value: *mut ffi::sqlite3_value) -> Value {
    unsafe {
        match ffi::sqlite3_value_type(value) {
            ffi::SQLITE_INTEGER => Value::Integer(ffi::sqlite3_value_int64(value)),
            ffi::SQLITE_FLOAT => Value::Real(ffi::sqlite3_value_double(value)),
            ffi::SQLITE_TEXT => {
                let text = ffi::sqlite3_value_text(value);
                let len = ffi::sqlite3_value_bytes(value) as usize;
                let bytes = if text.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(text, len)
                };
                Value::Text(String::from_utf8_lossy(bytes).into_owned())
            }
            ffi::SQLITE_BLOB => {
                let blob = ffi::sqlite3_value_blob(value).cast::<u8>();
                let len = ffi::sqlite3_value_bytes(value) as usize;
                let bytes = if blob.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(blob, len)
                };
                Value::Blob(bytes.to_vec())
            }
            _ => Value::Null,
        }
    }
}
