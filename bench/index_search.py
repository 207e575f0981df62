"""Vector search benchmark for issue 13 ("Search a million sounds in milliseconds"): top-10
cosine search with audiotext_index against exact scans in SQL, sqlite-vec's vec0, numpy, faiss
and usearch, on the same vectors, in one run.

Run from the repository root after set-up (scripts/build.sh), with the test venv plus
bench/requirements.txt (faiss-cpu, usearch):

    .venv/bin/pip install -r bench/requirements.txt
    nice -n 19 .venv/bin/python bench/index_search.py                 # 10k, 100k, 1M; every path
    .venv/bin/python bench/index_search.py --sizes 10000 --kinds random --paths numpy,vec0
    .venv/bin/python bench/index_search.py --skip faiss-hnsw,usearch --markdown runs/index.md

The realistic kind embeds 1,892 clips the first time (about 5 minutes on 2 cores); 1M vectors
need about 4 GB of memory and 10 GB in --tmp.

It prints the machine, the versions and the command, then one table per (vector kind, size).
Each path is built, queried once to warm up, then timed on --queries top-10 queries (one at a
time, as an application would; each path may use every core, as it would by default): median and 95th percentile latency (ms;
p95 interpolated between the two slowest of 20), median CPU time per query (ms: the process's
CPU time, which stays near the latency on an idle machine and does not grow while other
programs take the cores), build time (s; faiss and usearch build on every core, SQLite statements on one), size on disk (MB), peak memory (MB: VmHWM
after the build and the queries minus VmRSS when the peak was reset by writing 5 to
/proc/self/clear_refs just before the build; memory already held, such as the vectors in numpy
and a loaded model, is not counted) and recall@10 (the mean over queries of |top 10 found ∩
exact top 10| / 10, the exact top 10 from numpy in float32; 1.000 is expected of the exact
paths and is shown as a check).

Paths (--paths / --skip pick among them; by default all run):
  index-int8    audiotext_index(embedding float[D]): int8 codes, candidates rescored in float32
  index-binary  the same with quantizer=binary
  index-text    index-int8's table queried with TEXT (MATCH 'a caption'), embedded by the
                index's model: the end-to-end text-to-audio query (reuses index-int8's build)
  text-embed    SELECT text_embed(?) alone, the model's share of index-text's latency
  score-scan    SELECT id FROM clips ORDER BY audio_text_score(embedding, ?) DESC LIMIT 10
  vec-scan      SELECT id FROM clips ORDER BY vec_distance_cosine(embedding, ?) LIMIT 10
  vec0          sqlite-vec's vec0(embedding float[D] distance_metric=cosine), MATCH ? AND k = 10
  numpy         matrix-vector product + argpartition (also the recall reference)
  faiss-flat    faiss IndexFlatIP (exact; vectors are unit length, so inner product = cosine)
  faiss-hnsw    faiss IndexHNSWFlat, M=32, efConstruction=40, efSearch=64, inner product
  usearch       usearch Index, metric cos, float32, connectivity 16, expansion_add 128,
                expansion_search 64 (its defaults, written out)
audiotext_index is reported as "not available (reason)" while the extension has no such module.

SQLite: every database is a file in a temporary folder (--tmp), PRAGMA journal_mode=OFF and
synchronous=OFF for every SQLite path (we time the index work, not the journal or fsync),
SQLite's default page cache. The plain table clips(id INTEGER PRIMARY KEY, embedding BLOB) is
loaded once per size with executemany (not timed); vec0 and audiotext_index are built in their
own database files with INSERT INTO t(rowid, embedding) SELECT id, embedding FROM clips (clips'
database attached), so each one's size is its own file. Build time is CREATE + INSERT ... SELECT
for SQLite, add() for faiss and usearch, nothing for numpy and the plain-table scans.

Filtered search (issue 23), `--filtered` instead of the table above:

    nice -n 19 .venv/bin/python bench/index_search.py --filtered --sizes 1000000

random unit vectors with a metadata column `bucket integer` (0-99, uniform, seed 13), searched
with `bucket < 1`, `< 10` and `< 50` (1 %, 10 %, 50 % of the rows allowed) and with `rowid IN`
10,000 random rowids; audiotext_index(embedding float[D], bucket integer) against vec0 0.1.6
with the same metadata column; recall@10 against numpy's exact top 10 among the allowed rows.

Vector kinds (dimension D = the default model's embedding_dim, 384):
  random     unit vectors drawn uniformly (normal, normalised; seed 13), queries likewise. No
             structure: the hardest case for approximate search.
  realistic  the 1,892 clips of ../shared/data/esc50-16k embedded by the default model with
             audio_embed_files (cached in .cache/bench/, keyed by the sha256 of audio.onnx), each
             repeated size/1892 times with Gaussian noise and renormalised, so the collection
             keeps the clips' cluster structure (50 classes, clips of one class close together).
             Queries are text_embed of real captions from captions.csv (distinct ones, seed 13):
             the realistic use, text-to-audio search. Skipped, with a message, without ../shared.
  The noise: copy = normalise(source + sigma * N(0, I_D)), so cos(copy, source) is about
  1 / sqrt(1 + sigma^2 D). sigma is chosen from the data so that this cosine is halfway between
  1 and the median cosine of a clip to its nearest other clip: a copy stays clearly closer to
  its own source than the source's nearest other clip typically is (the clusters stay the
  clips'), yet the copies of one clip are not near-duplicates (which would make the top 10 a
  tie among copies). The run prints the measured cosines.
"""

