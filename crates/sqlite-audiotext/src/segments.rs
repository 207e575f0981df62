//! Moments inside recordings: one row per analysis window of the model, with its time span.
//!
//! - `audio_segments(path_or_blob [, model [, hop_seconds]])`: `start, end, embedding`;
//! - `audio_segment_files(dir_or_glob [, model [, hop_seconds]])`: `path, start, end,
//!   embedding, error`, files in path order, each file's windows in time order; a file that
//!   cannot be read gets one row with `error` set.
//!
//! The window is the model's (`windowing.clip_seconds` of its manifest); the hop is the model's
//! unless `hop_seconds` (0.05 s up to the window's length) says otherwise. Each embedding is
//! L2-normalised, as `audio_embed` returns them, so `audio_text_score` and any vector index take
//! it as is. A worker thread decodes and embeds while the cursor hands rows out through a
//! bounded channel: an hour of audio costs no more memory than a minute, and a statement
//! finished early (LIMIT) or interrupted stops the worker at its next window.

use std::borrow::Cow;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use rusqlite::types::{Null, Value, ValueRef};
use rusqlite::vtab::{Context, Filters, IndexInfo, Module};
use rusqlite::Connection;

use super::interrupt::{InterruptProbe, INTERRUPTED};
use super::vtab::{set_result, Connecting, Cursor, Declared, Guarded, Table};
use super::{files, guard, vector_to_blob, Registry};
use audiotext_core::audio::{AudioSource, DecodeOptions};
use audiotext_core::audio_encoder::{pool, AudioEncoder};
use audiotext_core::Error;

const SEGMENTS: &str = "audio_segments";
const SEGMENT_FILES: &str = "audio_segment_files";
/// Rows the worker may be ahead of the cursor.
const CHANNEL_ROWS: usize = 64;
/// Files segmented at once by `audio_segment_files`, at most (no more than the machine's cores).
const MAX_PARALLEL_FILES: usize = 4;
/// The shortest hop a query may ask for: 20 windows a second.
const MIN_HOP_SECONDS: f32 = 0.05;

pub fn register_modules(db: &Connection, registry: Arc<Registry>) -> rusqlite::Result<()> {
    const SEGMENTS_MODULE: Module<Guarded<SegmentsTable>> = Module::eponymous_only_module();
    db.create_module(SEGMENTS, &SEGMENTS_MODULE, Some(registry.clone()))?;
    const FILES_MODULE: Module<Guarded<SegmentFilesTable>> = Module::eponymous_only_module();
    db.create_module(SEGMENT_FILES, &FILES_MODULE, Some(registry))
}

/// One output row.
struct Segment {
    path: Option<String>,
    start: Option<f64>,
    end: Option<f64>,
    embedding: Option<Vec<u8>>,
    error: Option<String>,
}

/// What the worker sends: a row, or an error that ends the statement.
type Message = Result<Segment, String>;

/// The hidden arguments both tables take after their columns: source, model, hop.
const HIDDEN: usize = 3;

/// The parsed hidden arguments.
struct Call {
    source: Value,
    model: String,
    hop_seconds: Option<f32>,
}

fn parse_call(
    name: &str,
    idx_num: c_int,
    args: &Filters<'_>,
    source_role: &str,
) -> Result<Call, String> {
    let mut values = args.iter();
    if idx_num & 1 == 0 {
        return Err(format!(
            "argument 1 ({source_role}) is required: SELECT * FROM {name}('recording.wav')"
        ));
    }
    let source = match values.next().unwrap_or(ValueRef::Null) {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|_| super::args::not_utf8(0, source_role))?
                .to_string(),
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    };
    let model = if idx_num & 2 != 0 {
        match values.next() {
            Some(ValueRef::Text(t)) => std::str::from_utf8(t)
                .map_err(|_| super::args::not_utf8(1, "model"))?
                .to_string(),
            Some(other) => {
                return Err(format!(
                    "argument 2 (model) must be TEXT naming a registered model, got {}",
                    super::args::type_name(other)
                ))
            }
            None => "default".into(),
        }
    } else {
        "default".into()
    };
    let hop_seconds = if idx_num & 4 != 0 {
        let hop = match values.next() {
            Some(ValueRef::Real(x)) => x,
            Some(ValueRef::Integer(x)) => x as f64,
            Some(ValueRef::Null) | None => f64::NAN,
            Some(other) => {
                return Err(format!(
                    "argument 3 (hop_seconds) must be a number of seconds, got {}",
                    super::args::type_name(other)
                ))
            }
        };
        Some(hop as f32)
    } else {
        None
    };
    Ok(Call {
        source,
        model,
        hop_seconds,
    })
}

