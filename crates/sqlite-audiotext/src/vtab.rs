//! The guard every virtual-table callback runs in, by construction.
//!
//! Our modules implement `Table` and `Cursor` (and `CreateTable`, `UpdateTable`), whose methods
//! return `Result<_, String>`. Only `Guarded<T>` and `GuardedCursor<C>` implement rusqlite's
//! traits, and each of their methods runs the module's inside `super::guard`: an error or a panic
//! anywhere in a module (planning, scanning, reading a column, writing, dropping) becomes an SQL
//! error prefixed with the table's name, and never unwinds into SQLite, whose callers are C.
//! rusqlite's trampolines do not catch panics themselves.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::CStr;
use std::mem::ManuallyDrop;
use std::os::raw::c_int;
use std::sync::Arc;

use rusqlite::types::{ToSql, ValueRef};
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, Context, CreateVTab, Filters, IndexInfo, Inserts,
    UpdateVTab, Updates, VTab, VTabConnection, VTabCursor, VTabKind,
};

use super::{guard, Registry};

/// Where a table is being connected: its schema and name, and the arguments of
/// `CREATE VIRTUAL TABLE ... USING module(args)`.
pub struct Connecting<'a> {
    pub schema: String,
    pub table: String,
    pub args: Vec<String>,
    pub db: &'a mut VTabConnection,
    pub registry: Arc<Registry>,
}

/// What `connect` returns: the `CREATE TABLE` SQLite is to see, and the table.
pub type Declared<T> = (Cow<'static, CStr>, T);

/// A virtual table of ours.
pub trait Table: Sized {
    /// The module's name: the prefix of every message.
    const NAME: &'static str;
    type Cursor: Cursor;

    fn connect(at: Connecting<'_>) -> Result<Declared<Self>, String>;
    /// `Ok(false)`: this plan cannot be used (SQLite tries another).
    fn best_index(&self, info: &mut IndexInfo) -> Result<bool, String>;
    fn open(&mut self) -> Result<Self::Cursor, String>;
}

/// A table that `CREATE VIRTUAL TABLE` makes (not eponymous-only).
pub trait CreateTable: Table {
    const KIND: VTabKind;

    fn create(at: Connecting<'_>) -> Result<Declared<Self>, String> {
        Self::connect(at)
    }
    fn destroy(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A table that takes INSERT, UPDATE and DELETE.
pub trait UpdateTable: CreateTable {
    fn delete(&mut self, rowid: ValueRef<'_>) -> Result<(), String>;
    fn insert(&mut self, args: &Inserts<'_>) -> Result<i64, String>;
    fn update(&mut self, args: &Updates<'_>) -> Result<(), String>;
}

/// A scan of one of our tables.
pub trait Cursor: Sized {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> Result<(), String>;
    fn next(&mut self) -> Result<(), String>;
    fn eof(&self) -> bool;
    fn column(&self, ctx: &mut Context, column: c_int) -> Result<(), String>;
    fn rowid(&self) -> Result<i64, String>;
}

/// Sets a column's value.
pub fn set_result<T: ToSql>(ctx: &mut Context, value: &T) -> Result<(), String> {
    ctx.set_result(value).map_err(|e| e.to_string())
}

/// Test hook (feature `fault-injection`): `audiotext_fault('audiotext_index.best_index')` makes
/// the next call of that callback panic, in any connection; `arm_fault` is what it calls.
#[cfg(feature = "fault-injection")]
mod fault {
    use std::sync::Mutex;

    static ARMED: Mutex<Option<String>> = Mutex::new(None);

    pub fn arm(point: &str) {
        *ARMED.lock().unwrap_or_else(|p| p.into_inner()) = Some(point.to_string());
    }

    pub fn strike(table: &str, method: &str) {
        let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        if armed.as_deref() == Some(&format!("{table}.{method}")) {
            *armed = None;
            drop(armed);
            panic!("fault injected in {table}.{method}");
        }
    }
}
#[cfg(feature = "fault-injection")]
pub use fault::arm as arm_fault;

/// The callbacks a fault can be armed in.
#[cfg(feature = "fault-injection")]
pub const FAULT_POINTS: &[&str] = &[
    "connect",
    "create",
    "best_index",
    "open",
    "filter",
    "next",
    "eof",
    "column",
    "rowid",
    "insert",
    "update",
    "delete",
    "destroy",
    "drop",
];

#[inline]
fn fault_point(_table: &str, _method: &str) {
    #[cfg(feature = "fault-injection")]
    fault::strike(_table, _method);
}

/// Runs one callback of `table`'s: its faults, then `f`, inside the guard.
fn run<R>(
    table: &'static str,
    method: &str,
    f: impl FnOnce() -> Result<R, String>,
) -> rusqlite::Result<R> {
    guard(table, || {
        fault_point(table, method);
        f()
    })
    .map_err(rusqlite::Error::ModuleError)
}

fn connecting<'a>(
    db: &'a mut VTabConnection,
    aux: Option<&Arc<Registry>>,
    schema: &[u8],
    table: &[u8],
    args: &[&[u8]],
) -> Connecting<'a> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Connecting {
        schema: text(schema),
        table: text(table),
        args: args.iter().map(|a| text(a)).collect(),
        db,
        registry: aux.cloned().unwrap_or_default(),
    }
}

/// The table as SQLite holds it: `base` first, as SQLite's C layout wants.
#[repr(C)]
pub struct Guarded<T: Table> {
    base: sqlite3_vtab,
    table: ManuallyDrop<T>,
}

impl<T: Table> Guarded<T> {
    fn new((declaration, table): Declared<T>) -> Declared<Guarded<T>> {
        (
            declaration,
            Guarded {
                base: sqlite3_vtab::default(),
                table: ManuallyDrop::new(table),
            },
        )
    }
}

/// DISCONNECT drops the table: a panic in a module's `Drop` must not unwind into SQLite either.
impl<T: Table> Drop for Guarded<T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used again.
        let table = unsafe { ManuallyDrop::take(&mut self.table) };
        let _ = run(T::NAME, "drop", || {
            drop(table);
            Ok(())
        });
    }
}

unsafe impl<'vtab, T: Table + 'vtab> VTab<'vtab> for Guarded<T> {
    type Aux = Arc<Registry>;
    type Cursor = GuardedCursor<T::Cursor>;

    fn connect(
        db: &mut VTabConnection,
        aux: Option<&Arc<Registry>>,
        _module_name: &[u8],
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
    ) -> rusqlite::Result<Declared<Self>> {
        let at = connecting(db, aux, schema, table, args);
        run(T::NAME, "connect", || T::connect(at)).map(Guarded::new)
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        run(T::NAME, "best_index", || self.table.best_index(info))
    }

    fn open(&'vtab mut self) -> rusqlite::Result<Self::Cursor> {
        let table = &mut self.table;
        let cursor = run(T::NAME, "open", || table.open())?;
        Ok(GuardedCursor {
            base: sqlite3_vtab_cursor::default(),
            cursor: ManuallyDrop::new(cursor),
            table: T::NAME,
            failure: RefCell::new(None),
        })
    }
}

impl<'vtab, T: CreateTable + 'vtab> CreateVTab<'vtab> for Guarded<T> {
    const KIND: VTabKind = T::KIND;

    fn create(
        db: &mut VTabConnection,
        aux: Option<&Arc<Registry>>,
        _module_name: &[u8],
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
    ) -> rusqlite::Result<Declared<Self>> {
        let at = connecting(db, aux, schema, table, args);
        run(T::NAME, "create", || T::create(at)).map(Guarded::new)
    }

    fn destroy(&self) -> rusqlite::Result<()> {
        run(T::NAME, "destroy", || self.table.destroy())
    }
}

