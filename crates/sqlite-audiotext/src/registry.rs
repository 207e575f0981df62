//! `temp.audiotext_models(name, path)`: the per-connection registry of model bundles.
//!
//! Writable like a table: INSERT registers a bundle folder under a name (an existing name is
//! replaced), DELETE forgets it, SELECT lists them. A bundle named `default` serves the forms of
//! the functions that take no model argument; one shipped next to the extension is registered
//! when the extension loads. Bundles themselves are shared by the whole process (see
//! `audiotext_core::bundle`): registering is cheap, and encoders load on first use.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    Context, Filters, IndexInfo, Inserts, Module, Updates, VTabConfig, VTabKind, Values,
};
use rusqlite::Connection;

use super::args::type_name;
use super::vtab::{
    set_result, Connecting, CreateTable, Cursor, Declared, Guarded, Table, UpdateTable,
};
use audiotext_core::audio::DecodeOptions;
use audiotext_core::model::runtime::extension_dir;
use audiotext_core::Bundle;

/// Name of the virtual table module and of the table the extension creates in `temp`.
const MODULE_NAME: &str = "audiotext_models";
/// Where a bundle named `default` is looked for, relative to the folder of the extension.
const DEFAULT_BUNDLE_DIRS: [&str; 2] = ["models/default", "../models/default"];
/// A bundle folder to register as `default`, looked at before the extension's own folder (the
/// Python package sets it to the bundle it assembled at first use).
pub const DEFAULT_MODEL_ENV_VAR: &str = "AUDIOTEXT_DEFAULT_MODEL";

struct Entry {
    rowid: i64,
    /// The folder as registered, made absolute.
    path: PathBuf,
    bundle: Arc<Bundle>,
}

/// The models one connection knows, by name, and the connection's decoding settings
/// (`audiotext_option`): the one state every function and virtual table of a connection shares.
#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
    decode_options: Mutex<DecodeOptions>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    next_rowid: i64,
    /// Where the default bundle was looked for at load time, for error messages.
    default_search: Vec<PathBuf>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How this connection decodes audio files.
    pub fn decode_options(&self) -> DecodeOptions {
        *self
            .decode_options
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_decode_options(&self, options: DecodeOptions) {
        *self
            .decode_options
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = options;
    }

    /// The bundle registered under `name`, or an error that says how to register one.
    pub fn get(&self, name: &str) -> Result<Arc<Bundle>, String> {
        let state = self.lock();
        if let Some(entry) = state.entries.get(name) {
            return Ok(entry.bundle.clone());
        }
        let mut message = format!(
            "no model named '{name}': register it with INSERT INTO temp.audiotext_models(name, path) VALUES ('{name}', '/path/to/bundle')"
        );
        if name == "default" {
            let looked: Vec<String> = state
                .default_search
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            message.push_str(&format!(
                " (no bundle was found in {}; scripts/build.sh builds one, the Python package assembles one at first use, {DEFAULT_MODEL_ENV_VAR} names one)",
                looked.join(" or ")
            ));
        }
        if !state.entries.is_empty() {
            let names: Vec<&str> = state.entries.keys().map(String::as_str).collect();
            message.push_str(&format!("; registered: {}", names.join(", ")));
        }
        Err(message)
    }

    /// Registered (name, folder, bundle) triples, by name.
    pub fn list(&self) -> Vec<(String, PathBuf, Arc<Bundle>)> {
        self.lock()
            .entries
            .iter()
            .map(|(name, e)| (name.clone(), e.path.clone(), e.bundle.clone()))
            .collect()
    }

    /// Registers (or replaces) `name`; returns the row id.
    fn insert(&self, name: &str, path: &Path) -> Result<i64, String> {
        let bundle = open_bundle(name, path)?;
        Ok(self.insert_bundle(name, bundle))
    }

    fn insert_bundle(&self, name: &str, bundle: Arc<Bundle>) -> i64 {
        let mut state = self.lock();
        state.next_rowid += 1;
        let rowid = state.next_rowid;
        let path = bundle.dir.clone();
        state.entries.insert(
            name.to_string(),
            Entry {
                rowid,
                path,
                bundle,
            },
        );
        rowid
    }

    fn remove_rowid(&self, rowid: i64) -> Option<String> {
        let mut state = self.lock();
        let name = state
            .entries
            .iter()
            .find(|(_, e)| e.rowid == rowid)
            .map(|(n, _)| n.clone())?;
        state.entries.remove(&name);
        Some(name)
    }
}

fn open_bundle(name: &str, path: &Path) -> Result<Arc<Bundle>, String> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    Bundle::open(path).map_err(|e| format!("cannot register '{name}': {e}"))
}

/// Registers the `audiotext_models` module and creates `temp.audiotext_models`, except on a
/// connection with `PRAGMA query_only` on (Datasette's read connections, for one), where even
/// a temp table cannot be made: there the registry still holds `default`, and registering
/// another model, a write, is impossible anyway.
pub fn register_module(db: &Connection, registry: Arc<Registry>) -> rusqlite::Result<()> {
    const MODULE: Module<Guarded<ModelsTable>> = Module::update_module();
    db.create_module(MODULE_NAME, &MODULE, Some(registry))?;
    let query_only: bool = db.query_row("PRAGMA query_only", [], |row| row.get(0))?;
    if query_only {
        return Ok(());
    }
    db.execute_batch(&format!(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.{MODULE_NAME} USING {MODULE_NAME}()"
    ))
}

