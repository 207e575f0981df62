//! Noticing `sqlite3_interrupt` from inside a long call (`audio_embed` on an hour of audio,
//! `audio_embed_files` over a folder).
//!
//! `sqlite3_is_interrupted` would say it directly, but it came with SQLite 3.41 and Debian's is
//! 3.40.1; the extension calls only what the SQLite that loaded it has. Instead we step a
//! prepared `SELECT 1` on the same connection: SQLite clears the interrupt flag only when no
//! statement is running (`sqlite3_step` with `nVdbeActive == 0`), and ours is, so the nested
//! step sees the flag and returns `SQLITE_INTERRUPT` (its `Goto` checks it). Verified on 3.40.1
//! and on rusqlite's bundled SQLite by the tests (tests/python/sql/test_long_audio.py,
//! tests/host-rusqlite). A step costs about a microsecond.

use std::os::raw::c_int;
use std::ptr;

use rusqlite::ffi;
use rusqlite::functions::Context;

/// What the user sees: the function name is prefixed by `guard`.
pub const INTERRUPTED: &str = "interrupted (sqlite3_interrupt)";

/// A `SELECT 1` prepared on the caller's connection, stepped to ask whether
/// `sqlite3_interrupt` was called.
pub struct InterruptProbe {
    stmt: *mut ffi::sqlite3_stmt,
    /// The statement could not be prepared because the connection was already interrupted.
    interrupted_at_start: bool,
}

impl InterruptProbe {
    /// Prepares the probe on `db`. A probe that cannot be prepared for another reason (out of
    /// memory) never reports an interrupt: the call then runs to its end, as before.
    ///
    /// # Safety
    /// `db` is the open connection that is running the calling statement; the probe is used
    /// only while that call runs, on the thread SQLite called us on (or, for a virtual table,
    /// until the cursor closes).
    pub unsafe fn new(db: *mut ffi::sqlite3) -> InterruptProbe {
        let mut stmt = ptr::null_mut();
        let rc = ffi::sqlite3_prepare_v2(db, c"SELECT 1".as_ptr(), -1, &mut stmt, ptr::null_mut());
        if rc != ffi::SQLITE_OK {
            ffi::sqlite3_finalize(stmt);
            stmt = ptr::null_mut();
        }
        InterruptProbe {
            stmt,
            interrupted_at_start: rc & 0xff == ffi::SQLITE_INTERRUPT,
        }
    }

    /// The probe of the connection that runs a function call (`Context`).
    ///
    /// # Safety
    /// As `new`: used only while the call runs.
    pub unsafe fn for_function(ctx: &Context<'_>) -> InterruptProbe {
        match ctx.get_connection() {
            Ok(conn) => InterruptProbe::new(conn.handle()),
            Err(_) => InterruptProbe {
                stmt: ptr::null_mut(),
                interrupted_at_start: false,
            },
        }
    }

    /// Whether `sqlite3_interrupt` was called on the connection since its statement started.
    pub fn interrupted(&self) -> bool {
        if self.stmt.is_null() {
            return self.interrupted_at_start;
        }
        // SAFETY: `stmt` is a statement prepared in `new` and not finalized yet.
        let rc: c_int = unsafe {
            let rc = ffi::sqlite3_step(self.stmt);
            ffi::sqlite3_reset(self.stmt);
            rc
        };
        rc & 0xff == ffi::SQLITE_INTERRUPT
    }
}

impl Drop for InterruptProbe {
    fn drop(&mut self) {
        // SAFETY: finalizing null is a no-op; otherwise `stmt` is ours.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}
