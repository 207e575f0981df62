//! sqlite-audiotext: search sound with words inside SQLite. This crate is the loadable extension
//! `audiotext0` (`.load ./audiotext0`): the SQL surface over `audiotext-core`, which does the
//! embedding and the vector search, and sqlite-vec, compiled in from its C source (`build.rs`).
//!
//! Here: the entry point, one registration table of functions ([`FUNCTIONS`]) and one of
//! virtual-table modules (`MODULES`; `registry` is the per-connection model registry), the guard every
//! callback runs in, argument parsing (`args`), and one file per family of functions.
//!
//! Every function body returns `Result<Output, String>`; the guard turns an error or a panic into
//! an SQL error prefixed with the function's name, so nothing unwinds into SQLite. The virtual
//! tables' callbacks run in the same guard, through `vtab`'s wrappers.

mod args;
mod audio;
mod audio_files;
mod embed_files;
mod files;
mod interrupt;
mod meta;
mod registry;
mod schema_guard;
mod segments;
mod text;
mod vec;
mod vector_index;
mod vtab;
mod vtab_in;

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once, Weak};

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::Value;
use rusqlite::Connection;

pub use registry::Registry;

/// sqlite-vec's subtype for float32 vectors: `vec0` and `vec_*` read such a BLOB as float32.
pub const FLOAT32_VECTOR_SUBTYPE: u32 = 223;

/// What a function gives back.
pub enum Output {
    Null,
    Text(String),
    /// A float32 vector, little-endian, tagged with sqlite-vec's subtype.
    Vector(Vec<f32>),
    Real(f64),
}

/// The per-connection state every function sees.
pub struct Env {
    pub registry: Arc<Registry>,
}