import argparse
import ctypes
import csv
import gc
import hashlib
import json
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Every path may use every core, as each would for a user by default: audiotext_index scans
# its chunks on rayon's threads, numpy's BLAS and faiss on theirs (OpenMP). Run on an idle
# machine: threads that spin while waiting are slow when other programs hold the cores.
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "dist" / "audiotext0"
BUNDLE = ROOT / "models" / "default"
DIM = json.loads((BUNDLE / "manifest.json").read_text())["embedding_dim"]
DATA = ROOT.parent / "shared" / "data" / "esc50-16k"
CACHE = ROOT / ".cache" / "bench"
K = 10
SEED = 13
PRAGMAS = ("PRAGMA journal_mode=OFF", "PRAGMA synchronous=OFF")
HNSW = dict(M=32, efConstruction=40, efSearch=64)
USEARCH = dict(connectivity=16, expansion_add=128, expansion_search=64)
MB = 1e6
FALLBACK_TEXTS = ["dog barking", "rain on a roof", "a baby crying", "church bells ringing", "a car horn honking"]


class Unavailable(Exception):
    """A path that cannot run here (module or package missing); its row says why."""


# --- data ----------------------------------------------------------------------------------


@dataclass
class Workload:
    """One (kind, size): the collection, the queries (row 0 is the warm-up) and the truth."""

    kind: str
    vectors: np.ndarray  # (n, DIM) float32, unit rows; SQLite rowid = index + 1
    queries: np.ndarray  # (1 + q, DIM) float32, unit rows
    texts: list  # 1 + q captions, for index-text and text-embed
    text_vectors: np.ndarray  # their text_embed
    tmp: Path
    base_db: Path = None
    exact: list = field(default_factory=list)  # exact top 10 (index sets) of queries[1:]
    exact_text: list = field(default_factory=list)  # the same for text_vectors[1:]