impl<'vtab, T: UpdateTable + 'vtab> UpdateVTab<'vtab> for Guarded<T> {
    fn delete(&mut self, rowid: ValueRef<'_>) -> rusqlite::Result<()> {
        let table = &mut self.table;
        run(T::NAME, "delete", || table.delete(rowid))
    }

    fn insert(&mut self, args: &Inserts<'_>) -> rusqlite::Result<i64> {
        let table = &mut self.table;
        run(T::NAME, "insert", || table.insert(args))
    }

    fn update(&mut self, args: &Updates<'_>) -> rusqlite::Result<()> {
        let table = &mut self.table;
        run(T::NAME, "update", || table.update(args))
    }
}

/// A cursor as SQLite holds it: `base` first.
#[repr(C)]
pub struct GuardedCursor<C: Cursor> {
    base: sqlite3_vtab_cursor,
    cursor: ManuallyDrop<C>,
    table: &'static str,
    /// A panic in `eof`, which cannot return an error: reported by the next callback.
    failure: RefCell<Option<String>>,
}

impl<C: Cursor> GuardedCursor<C> {
    /// The error an `eof` left, if any.
    fn failed(&self) -> Result<(), String> {
        match self.failure.borrow_mut().take() {
            Some(message) => Err(message),
            None => Ok(()),
        }
    }
}

/// CLOSE drops the cursor (a scan's worker threads, channels): guarded like the rest.
impl<C: Cursor> Drop for GuardedCursor<C> {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used again.
        let cursor = unsafe { ManuallyDrop::take(&mut self.cursor) };
        let _ = run(self.table, "drop", || {
            drop(cursor);
            Ok(())
        });
    }
}

unsafe impl<C: Cursor> VTabCursor for GuardedCursor<C> {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        self.failure.replace(None);
        let cursor = &mut self.cursor;
        run(self.table, "filter", || {
            cursor.filter(idx_num, idx_str, args)
        })
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        let (cursor, failure) = (&mut self.cursor, &self.failure);
        run(self.table, "next", || {
            if let Some(message) = failure.borrow_mut().take() {
                return Err(message);
            }
            cursor.next()
        })
    }

    fn eof(&self) -> bool {
        // A panic here says "not at the end", so that SQLite asks for the row and the column
        // or next callback reports the error: ending the scan instead would drop rows silently.
        match run(self.table, "eof", || Ok(self.cursor.eof())) {
            Ok(eof) => eof,
            Err(e) => {
                let message = match e {
                    rusqlite::Error::ModuleError(message) => message,
                    other => other.to_string(),
                };
                // `run` prefixed it already; the callback that reports it will prefix again.
                let message = message
                    .strip_prefix(&format!("{}: ", self.table))
                    .map(str::to_string)
                    .unwrap_or(message);
                self.failure.replace(Some(message));
                false
            }
        }
    }

    fn column(&self, ctx: &mut Context, column: c_int) -> rusqlite::Result<()> {
        run(self.table, "column", || {
            self.failed()?;
            self.cursor.column(ctx, column)
        })
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        run(self.table, "rowid", || {
            self.failed()?;
            self.cursor.rowid()
        })
    }
}
