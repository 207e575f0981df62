//! `audio_embed_files(dir_or_glob [, model])`: one row per file with `path, duration,
//! embedding, error`, in path order.
//!
//! A worker thread decodes files and computes their log-mel windows in parallel (rayon), a
//! chunk at a time, while the cursor runs the encoder on the previous chunk's windows in
//! batches: decoding overlaps inference, and the bounded channel keeps at most three chunks of
//! features in memory whatever the folder's size (one embedded here, one in the channel, one
//! being decoded). A file whose features would exceed `FILE_FEATURES_BYTES` (a minute or two of
//! audio) is not collected: the worker only marks it, and the cursor streams it through the
//! encoder itself (`AudioEncoder::embed_cancellable`), so long files stay bounded too. A file
//! that fails fills `error`; the scan goes on.
//!
//! `sqlite3_interrupt` is checked before every file and every encoder run; it ends the
//! statement with an error, and the worker stops at its next window.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use rayon::prelude::*;
use rusqlite::types::{Null, Value};
use rusqlite::vtab::{Context, Filters, IndexInfo, Module};
use rusqlite::Connection;

use super::interrupt::{InterruptProbe, INTERRUPTED};
use super::vtab::{set_result, Connecting, Cursor, Declared, Guarded, Table};
use super::{files, guard, vector_to_blob, Registry};
use audiotext_core::audio::{AudioSource, DecodeOptions};
use audiotext_core::audio_encoder::{pool, AudioEncoder, FileFeatures};
use audiotext_core::Error;

const NAME: &str = "audio_embed_files";
/// Files decoded together; the encoder sees their windows in one go.
const CHUNK_FILES: usize = 16;
/// Features one file may hold in a chunk (2 MB: 54 windows, about a minute, for the default
/// model); a longer file is streamed by the cursor instead.
const FILE_FEATURES_BYTES: usize = 2 << 20;

const COLUMN_PATH: c_int = 0;
const COLUMN_DURATION: c_int = 1;
const COLUMN_EMBEDDING: c_int = 2;
const COLUMN_ERROR: c_int = 3;
/// The first hidden argument (source, then model).
const COLUMN_SOURCE: c_int = 4;
/// Bits of `idx_num` saying which hidden arguments were given (args::plan_table_arguments).
const HAS_SOURCE: c_int = 1;
const HAS_MODEL: c_int = 2;

pub fn register_module(db: &Connection, registry: Arc<Registry>) -> rusqlite::Result<()> {
    const MODULE: Module<Guarded<EmbedFilesTable>> = Module::eponymous_only_module();
    db.create_module(NAME, &MODULE, Some(registry))
}

struct EmbedFilesTable {
    registry: Arc<Registry>,
    /// The connection: for the schema check (`schema_guard`) and the `sqlite3_interrupt` probe.
    db: *mut rusqlite::ffi::sqlite3,
}

impl Table for EmbedFilesTable {
    const NAME: &'static str = NAME;
    type Cursor = EmbedFilesCursor;