def connect(path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.enable_load_extension(True)
    conn.load_extension(str(EXTENSION))
    for pragma in PRAGMAS:
        conn.execute(pragma)
    return conn


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_unit(rng, n, chunk=100_000):
    out = np.empty((n, DIM), np.float32)
    for i in range(0, n, chunk):
        out[i : i + chunk] = unit(rng.standard_normal((min(chunk, n - i), DIM), dtype=np.float32))
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clip_embeddings():
    """The esc50-16k clips' audio embeddings by the default model: (paths, (1892, DIM) array).
    Embedding them takes minutes, so they are cached by the sha256 of audio.onnx."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"esc50-16k-{sha256(BUNDLE / 'audio.onnx')[:16]}.npz"
    if cached.exists():
        z = np.load(cached)
        return list(z["paths"]), z["embeddings"]
    print(f"embedding {DATA / 'audio'} with the default model (once; cached in {cached.relative_to(ROOT)}) ...", flush=True)
    started = time.perf_counter()
    conn = connect(":memory:")
    rows = conn.execute("SELECT path, embedding, error FROM audio_embed_files(?)", (str(DATA / "audio"),)).fetchall()
    conn.close()
    failed = [(p, e) for p, _, e in rows if e is not None]
    if failed:
        sys.exit(f"audio_embed_files failed on {len(failed)} files, e.g. {failed[0]}")
    paths = [Path(p).name for p, _, _ in rows]
    embeddings = np.stack([np.frombuffer(b, np.float32) for _, b, _ in rows])
    np.savez(cached, paths=np.array(paths), embeddings=embeddings)
    print(f"  {len(paths)} clips in {time.perf_counter() - started:.0f} s", flush=True)
    return paths, embeddings


def captions(count):
    """`count` distinct captions of esc50-16k, picked with the fixed seed."""
    with open(DATA / "captions.csv", newline="") as f:
        distinct = sorted({c for row in csv.DictReader(f) for k, c in row.items() if k.startswith("caption")})
    if count > len(distinct):
        sys.exit(f"--queries: at most {len(distinct) - 1} (captions.csv has {len(distinct)} distinct captions)")
    picked = np.random.default_rng(SEED).choice(len(distinct), count, replace=False)
    return [distinct[i] for i in picked]


def text_embeddings(texts):
    conn = connect(":memory:")
    out = np.stack([np.frombuffer(conn.execute("SELECT text_embed(?)", (t,)).fetchone()[0], np.float32) for t in texts])
    conn.close()
    return out


def noise_sigma(clips):
    """sigma for the realistic copies (see the docstring) and the cosines it comes from."""
    sims = clips @ clips.T
    np.fill_diagonal(sims, -np.inf)
    nearest = float(np.median(sims.max(axis=1)))
    target = (1 + nearest) / 2
    return float(np.sqrt((1 / target**2 - 1) / DIM)), nearest, target


def realistic_collection(clips, n, sigma, rng, chunk=100_000):
    """n noisy copies of the clips (each clip n/len(clips) times, shuffled) and their sources."""
    sources = rng.permutation(np.arange(n) % len(clips))
    out = np.empty((n, DIM), np.float32)
    for i in range(0, n, chunk):
        s = sources[i : i + chunk]
        out[i : i + chunk] = unit(clips[s] + sigma * rng.standard_normal((len(s), DIM), dtype=np.float32))
    return out, sources


def describe_noise(clips, vectors, sources, sigma, nearest, target):
    """The measured cosines that justify sigma, on (up to) the first 20,000 copies."""
    v, s = vectors[:20_000], sources[:20_000]
    to_sources = v @ clips.T
    own = to_sources[np.arange(len(s)), s]
    to_sources[np.arange(len(s)), s] = -np.inf
    other = to_sources.max(axis=1)
    return (
        f"noise: sigma = {sigma:.4f} per dimension; a clip's nearest other clip: median cosine {nearest:.3f}; "
        f"target cos(copy, source) = (1 + {nearest:.3f}) / 2 = {target:.3f}; measured: median {np.median(own):.3f} "
        f"(min {own.min():.3f}); copy to the nearest other clip: median {np.median(other):.3f}; "
        f"copies closer to their own clip than to any other: {np.mean(own > other):.1%} (so the copies stay in their "
        f"clip's cluster without being near-duplicates of each other)"
    )


def exact_top(vectors, queries):
    return [set(np.argpartition(-(vectors @ q), K)[:K].tolist()) for q in queries]


def load_base(work):
    """The plain table every SQLite path reads, loaded once (not part of any build)."""
    work.base_db = work.tmp / "clips.db"
    conn = connect(work.base_db)
    conn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, embedding BLOB)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO clips(id, embedding) VALUES (?, ?)", ((i + 1, v.tobytes()) for i, v in enumerate(work.vectors)))
    conn.execute("COMMIT")
    conn.close()


# --- paths ---------------------------------------------------------------------------------
# Each build function returns a Built: build seconds, a search function (query -> 0-based ids),
# the size in bytes (called after the memory reading, as it may write a file) and close.


@dataclass
class Built:
    seconds: float
    search: Callable
    size: Callable = lambda: None
    close: Callable = lambda: None
    note: str = ""


def sqlite_search(conn, sql):
    def search(q):
        return [r[0] - 1 for r in conn.execute(sql, (q.tobytes() if isinstance(q, np.ndarray) else q,))]

    return search


def build_sqlite_table(work, name, create):
    """CREATE + INSERT ... SELECT of a virtual table in its own database file."""
    db = work.tmp / f"{name}.db"
    if db.exists():
        db.unlink()
    conn = connect(db)
    conn.execute("ATTACH ? AS src", (str(work.base_db),))
    started = time.perf_counter()
    try:
        conn.execute(create)
    except sqlite3.OperationalError as e:
        conn.close()
        db.unlink()
        raise Unavailable(str(e))
    conn.execute("INSERT INTO t(rowid, embedding) SELECT id, embedding FROM src.clips")
    seconds = time.perf_counter() - started
    conn.execute("DETACH src")
    (work.tmp / f"{name}.built").touch()
    return conn, db, seconds


def index_path(options, note):
    def build(work):
        create = f"CREATE VIRTUAL TABLE t USING audiotext_index(embedding float[{DIM}]{options})"
        conn, db, seconds = build_sqlite_table(work, "index" + options.replace(", quantizer=", "-"), create)
        search = sqlite_search(conn, f"SELECT rowid FROM t WHERE embedding MATCH ? AND k = {K}")
        return Built(seconds, search, lambda: db.stat().st_size, conn.close, note)

    return build


def build_index_text(work):
    """index-int8's database, kept on disk, queried with TEXT; built here if index-int8 did not run."""
    db = work.tmp / "index.db"
    note = "index-int8's index, TEXT query"
    if (work.tmp / "index.built").exists():
        conn, seconds = connect(db), None
    else:
        conn, db, seconds = build_sqlite_table(work, "index", f"CREATE VIRTUAL TABLE t USING audiotext_index(embedding float[{DIM}])")
        note = "int8 index built here, TEXT query"
    search = sqlite_search(conn, f"SELECT rowid FROM t WHERE embedding MATCH ? AND k = {K}")
    return Built(seconds, search, lambda: db.stat().st_size if seconds is not None else None, conn.close, note)


def build_text_embed(work):
    conn = connect(":memory:")
    return Built(None, lambda t: conn.execute("SELECT text_embed(?)", (t,)).fetchone() and [], close=conn.close, note="model only, no search")


def scan_path(sql, note):
    def build(work):
        conn = connect(work.base_db)
        return Built(None, sqlite_search(conn, sql), lambda: work.base_db.stat().st_size, conn.close, note)

    return build


def build_vec0(work):
    create = f"CREATE VIRTUAL TABLE t USING vec0(embedding float[{DIM}] distance_metric=cosine)"
    conn, db, seconds = build_sqlite_table(work, "vec0", create)
    search = sqlite_search(conn, f"SELECT rowid FROM t WHERE embedding MATCH ? AND k = {K}")
    return Built(seconds, search, lambda: db.stat().st_size, conn.close, "exact (brute force)")


def build_numpy(work):
    x = work.vectors

    def search(q):
        scores = x @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])].tolist()

    return Built(None, search, lambda: x.nbytes, note="exact; the reference")