type Body = fn(&Env, &Context<'_>) -> Result<Output, String>;

/// One SQL function: a row of the registration table.
pub struct Function {
    pub name: &'static str,
    /// Number of arguments; SQLite picks the row by name and count.
    pub n_arg: i32,
    pub flags: Flags,
    /// Whether the result carries a subtype (sqlite-vec's vector tag); SQLite 3.45+ wants to know.
    pub sets_subtype: bool,
    pub body: Body,
}

/// The flag sets we use, each chosen on purpose.
#[derive(Clone, Copy)]
pub enum Flags {
    /// Same input, same output, no side effects: deterministic and innocuous.
    Pure,
    /// Depends on process state (the runtime, loaded models) but reads no user-named file.
    Volatile,
    /// Depends on the per-connection model registry: neither deterministic nor innocuous.
    UsesRegistry,
    /// Opens a file whose name comes from the arguments: callable only from top-level SQL, not
    /// from triggers or views of a schema that may be untrusted; refuses to run at all while a
    /// schema calls a file reader (`schema_guard`: DIRECTONLY misses CHECK constraints).
    ReadsFiles,
    /// Changes the connection's settings: callable only from top-level SQL, so that a schema
    /// (a view, a trigger) cannot change how the connection's own statements behave.
    Configures,
}

impl Flags {
    fn sqlite(self) -> FunctionFlags {
        let base = FunctionFlags::SQLITE_UTF8;
        match self {
            Flags::Pure => {
                base | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS
            }
            Flags::Volatile | Flags::UsesRegistry => base,
            Flags::ReadsFiles | Flags::Configures => base | FunctionFlags::SQLITE_DIRECTONLY,
        }
    }
}

/// The whole SQL surface besides the `audiotext_models` virtual table and sqlite-vec's own.
#[rustfmt::skip]
pub const FUNCTIONS: &[Function] = &[
    Function { name: "audiotext_version", n_arg: 0, flags: Flags::Pure,         sets_subtype: false, body: meta::version },
    Function { name: "audiotext_debug",   n_arg: 0, flags: Flags::Volatile,     sets_subtype: false, body: meta::debug },
    Function { name: "audiotext_runtime", n_arg: 1, flags: Flags::ReadsFiles,   sets_subtype: false, body: meta::runtime },
    Function { name: "text_embed",        n_arg: 1, flags: Flags::UsesRegistry, sets_subtype: true,  body: text::embed },
    Function { name: "text_embed",        n_arg: 2, flags: Flags::UsesRegistry, sets_subtype: true,  body: text::embed },
    Function { name: "audiotext_fts_query", n_arg: 1, flags: Flags::Pure,       sets_subtype: false, body: text::fts_query },
    Function { name: "audio_embed",       n_arg: 1, flags: Flags::ReadsFiles,   sets_subtype: true,  body: audio::embed },
    Function { name: "audio_embed",       n_arg: 2, flags: Flags::ReadsFiles,   sets_subtype: true,  body: audio::embed },
    Function { name: "audio_text_score",  n_arg: 2, flags: Flags::UsesRegistry, sets_subtype: false, body: audio::text_score },
    Function { name: "audio_text_score",  n_arg: 3, flags: Flags::UsesRegistry, sets_subtype: false, body: audio::text_score },
    Function { name: "audio_info",        n_arg: 1, flags: Flags::ReadsFiles,   sets_subtype: false, body: audio::info },
    Function { name: "audiotext_finite",  n_arg: 1, flags: Flags::Pure,         sets_subtype: true,  body: audio::finite_vector },
    Function { name: "audiotext_option",  n_arg: 1, flags: Flags::UsesRegistry, sets_subtype: false, body: meta::option },
    Function { name: "audiotext_option",  n_arg: 2, flags: Flags::Configures,   sets_subtype: false, body: meta::option },
    #[cfg(feature = "fault-injection")]
    Function { name: "audiotext_fault",   n_arg: 1, flags: Flags::Volatile,     sets_subtype: false, body: meta::fault },
];

type RegisterModule = fn(&Connection, Arc<Registry>) -> rusqlite::Result<()>;

/// The virtual-table modules, each registered by its family's file: `temp.audiotext_models`,
/// `audio_files`, `audio_embed_files`, `audiotext_index`, `audio_segments` and
/// `audio_segment_files`.
const MODULES: &[RegisterModule] = &[
    registry::register_module,
    audio_files::register_module,
    embed_files::register_module,
    vector_index::register_module,
    segments::register_modules,
];

/// Registers everything on one connection: sqlite-vec, the model registry, the functions.
fn init(db: Connection) -> rusqlite::Result<bool> {
    install_panic_hook();
    let registry = connection_registry(&db)?;
    for register in MODULES {
        register(&db, registry.clone())?;
    }
    for function in FUNCTIONS {
        let env = Env {
            registry: registry.clone(),
        };
        let body = function.body;
        let name = function.name;
        let reads_files = matches!(function.flags, Flags::ReadsFiles);
        let mut flags = function.flags.sqlite();
        if function.sets_subtype {
            flags |= FunctionFlags::SQLITE_RESULT_SUBTYPE;
        }
        db.create_scalar_function(name, function.n_arg, flags, move |ctx| {
            call(name, &env, ctx, body, reads_files)
        })
        .map_err(|e| {
            rusqlite::Error::ModuleError(format!(
                "audiotext: registering {name}/{}: {e}",
                function.n_arg
            ))
        })?;
    }
    registry::register_default_bundle(&registry);
    Ok(false)
}

/// The registry of this connection: a new one, or the one an earlier `.load` of the extension
/// on the same connection made (its `temp.audiotext_models` still points to it).
fn connection_registry(db: &Connection) -> rusqlite::Result<Arc<Registry>> {
    static REGISTRIES: Mutex<Vec<(usize, Weak<Registry>)>> = Mutex::new(Vec::new());
    let handle = unsafe { db.handle() } as usize;
    let loaded_before: bool = db.query_row(
        "SELECT count(*) > 0 FROM temp.sqlite_master WHERE name = 'audiotext_models'",
        [],
        |row| row.get(0),
    )?;
    let mut registries = REGISTRIES.lock().unwrap_or_else(|p| p.into_inner());
    registries.retain(|(_, weak)| weak.strong_count() > 0);
    if loaded_before {
        if let Some(registry) = registries
            .iter()
            .find(|(h, _)| *h == handle)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(registry);
        }
    }
    // A handle can be reused by a later connection: a stale entry for it is replaced.
    registries.retain(|(h, _)| *h != handle);
    let registry = Arc::new(Registry::default());
    registries.push((handle, Arc::downgrade(&registry)));
    Ok(registry)
}