    fn connect(at: Connecting<'_>) -> Result<Declared<Self>, String> {
        let handle = super::schema_guard::connect_file_reader(at.db)?;
        Ok((
            Cow::Borrowed(c"CREATE TABLE x(path TEXT, duration REAL, embedding BLOB, error TEXT, source HIDDEN, model HIDDEN)"),
            EmbedFilesTable { registry: at.registry, db: handle },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<bool, String> {
        // The hidden arguments: source (the folder), then model.
        super::args::plan_table_arguments(info, COLUMN_SOURCE, 2)
    }

    fn open(&mut self) -> Result<EmbedFilesCursor, String> {
        Ok(EmbedFilesCursor {
            registry: self.registry.clone(),
            db: self.db,
            rows: VecDeque::new(),
            current: None,
            rowid: 0,
            work: None,
        })
    }
}

/// One output row.
struct FileRow {
    path: String,
    duration: Option<f64>,
    embedding: Option<Vec<u8>>,
    error: Option<String>,
}

/// A chunk of files with their features (`None`: too long to collect, to be streamed) or
/// errors, in path order.
type Chunk = Vec<(PathBuf, Result<Option<FileFeatures>, String>)>;

/// The worker's side of the scan.
struct Work {
    encoder: Arc<AudioEncoder>,
    /// The connection's decoding settings when the scan started.
    decode: DecodeOptions,
    chunks: Receiver<Chunk>,
    total_files: usize,
    remaining_files: usize,
    /// Tells the worker to stop (set on interrupt and when the cursor closes).
    stop: Arc<AtomicBool>,
    probe: InterruptProbe,
}

/// Whether the statement was interrupted; if so, the worker is told to stop too.
fn interrupted(probe: &InterruptProbe, stop: &AtomicBool) -> bool {
    let interrupted = probe.interrupted();
    if interrupted {
        stop.store(true, Ordering::Relaxed);
    }
    interrupted
}

impl Work {
    fn interrupted_error(&self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        format!(
            "{INTERRUPTED} after {} of {} files; the statement was stopped as usual",
            self.total_files - self.remaining_files,
            self.total_files
        )
    }
}

impl Drop for Work {
    /// A statement finished early, interrupted or failed: the worker stops at its next window.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct EmbedFilesCursor {
    registry: Arc<Registry>,
    db: *mut rusqlite::ffi::sqlite3,
    rows: VecDeque<FileRow>,
    current: Option<FileRow>,
    rowid: i64,
    work: Option<Work>,
}

impl EmbedFilesCursor {
    fn start(&mut self, idx_num: c_int, args: &Filters<'_>) -> Result<(), String> {
        if idx_num & HAS_SOURCE == 0 {
            return Err(
                "argument 1 (dir_or_glob) is required: SELECT * FROM audio_embed_files('sounds/')"
                    .into(),
            );
        }
        let text = |i: usize, role: &str| match args.get::<Value>(i) {
            Ok(Value::Text(t)) => Ok(t),
            Ok(other) => Err(format!(
                "argument {} ({role}) must be TEXT, got {}",
                i + 1,
                super::args::type_name(rusqlite::types::ValueRef::from(&other))
            )),
            Err(e) => Err(e.to_string()),
        };
        let value = args.get::<Value>(0).map_err(|e| e.to_string())?;
        let source = super::args::dir_or_glob(&value)?.to_string();
        // SAFETY: the cursor runs on the connection's thread while the connection is open.
        let db = unsafe { Connection::from_handle(self.db) }.map_err(|e| e.to_string())?;
        super::schema_guard::refuse_if_schema_calls_file_readers(&db, NAME)?;
        let model = if idx_num & HAS_MODEL != 0 {
            text(1, "model")?
        } else {
            "default".to_string()
        };
        let encoder = self
            .registry
            .get(&model)?
            .audio_encoder()
            .map_err(|e| e.to_string())?;
        let paths = files::list(&source)?;
        let total_files = paths.len();
        // SAFETY: this cursor's connection; the probe lives in `self.work`, dropped with the
        // cursor, before the connection closes.
        let probe = unsafe { InterruptProbe::new(self.db) };
        let stop = Arc::new(AtomicBool::new(false));
        let max_windows = (FILE_FEATURES_BYTES / encoder.window_feature_bytes().max(1)).max(1);
        // At most three chunks exist: one being embedded here, one in the channel, one being
        // decoded by the worker.
        let (sender, chunks) = sync_channel::<Chunk>(1);
        let worker_encoder = encoder.clone();
        let decode = self.registry.decode_options();
        let worker_stop = stop.clone();
        std::thread::Builder::new()
            .name("audiotext-decode".into())
            .spawn(move || {
                let stopped = || worker_stop.load(Ordering::Relaxed);
                for chunk in paths.chunks(CHUNK_FILES) {
                    let features: Chunk = chunk
                        .par_iter()
                        .map(|path| {
                            if stopped() {
                                return (path.clone(), Err(INTERRUPTED.to_string()));
                            }
                            let result = guard("decode", || {
                                worker_encoder
                                    .features_at_most(
                                        &AudioSource::Path(path),
                                        decode,
                                        max_windows,
                                        &stopped,
                                    )
                                    .map_err(|e| e.to_string())
                            })
                            .map_err(|e| e.trim_start_matches("decode: ").to_string());
                            (path.clone(), result)
                        })
                        .collect();
                    if stopped() || sender.send(features).is_err() {
                        return; // The statement was finished early or interrupted.
                    }
                }
            })
            .map_err(|e| format!("cannot start the decoding thread: {e}"))?;
        self.work = Some(Work {
            encoder,
            decode,
            chunks,
            total_files,
            remaining_files: total_files,
            stop,
            probe,
        });
        Ok(())
    }

    /// Takes the next chunk from the worker and embeds it.
    fn fill(&mut self) -> Result<(), String> {
        let Some(work) = self.work.as_mut() else {
            return Ok(());
        };
        if work.remaining_files == 0 {
            return Ok(());
        }
        if interrupted(&work.probe, &work.stop) {
            return Err(work.interrupted_error());
        }
        let chunk = work
            .chunks
            .recv()
            .map_err(|_| "internal error: the decoding thread stopped early".to_string())?;
        let files: Vec<&FileFeatures> = chunk
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().and_then(Option::as_ref))
            .collect();
        let (probe, stop) = (&work.probe, &work.stop);
        let cancelled = || interrupted(probe, stop);
        let mut embeddings = match work.encoder.embed_features_cancellable(&files, &cancelled) {
            Ok(embeddings) => embeddings.into_iter(),
            Err(Error::Interrupted { .. }) => return Err(work.interrupted_error()),
            Err(e) => return Err(e.to_string()),
        };
        for (path, result) in chunk {
            let row = match result {
                Ok(Some(features)) => {
                    let per_window: Vec<Vec<f32>> =
                        embeddings.by_ref().take(features.windows.len()).collect();
                    let embedding = pool(&per_window);
                    if embedding.iter().all(|x| x.is_finite()) {
                        FileRow {
                            path: path.display().to_string(),
                            duration: Some(features.duration_seconds),
                            embedding: Some(vector_to_blob(&embedding)),
                            error: None,
                        }
                    } else {
                        FileRow {
                            path: path.display().to_string(),
                            duration: Some(features.duration_seconds),
                            embedding: None,
                            error: Some(super::NON_FINITE_RESULT.into()),
                        }
                    }
                }
                Ok(None) => {
                    // Too long to hold its windows: stream it here, bounded and interruptible.
                    match work.encoder.embed_cancellable(
                        &AudioSource::Path(&path),
                        work.decode,
                        &cancelled,
                    ) {
                        Ok(file) if file.embedding.iter().all(|x| x.is_finite()) => FileRow {
                            path: path.display().to_string(),
                            duration: Some(file.duration_seconds),
                            embedding: Some(vector_to_blob(&file.embedding)),
                            error: None,
                        },
                        Ok(file) => FileRow {
                            path: path.display().to_string(),
                            duration: Some(file.duration_seconds),
                            embedding: None,
                            error: Some(super::NON_FINITE_RESULT.into()),
                        },
                        Err(Error::Interrupted { .. }) => return Err(work.interrupted_error()),
                        // Read once already, so rarely fails now (a file changed meanwhile).
                        Err(e) => FileRow {
                            path: path.display().to_string(),
                            duration: None,
                            embedding: None,
                            error: Some(e.to_string()),
                        },
                    }
                }
                Err(error) => FileRow {
                    path: path.display().to_string(),
                    duration: None,
                    embedding: None,
                    error: Some(error),
                },
            };
            work.remaining_files -= 1;
            self.rows.push_back(row);
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<(), String> {
        if self.rows.is_empty() {
            self.fill()?;
        }
        self.current = self.rows.pop_front();
        self.rowid += 1;
        Ok(())
    }
}

impl Cursor for EmbedFilesCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> Result<(), String> {
        self.rows.clear();
        self.rowid = 0;
        self.start(idx_num, args)?;
        self.advance()
    }

    fn next(&mut self) -> Result<(), String> {
        self.advance()
    }

    fn eof(&self) -> bool {
        self.current.is_none()
    }

    fn column(&self, ctx: &mut Context, column: c_int) -> Result<(), String> {
        let Some(row) = &self.current else {
            return set_result(ctx, &Null);
        };
        match column {
            COLUMN_PATH => set_result(ctx, &row.path),
            COLUMN_DURATION => set_result(ctx, &row.duration),
            COLUMN_EMBEDDING => set_result(ctx, &row.embedding),
            COLUMN_ERROR => set_result(ctx, &row.error),
            _ => set_result(ctx, &Null),
        }
    }

    fn rowid(&self) -> Result<i64, String> {
        Ok(self.rowid)
    }
}