def faiss_module():
    try:
        import faiss
    except ImportError as e:
        raise Unavailable(f"{e}: pip install -r bench/requirements.txt")
    return faiss


def faiss_path(make, note):
    def build(work):
        faiss = faiss_module()
        index = make(faiss)
        started = time.perf_counter()
        index.add(work.vectors)
        seconds = time.perf_counter() - started

        def search(q):
            return index.search(q[None], K)[1][0].tolist()

        def size():
            path = work.tmp / "faiss.index"
            faiss.write_index(index, str(path))
            size = path.stat().st_size
            path.unlink()
            return size

        return Built(seconds, search, size, note=note)

    return build


def make_hnsw(faiss):
    index = faiss.IndexHNSWFlat(DIM, HNSW["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW["efConstruction"]
    index.hnsw.efSearch = HNSW["efSearch"]
    return index


def build_usearch(work):
    try:
        from usearch.index import Index
    except ImportError as e:
        raise Unavailable(f"{e}: pip install -r bench/requirements.txt")
    index = Index(ndim=DIM, metric="cos", dtype="f32", **USEARCH)
    keys = np.arange(len(work.vectors), dtype=np.uint64)
    started = time.perf_counter()
    index.add(keys, work.vectors)
    seconds = time.perf_counter() - started

    def size():
        path = work.tmp / "usearch.index"
        index.save(str(path))
        size = path.stat().st_size
        path.unlink()
        return size

    return Built(seconds, lambda q: index.search(q, K).keys.tolist(), size, note=", ".join(f"{k} {v}" for k, v in USEARCH.items()))


GRAPH_PATHS = ("faiss-hnsw", "usearch")
PATHS = {  # name: (build, queries are "vectors" or "texts")
    "index-int8": (index_path("", "quantizer=int8 (default)"), "vectors"),
    "index-binary": (index_path(", quantizer=binary", "quantizer=binary"), "vectors"),
    "index-text": (build_index_text, "texts"),
    "text-embed": (build_text_embed, "texts"),
    "score-scan": (scan_path(f"SELECT id FROM clips ORDER BY audio_text_score(embedding, ?) DESC LIMIT {K}", "exact, plain table"), "vectors"),
    "vec-scan": (scan_path(f"SELECT id FROM clips ORDER BY vec_distance_cosine(embedding, ?) LIMIT {K}", "exact, plain table"), "vectors"),
    "vec0": (build_vec0, "vectors"),
    "numpy": (build_numpy, "vectors"),
    "faiss-flat": (faiss_path(lambda faiss: faiss.IndexFlatIP(DIM), "IndexFlatIP, exact"), "vectors"),
    "faiss-hnsw": (faiss_path(make_hnsw, ", ".join(f"{k}={v}" for k, v in HNSW.items())), "vectors"),
    "usearch": (build_usearch, "vectors"),
}


# --- measuring -----------------------------------------------------------------------------


def proc_status_kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def reset_peak():
    """Free what can be freed, reset VmHWM to VmRSS; returns that RSS (kB), or None."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return proc_status_kb("VmRSS")


def run_path(name, work, queries):
    """One row: build, warm up, time the queries, measure; or the reason it cannot run."""
    build, kind = PATHS[name]
    qs, truth = (work.texts, work.exact_text) if kind == "texts" else (work.queries, work.exact)
    base = reset_peak()
    try:
        built = build(work)
    except Unavailable as e:
        return {"path": name, "unavailable": str(e)}
    built.search(qs[0])
    latencies, cpu, found = [], [], []
    for q in qs[1 : queries + 1]:
        started, started_cpu = time.perf_counter(), time.process_time()
        ids = built.search(q)
        latencies.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        found.append(ids)
    hwm = proc_status_kb("VmHWM")
    row = {
        "path": name,
        "median": 1000 * np.median(latencies),
        "p95": 1000 * np.percentile(latencies, 95),
        "cpu": 1000 * np.median(cpu),
        "build": built.seconds,
        "size": built.size(),
        "peak": (hwm - base) / 1000 if base is not None else None,
        "recall": None if name == "text-embed" else float(np.mean([len(set(f) & t) / K for f, t in zip(found, truth)])),
        "note": built.note,
    }
    built.close()
    return row


# --- output --------------------------------------------------------------------------------

COLUMNS = ("path", "median ms", "p95 ms", "cpu ms", "build s", "size MB", "peak MB", "recall@10", "notes")


def cells(row):
    if "unavailable" in row:
        return [row["path"], f"not available ({row['unavailable']})"] + [""] * (len(COLUMNS) - 2)

    def num(value, fmt):
        return "—" if value is None else format(value, fmt)

    size = None if row["size"] is None else row["size"] / MB
    return [row["path"], num(row["median"], ".3f"), num(row["p95"], ".3f"), num(row["cpu"], ".3f"), num(row["build"], ".2f"), num(size, ".1f"),
            num(row["peak"], ".1f"), num(row["recall"], ".3f"), row["note"]]


def table(rows):
    grid = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(r[i]) for r in grid) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in grid]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def header():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    mem = proc_meminfo_gb()
    conn = connect(":memory:")
    sqlite_v, vec_v, ours = conn.execute("SELECT sqlite_version(), vec_version(), audiotext_version()").fetchone()
    conn.close()
    versions = [f"python {platform.python_version()}", f"sqlite {sqlite_v}", f"audiotext {ours}", f"sqlite-vec {vec_v}", f"numpy {np.__version__}"]
    for module in ("faiss", "usearch"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} not installed")
    return [
        f"command: {shlex.join(sys.orig_argv)}",
        f"machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GB RAM, {platform.system()} {platform.release()}; "
        f"niceness {os.nice(0)}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start",
        "versions: " + ", ".join(versions),
        f"top {K}, cosine, dimension {DIM}; SQLite: {', '.join(PRAGMAS)}, default page cache; "
        f"latency: median and p95 of --queries after one warm-up query; cpu ms: median process CPU time per query "
        f"(near the median when the machine is idle; every path may use every core; cpu ms then exceeds latency where a search runs on several)",
    ]


def proc_meminfo_gb():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1e6
    return 0


# --- main ----------------------------------------------------------------------------------


def workloads(kinds, sizes, queries, tmp, out):
    """Yields a Workload per (kind, size), printing what it is made of."""
    if DATA.exists():
        texts = captions(queries + 1)
    else:  # the text queries of the random kind still run, with hand-written descriptions
        texts = [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(queries + 1)]
    text_vectors = text_embeddings(texts)
    for kind in kinds:
        if kind == "realistic" and not DATA.exists():
            out(f"\n## realistic: skipped: {DATA} is missing (the esc50-16k clips; see the set-up in README.md)")
            continue
        rng = np.random.default_rng(SEED)
        if kind == "realistic":
            _, clips = clip_embeddings()
            sigma, nearest, target = noise_sigma(clips)
        for n in sizes:
            if kind == "random":
                vectors, qs = random_unit(rng, n), random_unit(rng, queries + 1)
                what = f"random unit vectors (seed {SEED}), random unit queries; TEXT queries: {queries} captions (+1 warm-up)"
            else:
                vectors, sources = realistic_collection(clips, n, sigma, rng)
                qs = text_vectors
                what = (f"{len(clips)} esc50-16k clip embeddings, each copied ~{n / len(clips):.0f} times with noise; "
                        f"queries: text_embed of {queries} captions (+1 warm-up)\n\n" + describe_noise(clips, vectors, sources, sigma, nearest, target))
            work = Workload(kind, vectors, qs, texts, text_vectors, Path(tmp) / f"{kind}-{n}")
            del vectors, qs
            work.tmp.mkdir()
            work.exact = exact_top(work.vectors, work.queries[1:])
            work.exact_text = exact_top(work.vectors, work.text_vectors[1:])
            load_base(work)
            out(f"\n## {kind}, {n:,} vectors\n\n{what}\n")
            yield work
            for f in work.tmp.iterdir():
                f.unlink()
            work.tmp.rmdir()
            del work


# --- filtered search ---------------------------------------------------------------------

FILTERS = [
    ("none (every row: the baseline)", "bucket < 100", lambda bucket, n: True),
    ("1% (bucket < 1)", "bucket < 1", lambda bucket, n: bucket < 1),
    ("10% (bucket < 10)", "bucket < 10", lambda bucket, n: bucket < 10),
    ("50% (bucket < 50)", "bucket < 50", lambda bucket, n: bucket < 50),
    ("rowid IN 10,000 rowids", "rowid IN (SELECT value FROM json_each(?2))", None),
]


def filtered_benchmark(sizes, queries, tmp, out):
    """audiotext_index and vec0 with a metadata column, filtered KNN (see the docstring)."""
    for n in sizes:
        rng = np.random.default_rng(SEED)
        vectors, qs = random_unit(rng, n), random_unit(rng, queries + 1)
        buckets = rng.integers(0, 100, n)
        listed = np.sort(rng.choice(n, 10_000, replace=False)) + 1
        listed_json = json.dumps(listed.tolist())
        out(f"\n## filtered search, {n:,} random vectors (bucket integer 0-99, uniform)\n")
        rows = []
        for name, create in [
            ("audiotext_index", f"CREATE VIRTUAL TABLE t USING audiotext_index(embedding float[{DIM}], bucket integer)"),
            ("vec0 0.1.6", f"CREATE VIRTUAL TABLE t USING vec0(embedding float[{DIM}] distance_metric=cosine, bucket integer)"),
        ]:
            db = Path(tmp) / f"filtered-{name.split()[0]}-{n}.db"
            conn = connect(db)
            conn.execute(create)
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO t(rowid, embedding, bucket) VALUES (?, ?, ?)",
                             ((i + 1, v.tobytes(), int(b)) for i, (v, b) in enumerate(zip(vectors, buckets))))
            conn.execute("COMMIT")
            build = time.perf_counter() - started
            for label, where, keep in FILTERS:
                allowed = np.flatnonzero(buckets < int(where.split("<")[1])) if keep else listed - 1
                sql = f"SELECT rowid FROM t WHERE embedding MATCH ?1 AND k = {K} AND {where}"
                params = lambda q: (q.tobytes(), listed_json) if keep is None else (q.tobytes(),)
                # The truth first: numpy's threads may keep the cores busy for a while after a
                # product, which would be timed as the next query's.
                sub = vectors[allowed]
                exact = [set(allowed[np.argsort(-(sub @ q))[:K]].tolist()) for q in qs[1 : queries + 1]]
                del sub
                try:
                    conn.execute(sql, params(qs[0])).fetchall()  # warm-up: loads the codes and values
                except sqlite3.Error as e:
                    rows.append([name, label, f"error: {e}", "", "", "", ""])
                    continue
                time.sleep(0.5)
                latencies, found = [], []
                for q in qs[1 : queries + 1]:
                    started = time.perf_counter()
                    found.append([r[0] - 1 for r in conn.execute(sql, params(q))])
                    latencies.append(time.perf_counter() - started)
                recalls = [len(set(f) & e) / K for f, e in zip(found, exact)]
                rows.append([name, label, f"{1000 * np.median(latencies):.2f}", f"{1000 * np.percentile(latencies, 95):.2f}",
                             f"{np.mean(recalls):.3f}", f"{build:.0f}", f"{len(allowed):,}"])
                print(f"  {name} {label} done", file=sys.stderr, flush=True)
            conn.close()
            db.unlink()
        grid = [["path", "allowed", "median ms", "p95 ms", "recall@10", "build s", "rows allowed"]] + rows
        widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in grid]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out("\n".join(lines))
        out(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=20, help="timed queries per path, after one warm-up (default: %(default)s)")
    parser.add_argument("--kinds", default="random,realistic", help="vector kinds (default: %(default)s)")
    parser.add_argument("--paths", default=",".join(PATHS), help="paths to run (default: all: %(default)s)")
    parser.add_argument("--skip", default="", help="paths not to run (e.g. faiss-hnsw,usearch at 1M)")
    parser.add_argument("--max-graph-size", type=int, default=100_000, help="build the graph indexes (faiss-hnsw, usearch) only up to this size (default: %(default)s; on 2 cores they took 56 s and 136 s for 100k random vectors and grow faster than linearly)")
    parser.add_argument("--tmp", default=None, help="folder for the databases (default: the system's temporary folder)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--filtered", action="store_true", help="the filtered-search benchmark instead (issue 23; see above)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    skip = set(filter(None, args.skip.split(",")))
    paths = [p for p in args.paths.split(",") if p and p not in skip]
    unknown = [x for x in paths + list(skip) + kinds if x not in PATHS and x not in ("random", "realistic")]
    if unknown or args.queries < 1:
        parser.error(f"unknown: {', '.join(unknown)}; paths are {', '.join(PATHS)}; kinds are random, realistic" if unknown else "--queries >= 1")
    if not (EXTENSION.parent / "audiotext0.so").exists():
        sys.exit(f"{EXTENSION}.so is missing: build it first (scripts/build.sh)")

    lines = []

    def out(text):
        print(text, flush=True)
        lines.append(text)

    for line in header():
        out("- " + line)
    with tempfile.TemporaryDirectory(prefix="index-search-", dir=args.tmp) as tmp:
        if args.filtered:
            filtered_benchmark(sizes, args.queries, tmp, out)
        for work in [] if args.filtered else workloads(kinds, sizes, args.queries, tmp, out):
            rows = []
            for name in paths:
                if name in GRAPH_PATHS and len(work.vectors) > args.max_graph_size:
                    rows.append({"path": name, "unavailable": f"skipped above --max-graph-size {args.max_graph_size} (build time on this machine)"})
                    continue
                rows.append(run_path(name, work, args.queries))
                print(f"  {name} done", file=sys.stderr, flush=True)
            out(table(rows))
            out(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