/// Holds a hop to what the model accepts: from `MIN_HOP_SECONDS` to its window's length.
fn check_hop(hop: Option<f32>, encoder: &AudioEncoder) -> Result<(), String> {
    let Some(hop) = hop else { return Ok(()) };
    let window = encoder.window_seconds();
    if !(hop.is_finite() && (MIN_HOP_SECONDS..=window).contains(&hop)) {
        return Err(format!(
            "argument 3 (hop_seconds) is {hop}: it must be from {MIN_HOP_SECONDS} s to the model's window of {window:.3} s (the windows would otherwise leave gaps); omit it for the model's own hop of {:.3} s",
            encoder.hop_seconds()
        ));
    }
    Ok(())
}

/// How the worker reads each source: the hop between windows, and the connection's decoding
/// settings (`audiotext_option`).
#[derive(Clone, Copy)]
struct Reading {
    hop_seconds: Option<f32>,
    decode: DecodeOptions,
}

/// Hands the windows of one source, L2-normalised, as rows to `emit`, which returns false when
/// nobody wants more (the cursor is gone): the worker then stops.
fn segment(
    encoder: &AudioEncoder,
    source: &AudioSource<'_>,
    path: Option<&str>,
    reading: Reading,
    stop: &AtomicBool,
    emit: &mut dyn FnMut(Segment) -> bool,
) -> Result<(), Error> {
    let stopped = || stop.load(Ordering::Relaxed);
    encoder.for_each_window(
        source,
        reading.decode,
        reading.hop_seconds,
        &stopped,
        &mut |window| {
            let embedding = pool(std::slice::from_ref(&window.embedding));
            if !embedding.iter().all(|x| x.is_finite()) {
                return Err(Error::Other(super::NON_FINITE_RESULT.into()));
            }
            let row = Segment {
                path: path.map(str::to_string),
                start: Some(window.start),
                end: Some(window.end),
                embedding: Some(vector_to_blob(&embedding)),
                error: None,
            };
            if !emit(row) {
                stop.store(true, Ordering::Relaxed);
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// The cursor's side: rows from the worker, and the interrupt check.
struct Stream {
    rows: Receiver<Message>,
    stop: Arc<AtomicBool>,
    probe: InterruptProbe,
}

impl Drop for Stream {
    /// A statement finished early, interrupted or failed: the worker stops at its next window.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct SegmentsCursor {
    registry: Arc<Registry>,
    db: *mut rusqlite::ffi::sqlite3,
    /// Which table: `SEGMENTS` or `SEGMENT_FILES`.
    name: &'static str,
    stream: Option<Stream>,
    current: Option<Segment>,
    rowid: i64,
}

impl SegmentsCursor {
    fn start(&mut self, idx_num: c_int, args: &Filters<'_>) -> Result<(), String> {
        let files_table = self.name == SEGMENT_FILES;
        let call = parse_call(
            self.name,
            idx_num,
            args,
            if files_table {
                "dir_or_glob"
            } else {
                "path_or_blob"
            },
        )?;
        // SAFETY: the cursor runs on the connection's thread while the connection is open.
        let db = unsafe { Connection::from_handle(self.db) }.map_err(|e| e.to_string())?;
        super::schema_guard::refuse_if_schema_calls_file_readers(&db, self.name)?;
        let encoder = self
            .registry
            .get(&call.model)?
            .audio_encoder()
            .map_err(|e| e.to_string())?;
        check_hop(call.hop_seconds, &encoder)?;
        // What the worker reads, owned: the arguments live only during this call.
        enum Owned {
            Path(PathBuf),
            Bytes(Vec<u8>),
            Files(Vec<PathBuf>),
        }
        let owned = match (&call.source, files_table) {
            (Value::Null, _) => {
                self.current = None;
                return Ok(());
            }
            (value, true) => Owned::Files(files::list(super::args::dir_or_glob(value)?)?),
            (Value::Text(t), false) if t.is_empty() => return Err("argument 1 (path) is empty: pass the path of an audio file, or its bytes as a BLOB".into()),
            (Value::Text(t), false) if t.contains('\0') => return Err("argument 1 (path) contains a NUL character, which no file name can hold: check how the path was built".into()),
            (Value::Text(t), false) => Owned::Path(PathBuf::from(t)),
            (Value::Blob(b), false) => Owned::Bytes(b.clone()),
            (other, false) => {
                return Err(format!(
                    "argument 1 (audio) must be TEXT (a file path) or BLOB (the file's bytes), got {}",
                    super::args::type_name(ValueRef::from(other))
                ))
            }
        };
        let (sender, rows) = sync_channel::<Message>(CHANNEL_ROWS);
        let stop = Arc::new(AtomicBool::new(false));
        let worker_stop = stop.clone();
        let reading = Reading {
            hop_seconds: call.hop_seconds,
            decode: self.registry.decode_options(),
        };
        std::thread::Builder::new()
            .name("audiotext-segments".into())
            .spawn(move || {
                let stop = worker_stop;
                match owned {
                    Owned::Path(path) => {
                        single(&encoder, &AudioSource::Path(&path), reading, &stop, &sender)
                    }
                    Owned::Bytes(bytes) => single(
                        &encoder,
                        &AudioSource::Bytes(&bytes),
                        reading,
                        &stop,
                        &sender,
                    ),
                    Owned::Files(paths) => folder(&encoder, &paths, reading, &stop, &sender),
                }
            })
            .map_err(|e| format!("cannot start the segmenting thread: {e}"))?;
        // SAFETY: this cursor's connection; the probe is dropped with the cursor.
        let probe = unsafe { InterruptProbe::new(self.db) };
        self.stream = Some(Stream { rows, stop, probe });
        Ok(())
    }

    fn advance(&mut self) -> Result<(), String> {
        self.current = None;
        let Some(stream) = self.stream.as_ref() else {
            return Ok(());
        };
        if stream.probe.interrupted() {
            stream.stop.store(true, Ordering::Relaxed);
            return Err(format!("{INTERRUPTED}; the statement was stopped as usual"));
        }
        match stream.rows.recv() {
            Ok(Ok(row)) => {
                self.current = Some(row);
                self.rowid += 1;
                Ok(())
            }
            Ok(Err(message)) => Err(message),
            // The worker is done.
            Err(_) => {
                self.stream = None;
                Ok(())
            }
        }
    }
}

/// `audio_segments`: one source; an error ends the statement.
fn single(
    encoder: &AudioEncoder,
    source: &AudioSource<'_>,
    reading: Reading,
    stop: &AtomicBool,
    sender: &SyncSender<Message>,
) {
    let outcome = guard("segments", || {
        segment(encoder, source, None, reading, stop, &mut |row| {
            sender.send(Ok(row)).is_ok()
        })
        .map_err(|e| e.to_string())
    });
    if let Err(message) = outcome {
        if !stop.load(Ordering::Relaxed) {
            let _ = sender.send(Err(message.trim_start_matches("segments: ").to_string()));
        }
    }
}

/// `audio_segment_files`: files in path order, a few segmented at once; a file that fails gets
/// an error row after the rows it gave, and the scan goes on.
///
/// Each file of a group streams into its own bounded channel and the rows are passed on file by
/// file, so memory stays at a few channels' worth of rows however long the files are: a file
/// ahead of the one being passed on waits once its channel is full.
fn folder(
    encoder: &AudioEncoder,
    paths: &[PathBuf],
    reading: Reading,
    stop: &AtomicBool,
    sender: &SyncSender<Message>,
) {
    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_PARALLEL_FILES);
    for group in paths.chunks(parallel) {
        // The receivers are dropped when the closure returns, before the scope joins its threads:
        // a file thread waiting on a full channel then wakes with an error and stops.
        let outcome = std::thread::scope(|scope| -> Result<bool, String> {
            let mut receivers = Vec::with_capacity(group.len());
            for path in group {
                let (file_sender, file_rows) = sync_channel::<Segment>(CHANNEL_ROWS);
                std::thread::Builder::new()
                    .name("audiotext-segments-file".into())
                    .spawn_scoped(scope, move || {
                        segment_one_file(encoder, path, reading, stop, &file_sender)
                    })
                    .map_err(|e| format!("cannot start a segmenting thread: {e}"))?;
                receivers.push(file_rows);
            }
            for file_rows in &receivers {
                for row in file_rows {
                    if stop.load(Ordering::Relaxed) || sender.send(Ok(row)).is_err() {
                        stop.store(true, Ordering::Relaxed);
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        });
        match outcome {
            Ok(true) => {}
            Ok(false) => return,
            Err(message) => {
                stop.store(true, Ordering::Relaxed);
                let _ = sender.send(Err(message));
                return;
            }
        }
    }
}

/// One file of `audio_segment_files`: its rows, then an error row if it failed.
fn segment_one_file(
    encoder: &AudioEncoder,
    path: &PathBuf,
    reading: Reading,
    stop: &AtomicBool,
    rows: &SyncSender<Segment>,
) {
    let shown = path.display().to_string();
    let outcome = guard("segments", || {
        segment(
            encoder,
            &AudioSource::Path(path),
            Some(&shown),
            reading,
            stop,
            &mut |row| rows.send(row).is_ok(),
        )
        .map_err(|e| e.to_string())
    });
    if let Err(message) = outcome {
        let _ = rows.send(Segment {
            path: Some(shown),
            start: None,
            end: None,
            embedding: None,
            error: Some(message.trim_start_matches("segments: ").to_string()),
        });
    }
}

impl Cursor for SegmentsCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> Result<(), String> {
        self.stream = None;
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
        // audio_segment_files has `path` first; audio_segments starts at `start`.
        let column = if self.name == SEGMENT_FILES {
            column
        } else {
            column + 1
        };
        match column {
            0 => set_result(ctx, &row.path),
            1 => set_result(ctx, &row.start),
            2 => set_result(ctx, &row.end),
            3 => set_result(ctx, &row.embedding),
            4 => set_result(ctx, &row.error),
            _ => set_result(ctx, &Null),
        }
    }

    fn rowid(&self) -> Result<i64, String> {
        Ok(self.rowid)
    }
}

macro_rules! segments_table {
    ($table:ident, $name:expr, $declaration:expr, $first_hidden:expr) => {
        struct $table {
            registry: Arc<Registry>,
            db: *mut rusqlite::ffi::sqlite3,
        }

        impl Table for $table {
            const NAME: &'static str = $name;
            type Cursor = SegmentsCursor;

            fn connect(at: Connecting<'_>) -> Result<Declared<Self>, String> {
                let handle = super::schema_guard::connect_file_reader(at.db)?;
                Ok((
                    Cow::Borrowed($declaration),
                    $table {
                        registry: at.registry,
                        db: handle,
                    },
                ))
            }

            fn best_index(&self, info: &mut IndexInfo) -> Result<bool, String> {
                super::args::plan_table_arguments(info, $first_hidden, HIDDEN)
            }

            fn open(&mut self) -> Result<SegmentsCursor, String> {
                Ok(SegmentsCursor {
                    registry: self.registry.clone(),
                    db: self.db,
                    name: $name,
                    stream: None,
                    current: None,
                    rowid: 0,
                })
            }
        }
    };
}
segments_table!(SegmentsTable, SEGMENTS, c"CREATE TABLE x(start REAL, \"end\" REAL, embedding BLOB, source HIDDEN, model HIDDEN, hop_seconds HIDDEN)", 3);
segments_table!(SegmentFilesTable, SEGMENT_FILES, c"CREATE TABLE x(path TEXT, start REAL, \"end\" REAL, embedding BLOB, error TEXT, source HIDDEN, model HIDDEN, hop_seconds HIDDEN)", 5);