/// Runs a function body inside `catch_unwind` and converts its output.
fn call(
    name: &'static str,
    env: &Env,
    ctx: &Context<'_>,
    body: Body,
    reads_files: bool,
) -> rusqlite::Result<(Value, Option<u32>)> {
    let result = guard(name, || {
        if reads_files {
            // SAFETY: the connection is only used on this thread, within this call.
            let db = unsafe { ctx.get_connection() }.map_err(|e| e.to_string())?;
            schema_guard::refuse_if_schema_calls_file_readers(&db, name)?;
        }
        let output = body(env, ctx)?;
        refuse_non_finite(&output)?;
        Ok(output)
    });
    match result {
        Ok(Output::Null) => Ok((Value::Null, None)),
        Ok(Output::Text(text)) => Ok((Value::Text(text), None)),
        Ok(Output::Real(value)) => Ok((Value::Real(value), None)),
        Ok(Output::Vector(vector)) => Ok((
            Value::Blob(vector_to_blob(&vector)),
            Some(FLOAT32_VECTOR_SUBTYPE),
        )),
        Err(message) => Err(rusqlite::Error::UserFunctionError(message.into())),
    }
}

/// No function returns NaN or infinity: a model that produces one is broken, and saying so
/// beats storing a vector that sorts first in every search.
fn refuse_non_finite(output: &Output) -> Result<(), String> {
    let finite = match output {
        Output::Vector(vector) => vector.iter().all(|x| x.is_finite()),
        Output::Real(value) => value.is_finite(),
        Output::Null | Output::Text(_) => true,
    };
    if finite {
        Ok(())
    } else {
        Err(NON_FINITE_RESULT.into())
    }
}

pub(crate) const NON_FINITE_RESULT: &str = "the model produced a non-finite value (NaN or infinity) for this input, so no result is returned; the model bundle is likely broken: re-export it, or report the input";

thread_local! {
    /// Set while a guarded body runs: its panics are reported as SQL errors, not on stderr.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Keeps the host's stderr clean of panics we catch and report, while panics anywhere else in
/// the process still reach the hook that was installed before us.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; an error or a panic becomes `"<name>: <message>"`.
pub(crate) fn guard<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let outer = GUARDED.with(|g| g.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    match outcome {
        Ok(Ok(value)) => Ok(value),
        // SQLite takes messages as C strings: a NUL (from a path, say) would lose the message.
        Ok(Err(message)) => Err(format!("{name}: {}", message.replace('\0', "\\0"))),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!(
                "{name}: internal error ({detail}); the statement was stopped and the connection is still usable; please report this with the query"
            ))
        }
    }
}

pub use audiotext_core::index::blob::vector_to_blob;

/// The extension's entry point. SQLite derives the name from the file name `audiotext0.so`.
///
/// # Safety
/// Called by SQLite with a valid connection and API table.
#[cfg(feature = "loadable")]
#[no_mangle]
pub unsafe extern "C" fn sqlite3_audiotext_init(
    db: *mut rusqlite::ffi::sqlite3,
    pz_err_msg: *mut *mut std::os::raw::c_char,
    p_api: *mut rusqlite::ffi::sqlite3_api_routines,
) -> std::os::raw::c_int {
    let outcome = catch_unwind(|| {
        // sqlite-vec first, with the same API table: it then calls back into the very SQLite
        // that loaded us, never into a libsqlite3 the dynamic linker might find.
        let rc = vec::register(db, pz_err_msg, p_api);
        if rc != rusqlite::ffi::SQLITE_OK {
            return rc;
        }
        Connection::extension_init2(db, pz_err_msg, p_api, init)
    });
    outcome.unwrap_or(rusqlite::ffi::SQLITE_ERROR)
}

