//! sqlite-vec, compiled into this library by build.rs as a loadable extension.

use std::os::raw::{c_char, c_int};

use rusqlite::ffi;

extern "C" {
    fn sqlite3_vec_init(
        db: *mut ffi::sqlite3,
        pz_err_msg: *mut *mut c_char,
        p_api: *const ffi::sqlite3_api_routines,
    ) -> c_int;
}

/// Registers `vec0`, `vec_distance_cosine` and the rest of sqlite-vec on `db`.
///
/// # Safety
/// `db` and `p_api` are the ones SQLite passed to our entry point.
pub unsafe fn register(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    unsafe { sqlite3_vec_init(db, pz_err_msg, p_api) }
}

/// The sqlite-vec release compiled in (build.rs takes its source from this crates.io version).
pub const SQLITE_VEC_VERSION: &str = "v0.1.6";
