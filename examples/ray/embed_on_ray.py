"""Embedding a collection too big for one machine on Ray Data, then searching it with SQLite.

    python examples/ray/embed_on_ray.py embed FILE_LIST OUT_DIR [--address auto] [--segments]
    python examples/ray/embed_on_ray.py load OUT_DIR DATABASE

`embed` reads a text file of audio paths (one per line, visible to every worker: a shared
filesystem or a mounted bucket), splits them into batches, and on each worker runs the
extension's own `audio_embed_files` (and `audio_segment_files` with --segments) through the
Python package, in one SQLite connection per worker. The rows (path, start, end, embedding,
error; start and end are NULL for a whole file) are written as Parquet files, one per block.
`load` puts them into an SQLite database as `clips(path, duration, embedding, error)` and
`segments(path, start, end, embedding)`, the tables the README and `audiotext search` use.

Nothing here is special to Ray but the four calls to it (read, map_batches, write, init): the
work in each batch is what `audio_embed_files` does on one machine, so the embeddings are the
same numbers. Needs `pip install sqlite-audiotext "ray[data]"` on every node.
"""

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("path", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
    ("duration", pa.float64()), ("embedding", pa.binary()), ("error", pa.string()),
])
FILES_PER_BATCH = 16


class Embedder:
    """One per Ray worker: a connection with the extension loaded (the model loads once)."""

    def __init__(self, segments=False, threads=1):
        import os

        import sqlite_audiotext

        # ONNX Runtime would start one thread per core of the machine in every worker: each
        # worker keeps to the CPUs Ray gave it.
        os.environ["AUDIOTEXT_THREADS"] = str(threads)
        self.segments = segments
        # Ray calls the actor from a thread other than the one that built it, one call at a time.
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        sqlite_audiotext.load(self.conn)

    def __call__(self, batch):
        listing = json.dumps([str(p) for p in batch["path"]])
        out = {name: [] for name in SCHEMA.names}

        def add(path, start, end, duration, embedding, error):
            for name, value in zip(SCHEMA.names, (path, start, end, duration, embedding, error)):
                out[name].append(value)

        for path, duration, embedding, error in self.conn.execute(
                "SELECT path, duration, embedding, error FROM audio_embed_files(?)", (listing,)):
            add(path, None, None, duration, embedding, error)
        if self.segments:
            for path, start, end, embedding, error in self.conn.execute(
                    "SELECT path, start, end, embedding, error FROM audio_segment_files(?)", (listing,)):
                if error is None:
                    add(path, start, end, None, embedding, None)
        return pa.table(out, schema=SCHEMA)


def embed(file_list, out_dir, address=None, segments=False, workers=None, cpus_per_worker=1):
    import ray
    import ray.cloudpickle

    # Workers get Embedder by value: this file need not be importable on them.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    paths = [line.strip() for line in Path(file_list).read_text().splitlines() if line.strip()]
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)
    dataset = ray.data.from_items([{"path": p} for p in paths])
    embedded = dataset.map_batches(Embedder, fn_constructor_kwargs={"segments": segments, "threads": cpus_per_worker},
                                   batch_size=FILES_PER_BATCH, batch_format="pyarrow",
                                   concurrency=workers, num_cpus=cpus_per_worker)
    embedded.write_parquet(str(out_dir))
    return len(paths)


def load(out_dir, database):
    conn = sqlite3.connect(database)
    with conn:
        conn.executescript("""
            CREATE TABLE IF NOT EXISTS clips(path TEXT PRIMARY KEY, duration REAL, embedding BLOB, error TEXT);
            CREATE TABLE IF NOT EXISTS segments(path TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL, embedding BLOB NOT NULL);
        """)
        for part in sorted(Path(out_dir).glob("*.parquet")):
            table = pq.read_table(part, schema=SCHEMA)
            for row in table.to_pylist():
                if row["start"] is None:
                    conn.execute("INSERT OR REPLACE INTO clips VALUES (?, ?, ?, ?)",
                                 (row["path"], row["duration"], row["embedding"], row["error"]))
                else:
                    conn.execute("INSERT INTO segments VALUES (?, ?, ?, ?)",
                                 (row["path"], row["start"], row["end"], row["embedding"]))
    counts = conn.execute("SELECT (SELECT count(*) FROM clips), (SELECT count(*) FROM segments)").fetchone()
    conn.close()
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("embed")
    p.add_argument("file_list")
    p.add_argument("out_dir")
    p.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    p.add_argument("--segments", action="store_true")
    p.add_argument("--workers", type=int, help="Ray workers embedding at once (default: the cluster's CPUs / --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (and ONNX Runtime threads) per worker (default: 1)")
    p = commands.add_parser("load")
    p.add_argument("out_dir")
    p.add_argument("database")
    args = parser.parse_args(argv)
    if args.command == "embed":
        count = embed(args.file_list, args.out_dir, args.address, args.segments, args.workers, args.cpus_per_worker)
        print(f"{count} files embedded into {args.out_dir}")
    else:
        clips, segments = load(args.out_dir, args.database)
        print(f"{args.database}: {clips} clips, {segments} segments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