/// Registers every function and module of the extension, and sqlite-vec's, on a connection of
/// an app that links this crate with its own SQLite (rusqlite's `bundled`; the crate built
/// without its default `loadable` feature). ONNX Runtime and the models are found as for the
/// loadable extension: `$AUDIOTEXT_ORT_DYLIB` or `SELECT audiotext_runtime(path)`, and
/// `INSERT INTO temp.audiotext_models(name, path)` (the `default` bundle is looked for next to
/// the app's executable).
///
/// ```no_run
/// let conn = rusqlite::Connection::open_in_memory()?;
/// sqlite_audiotext::register(&conn)?;
/// let dims: i64 = conn.query_row("SELECT vec_length(text_embed('a dog barks'))", [], |r| r.get(0))?;
/// # Ok::<(), rusqlite::Error>(())
/// ```
#[cfg(not(feature = "loadable"))]
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    // SAFETY: the handle is the open connection `conn` borrows.
    unsafe { register_handle(conn.handle()) }
}

/// The same registration as [`register`] with the signature `sqlite3_auto_extension` expects,
/// so that every connection the app opens gets the functions:
/// `rusqlite::ffi::sqlite3_auto_extension(Some(sqlite_audiotext::sqlite3_audiotext_auto_init))`.
///
/// # Safety
/// `db` is an open connection of the SQLite this crate is linked with; `pz_err_msg` is null or
/// where SQLite takes an error message (written with `sqlite3_mprintf`).
#[cfg(not(feature = "loadable"))]
#[no_mangle]
pub unsafe extern "C" fn sqlite3_audiotext_auto_init(
    db: *mut rusqlite::ffi::sqlite3,
    pz_err_msg: *mut *mut std::os::raw::c_char,
    _p_api: *const rusqlite::ffi::sqlite3_api_routines,
) -> std::os::raw::c_int {
    match unsafe { register_handle(db) } {
        Ok(()) => rusqlite::ffi::SQLITE_OK,
        Err(e) => {
            if !pz_err_msg.is_null() {
                let text =
                    std::ffi::CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
                // SAFETY: "%s" with a NUL-terminated string; SQLite frees the message.
                unsafe {
                    *pz_err_msg = rusqlite::ffi::sqlite3_mprintf(c"%s".as_ptr(), text.as_ptr())
                };
            }
            rusqlite::ffi::SQLITE_ERROR
        }
    }
}

/// sqlite-vec, then everything of ours, on an open connection; a panic becomes an error.
///
/// # Safety
/// `db` is an open connection of the SQLite this crate is linked with.
#[cfg(not(feature = "loadable"))]
unsafe fn register_handle(db: *mut rusqlite::ffi::sqlite3) -> rusqlite::Result<()> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // Compiled with SQLITE_CORE, sqlite-vec calls this SQLite directly: no API table.
        let mut message: *mut std::os::raw::c_char = std::ptr::null_mut();
        let rc = unsafe { vec::register(db, &mut message, std::ptr::null_mut()) };
        if rc != rusqlite::ffi::SQLITE_OK {
            let detail = match message.is_null() {
                true => format!("code {rc}"),
                false => {
                    // SAFETY: sqlite-vec wrote a NUL-terminated message with sqlite3_mprintf.
                    let text = unsafe { std::ffi::CStr::from_ptr(message) }
                        .to_string_lossy()
                        .into_owned();
                    unsafe { rusqlite::ffi::sqlite3_free(message.cast()) };
                    text
                }
            };
            return Err(rusqlite::Error::ModuleError(format!(
                "audiotext: registering sqlite-vec: {detail}"
            )));
        }
        // SAFETY: a connection that does not own the handle, so dropping it closes nothing.
        let conn = unsafe { Connection::from_handle(db) }?;
        init(conn).map(|_| ())
    }));
    outcome.unwrap_or_else(|_| {
        Err(rusqlite::Error::ModuleError(
            "audiotext: registering the extension panicked; please report this".into(),
        ))
    })
}