/// Registers as `default` the bundle that `$AUDIOTEXT_DEFAULT_MODEL` names when it is set, else
/// the one shipped next to the extension, when there is one.
pub fn register_default_bundle(registry: &Registry) {
    // A `default` the user registered (before loading the extension again) stays.
    if registry.lock().entries.contains_key("default") {
        return;
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os(DEFAULT_MODEL_ENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    // Set, it is the only place looked at: a wrong path is reported, not passed over.
    if candidates.is_empty() {
        if let Some(dir) = extension_dir() {
            candidates.extend(DEFAULT_BUNDLE_DIRS.iter().map(|d| dir.join(d)));
        }
    }
    registry.lock().default_search = candidates.clone();
    if let Some(found) = candidates.iter().find(|c| {
        c.join(audiotext_core::model::manifest::MANIFEST_FILE)
            .is_file()
    }) {
        // A broken default bundle is reported when it is used, with the fix; loading goes on.
        if let Err(message) = registry.insert("default", found) {
            registry
                .lock()
                .default_search
                .push(PathBuf::from(format!("({message})")));
        }
    }
}

struct ModelsTable {
    registry: Arc<Registry>,
}

/// Column order of `CREATE TABLE x(name, path)`.
const COLUMN_NAME: c_int = 0;
const COLUMN_PATH: c_int = 1;

impl Table for ModelsTable {
    const NAME: &'static str = MODULE_NAME;
    type Cursor = ModelsCursor;

    fn connect(at: Connecting<'_>) -> Result<Declared<Self>, String> {
        if at.schema != "temp" {
            return Err(format!(
                "the model registry lives in the temp schema, one per connection; use temp.{MODULE_NAME}, which the extension creates"
            ));
        }
        // Registering a model reads files: only top-level SQL may write this table.
        at.db
            .config(VTabConfig::DirectOnly)
            .map_err(|e| e.to_string())?;
        Ok((
            Cow::Borrowed(c"CREATE TABLE x(name TEXT, path TEXT)"),
            ModelsTable {
                registry: at.registry,
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<bool, String> {
        // A handful of rows: a full scan is always right.
        info.set_estimated_cost(10.0);
        Ok(true)
    }

    fn open(&mut self) -> Result<ModelsCursor, String> {
        Ok(ModelsCursor {
            rows: Vec::new(),
            position: 0,
            registry: self.registry.clone(),
        })
    }
}

impl CreateTable for ModelsTable {
    const KIND: VTabKind = VTabKind::Default;
}

/// Reads the (name, path) columns of an INSERT or UPDATE.
fn name_and_path(args: &Values<'_>) -> Result<(String, PathBuf), String> {
    let value = |index: usize| args.get::<Value>(index).map_err(|e| e.to_string());
    let name = match value(2)? {
        Value::Text(name) => name,
        other => {
            return Err(format!(
                "name must be TEXT, got {}",
                type_name(ValueRef::from(&other))
            ))
        }
    };
    let path = match value(3)? {
        Value::Text(path) if path.is_empty() => {
            return Err("path is empty: name the bundle folder (the one with manifest.json)".into())
        }
        Value::Text(path) => PathBuf::from(path),
        other => {
            return Err(format!(
                "path must be TEXT naming a bundle folder (one with manifest.json), got {}",
                type_name(ValueRef::from(&other))
            ))
        }
    };
    Ok((name, path))
}

impl UpdateTable for ModelsTable {
    fn delete(&mut self, rowid: ValueRef<'_>) -> Result<(), String> {
        if let ValueRef::Integer(rowid) = rowid {
            self.registry.remove_rowid(rowid);
        }
        Ok(())
    }

    fn insert(&mut self, args: &Inserts<'_>) -> Result<i64, String> {
        // argv: [old rowid (NULL), new rowid, name, path]
        let (name, path) = name_and_path(args)?;
        self.registry.insert(&name, &path)
    }

    fn update(&mut self, args: &Updates<'_>) -> Result<(), String> {
        // argv: [old rowid, new rowid, name, path]; open the new bundle before forgetting the
        // old row, so a failed UPDATE leaves the registry as it was.
        let (name, path) = name_and_path(args)?;
        let bundle = open_bundle(&name, &path)?;
        if let Ok(old) = args.get::<i64>(0) {
            self.registry.remove_rowid(old);
        }
        self.registry.insert_bundle(&name, bundle);
        Ok(())
    }
}

struct ModelsCursor {
    rows: Vec<(i64, String, String)>,
    position: usize,
    registry: Arc<Registry>,
}

impl Cursor for ModelsCursor {
    fn filter(
        &mut self,
        _idx_num: c_int,
        _idx_str: Option<&str>,
        _args: &Filters<'_>,
    ) -> Result<(), String> {
        // A snapshot: rows inserted while scanning are not seen by this scan.
        let state = self.registry.lock();
        self.rows = state
            .entries
            .iter()
            .map(|(name, e)| (e.rowid, name.clone(), e.path.display().to_string()))
            .collect();
        self.position = 0;
        Ok(())
    }

    fn next(&mut self) -> Result<(), String> {
        self.position += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.position >= self.rows.len()
    }

    fn column(&self, ctx: &mut Context, column: c_int) -> Result<(), String> {
        let (_, name, path) = &self.rows[self.position];
        match column {
            COLUMN_NAME => set_result(ctx, name),
            COLUMN_PATH => set_result(ctx, path),
            _ => set_result(ctx, &rusqlite::types::Null),
        }
    }

    fn rowid(&self) -> Result<i64, String> {
        Ok(self.rows[self.position].0)
    }
}
