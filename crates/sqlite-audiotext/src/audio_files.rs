//! `audio_files(dir_or_glob)`: the files `audio_embed_files` and `audio_segment_files` would read
//! for the same argument, one row per file with `path`, in path order. The command line lists a
//! folder through it, so what it indexes is what the extension itself would list.

use std::borrow::Cow;
use std::os::raw::c_int;
use std::sync::Arc;

use rusqlite::types::{Null, Value};
use rusqlite::vtab::{Context, Filters, IndexInfo, Module};
use rusqlite::Connection;

use super::vtab::{set_result, Connecting, Cursor, Declared, Guarded, Table};
use super::{files, Registry};

const NAME: &str = "audio_files";
const COLUMN_PATH: c_int = 0;
/// The hidden argument.
const COLUMN_SOURCE: c_int = 1;
/// The bit of `idx_num` saying the argument was given (args::plan_table_arguments).
const HAS_SOURCE: c_int = 1;

pub fn register_module(db: &Connection, registry: Arc<Registry>) -> rusqlite::Result<()> {
    const MODULE: Module<Guarded<AudioFilesTable>> = Module::eponymous_only_module();
    db.create_module(NAME, &MODULE, Some(registry))
}

struct AudioFilesTable {
    /// The connection: for the schema check (`schema_guard`), as every file reader does, since
    /// a listing tells file names.
    db: *mut rusqlite::ffi::sqlite3,
}

impl Table for AudioFilesTable {
    const NAME: &'static str = NAME;
    type Cursor = AudioFilesCursor;

    fn connect(at: Connecting<'_>) -> Result<Declared<Self>, String> {
        let handle = super::schema_guard::connect_file_reader(at.db)?;
        Ok((
            Cow::Borrowed(c"CREATE TABLE x(path TEXT, source HIDDEN)"),
            AudioFilesTable { db: handle },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<bool, String> {
        super::args::plan_table_arguments(info, COLUMN_SOURCE, 1)
    }

    fn open(&mut self) -> Result<AudioFilesCursor, String> {
        Ok(AudioFilesCursor {
            db: self.db,
            paths: Vec::new(),
            at: 0,
        })
    }
}

struct AudioFilesCursor {
    db: *mut rusqlite::ffi::sqlite3,
    paths: Vec<String>,
    at: usize,
}

impl Cursor for AudioFilesCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> Result<(), String> {
        self.paths.clear();
        self.at = 0;
        if idx_num & HAS_SOURCE == 0 {
            return Err(
                "argument 1 (dir_or_glob) is required: SELECT path FROM audio_files('sounds/')"
                    .into(),
            );
        }
        let value = args.get::<Value>(0).map_err(|e| e.to_string())?;
        let source = super::args::dir_or_glob(&value)?;
        // SAFETY: the cursor runs on the connection's thread while the connection is open.
        let db = unsafe { Connection::from_handle(self.db) }.map_err(|e| e.to_string())?;
        super::schema_guard::refuse_if_schema_calls_file_readers(&db, NAME)?;
        self.paths = files::list(source)?
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        Ok(())
    }

    fn next(&mut self) -> Result<(), String> {
        self.at += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.at >= self.paths.len()
    }

    fn column(&self, ctx: &mut Context, column: c_int) -> Result<(), String> {
        match (column, self.paths.get(self.at)) {
            (COLUMN_PATH, Some(path)) => set_result(ctx, path),
            _ => set_result(ctx, &Null),
        }
    }

    fn rowid(&self) -> Result<i64, String> {
        Ok(self.at as i64 + 1)
    }
}
