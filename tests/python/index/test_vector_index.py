"""The `audiotext_index` virtual table as a user drives it from Debian's Python sqlite3: exact
nearest neighbours against numpy over both pending and chunked rows, for both quantizers;
transactions, savepoints and failed statements; deletes and updates; several connections and a
second process on one file; VACUUM and reopening; DROP TABLE and ATTACH; every error with its
message and the connection still sound; damaged shadow tables; TEXT queries; and the recall of
the default quantization on real clip embeddings."""

import csv
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DEFAULT_BUNDLE, EXTENSION, open_connection

DIM = 384
CHUNK = 1024  # rows per chunk (store.rs CHUNK_SLOTS)
N_ROWS = 2500  # two chunks of 1024 and 452 pending rows
TOL = 1e-5
SHADOWS = ["info", "pending", "chunks", "codes", "vectors", "rowids"]
INT8 = "embedding float[384]"
BINARY_EXACT = "embedding float[384], quantizer=binary, rescore=3000"


# --- helpers ----------------------------------------------------------------------------------

def connect(path=":memory:"):
    """A connection with the extension, in autocommit mode: every transaction is explicit."""
    conn = open_connection(str(path))
    conn.isolation_level = None
    return conn


def blob(vector):
    return np.asarray(vector, dtype="<f4").tobytes()


def random_rows(seed, n, dim=DIM, scaled=True):
    """Seeded random vectors; scaled ones have norms from 0.5 to 2, so cosine must normalise."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    if scaled:
        rows *= rng.uniform(0.5, 2.0, (n, 1))
    return rows.astype("<f4")


class Reference:
    """What the index should hold, and numpy's exact cosine top k over it."""

    def __init__(self):
        self.rows = {}

    def add(self, rowids, vectors):
        for rowid, vector in zip(rowids, vectors):
            self.rows[int(rowid)] = np.asarray(vector, dtype="<f4")

    def remove(self, rowids):
        for rowid in rowids:
            del self.rows[int(rowid)]

    def distances(self, query):
        ids = np.array(sorted(self.rows), dtype=np.int64)
        matrix = np.stack([self.rows[i] for i in ids]).astype(np.float64)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        q = np.asarray(query, dtype=np.float64)
        return ids, 1.0 - matrix @ (q / np.linalg.norm(q))

    def top(self, query, k):
        ids, d = self.distances(query)
        order = np.lexsort((ids, d))
        return ids[order][:k], d[order]


def insert(conn, rowids, vectors, table="ix"):
    conn.execute("BEGIN")
    conn.executemany(
        f"INSERT INTO {table}(rowid, embedding) VALUES (?, ?)",
        [(int(r), blob(v)) for r, v in zip(rowids, vectors)],
    )
    conn.execute("COMMIT")


def knn(conn, query, k=10, table="ix"):
    if not isinstance(query, (bytes, str)):
        query = blob(query)
    return conn.execute(f"SELECT rowid, distance FROM {table} WHERE embedding MATCH ? AND k = ?", (query, k)).fetchall()


def assert_exact(conn, ref, query, k=10, table="ix"):
    """The index's answer is numpy's exact top k: same distances (ascending), each row's distance
    right, and the same rowids wherever the k-th and (k+1)-th distances are not a near tie."""
    got = knn(conn, query, k, table)
    want_ids, sorted_d = ref.top(query, k)
    assert len(got) == min(k, len(ref.rows))
    rowids = [r[0] for r in got]
    distances = np.array([r[1] for r in got])
    assert len(set(rowids)) == len(rowids), rowids
    assert np.all(np.diff(distances) >= 0), distances
    ids, d = ref.distances(query)
    by_id = dict(zip(ids.tolist(), d))
    for rowid, distance in got:
        assert rowid in by_id, f"rowid {rowid} is not in the index"
        assert abs(by_id[rowid] - distance) < TOL, (rowid, distance, by_id[rowid])
    np.testing.assert_allclose(distances, sorted_d[: len(got)], atol=TOL)
    if len(sorted_d) <= k or sorted_d[k] - sorted_d[k - 1] > 4 * TOL:
        assert set(rowids) == set(want_ids.tolist())
    return rowids


def filled(conn, options=INT8, n=N_ROWS, seed=0, table="ix"):
    """An index of n rows with rowids 1..n; returns its Reference and the vectors."""
    conn.execute(f"CREATE VIRTUAL TABLE {table} USING audiotext_index({options})")
    vectors = random_rows(seed, n)
    rowids = np.arange(1, n + 1)
    insert(conn, rowids, vectors, table)
    ref = Reference()
    ref.add(rowids, vectors)
    return ref, vectors


def counts(conn, table="ix"):
    """(chunks, pending rows) as the shadow tables hold them."""
    return (
        conn.execute(f"SELECT count(*) FROM {table}_chunks").fetchone()[0],
        conn.execute(f"SELECT count(*) FROM {table}_pending").fetchone()[0],
    )


def queries(seed, vectors, n_random=4):
    """Random queries, plus perturbed copies of a chunked row and of a pending row."""
    rng = np.random.default_rng(seed)
    out = list(random_rows(seed + 100, n_random, scaled=False))
    for rowid in (17, N_ROWS - 3):  # chunk 1 and the pending rows
        if rowid <= len(vectors):
            out.append(vectors[rowid - 1] + 0.01 * rng.standard_normal(DIM).astype("<f4"))
    return out


def assert_sound(conn):
    """After an error: the connection answers and the database is intact."""
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def expect_error(conn, sql, params, *needles):
    with pytest.raises(sqlite3.OperationalError) as error:
        conn.execute(sql, params).fetchall()
    message = str(error.value)
    assert message.startswith("audiotext_index: "), message
    for needle in needles:
        assert needle in message, message
    assert_sound(conn)
    return message


def default_text_model():
    if not (DEFAULT_BUNDLE / "text.onnx").exists():
        pytest.skip(f"{DEFAULT_BUNDLE}/text.onnx is absent: TEXT queries need the default bundle (scripts/setup.sh)")


# --- 1. exact nearest neighbours --------------------------------------------------------------

@pytest.mark.parametrize("options", [INT8, BINARY_EXACT], ids=["int8", "binary"])
def test_knn_equals_numpy_over_chunked_and_pending_rows(options):
    conn = connect()
    ref, vectors = filled(conn, options)
    assert counts(conn) == (2, N_ROWS - 2 * CHUNK)
    for query in queries(1, vectors):
        assert_exact(conn, ref, query)
    # A stored row is its own nearest neighbour at distance 0, chunked or pending.
    for rowid in (1, 1024, 1025, 2048, 2049, N_ROWS):
        top = knn(conn, vectors[rowid - 1], 3)
        assert top[0][0] == rowid and abs(top[0][1]) < TOL
    # k larger than the index: every row, nearest first.
    q = queries(2, vectors)[0]
    assert_exact(conn, ref, q, k=4096)
    # The hidden columns: k echoes the request; distance is only set by MATCH.
    assert conn.execute("SELECT k FROM ix WHERE embedding MATCH ? AND k = 3", (blob(q),)).fetchall() == [(3,)] * 3
    assert conn.execute("SELECT distance, k FROM ix WHERE rowid = 5").fetchall() == [(None, None)]
    # The embedding column returns the stored bytes exactly, by rowid and from a KNN query.
    for rowid in (1, 777, 1024, 1500, 2048, 2049, N_ROWS):
        assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (rowid,)).fetchone()[0] == blob(vectors[rowid - 1])
    for rowid, stored in conn.execute("SELECT rowid, embedding FROM ix WHERE embedding MATCH ? AND k = 20", (blob(q),)):
        assert stored == blob(vectors[rowid - 1])
    assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (N_ROWS + 1,)).fetchall() == []
    # A plain scan lists every rowid in order; count(*) counts them.
    assert [r[0] for r in conn.execute("SELECT rowid FROM ix")] == list(range(1, N_ROWS + 1))
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (N_ROWS,)
    # Without a rowid the next one is one more than the largest.
    cursor = conn.execute("INSERT INTO ix(embedding) VALUES (?)", (blob(vectors[0]),))
    assert cursor.lastrowid == N_ROWS + 1
    assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (N_ROWS + 1,)).fetchone()[0] == blob(vectors[0])


def test_vec0_json_text_vectors_are_accepted():
    """vec0's JSON array text works for INSERT and MATCH, and stores the same float32 values."""
    conn = connect()
    conn.execute("CREATE VIRTUAL TABLE ix USING audiotext_index(embedding float[384] distance_metric=cosine)")
    vectors = random_rows(3, 40)
    conn.executemany(
        "INSERT INTO ix(rowid, embedding) VALUES (?, ?)",
        [(i + 1, "[" + ", ".join(repr(float(x)) for x in v) + "]") for i, v in enumerate(vectors)],
    )
    ref = Reference()
    ref.add(range(1, 41), vectors)
    for rowid in (1, 40):
        assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (rowid,)).fetchone()[0] == blob(vectors[rowid - 1])
    query = random_rows(4, 1, scaled=False)[0]
    json_query = "[" + ",".join(repr(float(x)) for x in query) + "]"
    assert knn(conn, json_query) == knn(conn, query)
    assert_exact(conn, ref, query)


def test_order_by_distance_limit_needs_sqlite_3_41():
    conn = connect()
    ref, vectors = filled(conn, n=300)
    q = blob(queries(5, vectors)[0])
    sql = "SELECT rowid, distance FROM ix WHERE embedding MATCH ? ORDER BY distance LIMIT 10"
    if sqlite3.sqlite_version_info >= (3, 41, 0):
        assert conn.execute(sql, (q,)).fetchall() == knn(conn, q)
    else:
        # SQLite 3.40 does not hand LIMIT to the virtual table: the error says to write k = 10.
        expect_error(conn, sql, (q,), "ix: a MATCH query needs how many rows to return", "AND k = 10")


@pytest.mark.parametrize("join", ["qs JOIN ix ON", "qs, ix WHERE"])
def test_match_on_a_column_of_another_table(join):
    """vec0's join form: every row of qs gets its own k nearest rows of ix. SQLite must not pick
    a plan that scans ix without the MATCH (which would silently return nothing)."""
    conn = connect()
    ref, vectors = filled(conn, n=1100)
    conn.execute("CREATE TABLE qs(id INTEGER PRIMARY KEY, v BLOB)")
    qs = {i: vectors[i * 200 + 7] for i in range(1, 6)}  # rows in the chunk and pending
    conn.executemany("INSERT INTO qs VALUES (?, ?)", [(i, blob(q)) for i, q in qs.items()])
    rows = conn.execute(
        f"SELECT qs.id, ix.rowid, ix.distance FROM {join} ix.embedding MATCH qs.v AND ix.k = 3 ORDER BY qs.id, ix.distance"
    ).fetchall()
    expected = [(i, rowid) for i, q in qs.items() for rowid, _ in knn(conn, q, 3)]
    assert [(r[0], r[1]) for r in rows] == expected
    assert [r[1] for r in rows[::3]] == [i * 200 + 8 for i in qs]
    # The same through a correlated subquery.
    nearest = conn.execute("SELECT id, (SELECT rowid FROM ix WHERE embedding MATCH qs.v AND k = 1) FROM qs ORDER BY id").fetchall()
    assert nearest == [(i, i * 200 + 8) for i in qs]


class Allowed(Reference):
    """The reference restricted to the rows a filter allows."""

    def __init__(self, ref, keep):
        super().__init__()
        self.rows = {r: v for r, v in ref.rows.items() if keep(r)}


@pytest.mark.parametrize("options", [INT8, BINARY_EXACT], ids=["int8", "binary"])
def test_rowid_conditions_filter_the_search_itself(options):
    """`rowid IN (...)`, `=`, ranges and `!=` beside a MATCH pick the k nearest of the rows they
    allow, over chunked and pending rows: k rows come back whenever k rows pass (issue 22: they
    used to be applied after the k nearest were chosen, and returned fewer rows or none)."""
    conn = connect()
    ref, vectors = filled(conn, options)
    conn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, folder TEXT)")
    conn.executemany("INSERT INTO clips VALUES (?, ?)", [(i, "foley" if i % 50 == 3 else "music") for i in range(1, N_ROWS + 1)])
    q = queries(7, vectors)[0]

    by_rowid = {r: (r,) for r in ref.rows}  # check_filtered's keep sees the rowid

    def check(where, keep, params=(), k=10):
        return check_filtered(conn, ref, by_rowid, q, where, keep, params, k)

    # 50 rows of 2,500, spread over both chunks and the pending rows: none among the 10 nearest.
    foley = lambda r: r % 50 == 3
    assert not any(foley(r) for r, _ in knn(conn, q))
    assert len(check("rowid IN (SELECT id FROM clips WHERE folder = 'foley')", foley)) == 10
    assert len(check("rowid IN (SELECT id FROM clips WHERE folder = 'foley')", foley, k=60)) == 50
    listed = {5, 1024, 1025, 2048, 2049, N_ROWS}
    check(f"rowid IN ({', '.join(map(str, sorted(listed | {N_ROWS + 7})))})", lambda r: r in listed)
    check("rowid IN (SELECT value FROM json_each(?))", lambda r: r in {5, 1024, 2049}, ("[5, 1024, 2049, 99999, null]",))
    check("rowid = ?", lambda r: r == 2049, (2049,))
    check("rowid IN (?)", lambda r: r == 17, (17,))
    check("rowid BETWEEN 1000 AND 1100", lambda r: 1000 <= r <= 1100)
    check("rowid > 2040 AND rowid != 2049", lambda r: r > 2040 and r != 2049, k=40)
    check("rowid < 2.5", lambda r: r < 2.5)
    check("rowid IN (SELECT id FROM clips WHERE folder = 'foley') AND rowid > 2000", lambda r: foley(r) and r > 2000)
    assert check("rowid IN (SELECT id FROM clips WHERE 0)", lambda r: False) == []
    assert check("rowid = NULL", lambda r: False) == []
    # A join still means "the k nearest, then their rows of the other table".
    joined = conn.execute("SELECT c.id FROM ix JOIN clips c ON c.id = ix.rowid WHERE ix.embedding MATCH ? AND k = 10 ORDER BY distance", (blob(q),)).fetchall()
    assert [r[0] for r in joined] == [r for r, _ in knn(conn, q)]


# --- 1b. metadata columns: filters inside the search ------------------------------------------

META = "embedding float[384], library text, duration float, looped boolean, takes integer, +path text"
LIBRARIES = ["foley", "music", "field", "ambience", None]


def metadata_rows(n, seed=11):
    """Per row (library, duration, looped, takes, path), with NULLs in every filterable column."""
    rng = np.random.default_rng(seed)
    rows = {}
    for rowid in range(1, n + 1):
        rows[rowid] = (
            LIBRARIES[rowid % 5] if rowid % 13 else None,
            None if rowid % 17 == 0 else float(np.round(rng.uniform(0.1, 30.0), 3)),
            None if rowid % 19 == 0 else rowid % 2,
            None if rowid % 23 == 0 else int(rowid % 7),
            f"sounds/{rowid}.wav",
        )
    return rows


def filled_with_metadata(conn, options=META, n=N_ROWS, seed=0):
    conn.execute(f"CREATE VIRTUAL TABLE ix USING audiotext_index({options})")
    vectors = random_rows(seed, n)
    meta = metadata_rows(n)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO ix(rowid, embedding, library, duration, looped, takes, path) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(r, blob(vectors[r - 1]), *meta[r]) for r in range(1, n + 1)],
    )
    conn.execute("COMMIT")
    ref = Reference()
    ref.add(range(1, n + 1), vectors)
    return ref, vectors, meta


def check_filtered(conn, ref, meta, query, where, keep, params=(), k=10):
    """The k nearest of the rows `keep` accepts, exactly, in order, with their distances."""
    got = conn.execute(
        f"SELECT rowid, distance FROM ix WHERE embedding MATCH ? AND k = ? AND {where}", (blob(query), k, *params)
    ).fetchall()
    allowed = Allowed(ref, lambda r: keep(*meta[r]))
    if not allowed.rows:
        assert got == [], where
        return got
    want_ids, want_d = allowed.top(query, k)
    assert [r[0] for r in got] == want_ids.tolist(), where
    np.testing.assert_allclose([r[1] for r in got], want_d[: len(got)], atol=TOL)
    return got


def lt(x, bound):
    return x is not None and x < bound


@pytest.mark.parametrize("options", [META, META + ", quantizer=binary, rescore=3000"], ids=["int8", "binary"])
def test_metadata_filters_equal_numpy_for_every_operator_and_type(options):
    conn = connect()
    ref, vectors, meta = filled_with_metadata(conn, options)
    assert counts(conn) == (2, N_ROWS - 2 * CHUNK)
    q = queries(3, vectors)[0]
    cases = [
        ("library = 'foley'", lambda lib, d, lo, t, p: lib == "foley"),
        ("library != 'foley'", lambda lib, d, lo, t, p: lib is not None and lib != "foley"),
        ("library IN ('music', 'field')", lambda lib, d, lo, t, p: lib in ("music", "field")),
        ("library > 'f'", lambda lib, d, lo, t, p: lib is not None and lib > "f"),
        ("library IS NULL", lambda lib, d, lo, t, p: lib is None),
        ("library IS NOT NULL", lambda lib, d, lo, t, p: lib is not None),
        ("duration < 5", lambda lib, d, lo, t, p: lt(d, 5)),
        ("duration <= 5.5 AND duration >= 2", lambda lib, d, lo, t, p: d is not None and 2 <= d <= 5.5),
        ("duration BETWEEN 29 AND 30", lambda lib, d, lo, t, p: d is not None and 29 <= d <= 30),
        ("duration > 29.5", lambda lib, d, lo, t, p: d is not None and d > 29.5),
        ("duration IS NULL", lambda lib, d, lo, t, p: d is None),
        ("looped = 1", lambda lib, d, lo, t, p: lo == 1),
        ("looped = FALSE", lambda lib, d, lo, t, p: lo == 0),
        ("takes IN (2, 3) AND looped = 0", lambda lib, d, lo, t, p: t in (2, 3) and lo == 0),
        ("takes != 4 AND library = 'ambience' AND duration < 10", lambda lib, d, lo, t, p: t is not None and t != 4 and lib == "ambience" and lt(d, 10)),
        ("takes = '3'", lambda lib, d, lo, t, p: t == 3),
        ("library = 'nothing'", lambda lib, d, lo, t, p: False),
        ("duration = NULL", lambda lib, d, lo, t, p: False),
        ("library = 'field' AND rowid IN (SELECT value FROM json_each('[5, 10, 15, 20, 2005, 2500]'))",
         lambda lib, d, lo, t, p: lib == "field"),
    ]
    for where, keep in cases:
        if "json_each" in where:
            listed = {5, 10, 15, 20, 2005, 2500}
            rowid_keep = {r for r in listed}
            got = conn.execute(f"SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 10 AND {where}", (blob(q),)).fetchall()
            assert sorted(r[0] for r in got) == sorted(r for r in rowid_keep if meta[r][0] == "field")
            continue
        check_filtered(conn, ref, meta, q, where, keep)
    # A bound parameter, and k rows whenever k pass, however far they are.
    check_filtered(conn, ref, meta, q, "library = ? AND duration < ?", lambda lib, d, lo, t, p: lib == "music" and lt(d, 3), ("music", 3.0), k=40)
    # The columns read back as inserted, from a KNN and from a plain scan.
    row = conn.execute("SELECT rowid, library, duration, looped, takes, path FROM ix WHERE embedding MATCH ? AND k = 1 AND library = 'foley'", (blob(q),)).fetchone()
    assert row[1:] == meta[row[0]]
    assert conn.execute("SELECT library, duration, looped, takes, path FROM ix WHERE rowid = 2049").fetchone() == meta[2049]
    assert conn.execute("SELECT count(*) FROM ix WHERE library = 'foley'").fetchone()[0] == sum(m[0] == "foley" for m in meta.values())


def test_partition_keys_chunk_by_partition():
    """Rows of one partition fill chunks of their own, so a filter on the key skips whole chunks,
    however the inserts interleave; the results stay exact."""
    conn = connect()
    conn.execute("CREATE VIRTUAL TABLE ix USING audiotext_index(embedding float[384], library text partition key, duration float)")
    vectors = random_rows(5, 3300)
    meta = {r: (["foley", "music", "field"][r % 3], float(r % 30), None, None, None) for r in range(1, 3301)}
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ix(rowid, embedding, library, duration) VALUES (?, ?, ?, ?)",
                     [(r, blob(vectors[r - 1]), meta[r][0], meta[r][1]) for r in range(1, 3301)])
    conn.execute("COMMIT")
    per_chunk = conn.execute(
        "SELECT chunk_id, count(DISTINCT m.library) FROM ix_rowids r JOIN ix_metadata m USING (rowid) GROUP BY chunk_id"
    ).fetchall()
    assert len(per_chunk) == 3 and all(n == 1 for _, n in per_chunk), per_chunk
    assert counts(conn) == (3, 3300 - 3 * CHUNK)
    ref = Reference()
    ref.add(range(1, 3301), vectors)
    q = queries(6, vectors)[0]
    for where, keep in [
        ("library = 'music'", lambda lib, d, *_: lib == "music"),
        ("library IN ('foley', 'field') AND duration < 4", lambda lib, d, *_: lib in ("foley", "field") and d < 4),
        ("library != 'field'", lambda lib, d, *_: lib != "field"),
    ]:
        check_filtered(conn, ref, meta, q, where, keep)


def test_metadata_updates_rollback_and_a_second_connection(tmp_path):
    path = tmp_path / "meta.db"
    conn = connect(path)
    ref, vectors, meta = filled_with_metadata(conn, n=1500)
    q = vectors[700]
    assert knn(conn, q, 1)[0][0] == 701
    # An UPDATE of one metadata column keeps the vector and the other values.
    conn.execute("UPDATE ix SET library = 'moved' WHERE rowid = 701")
    assert conn.execute("SELECT library, duration, path FROM ix WHERE rowid = 701").fetchone() == ("moved",) + (meta[701][1], meta[701][4])
    hit = conn.execute("SELECT rowid, distance FROM ix WHERE embedding MATCH ? AND k = 1 AND library = 'moved'", (blob(q),)).fetchone()
    assert hit[0] == 701 and abs(hit[1]) < TOL
    # A rolled-back change is gone from the filter too.
    conn.execute("BEGIN")
    conn.execute("UPDATE ix SET library = 'gone' WHERE rowid = 702")
    assert conn.execute("SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 5 AND library = 'gone'", (blob(q),)).fetchall() == [(702,)]
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 5 AND library = 'gone'", (blob(q),)).fetchall() == []
    # Another connection sees committed metadata, and its own writes are seen here.
    other = connect(path)
    assert other.execute("SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 5 AND library = 'moved'", (blob(q),)).fetchall() == [(701,)]
    other.execute("UPDATE ix SET duration = 99.5 WHERE rowid = 100")
    assert conn.execute("SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 5 AND duration > 99", (blob(q),)).fetchall() == [(100,)]
    # Deleted rows leave the filter.
    conn.execute("DELETE FROM ix WHERE rowid = 701")
    assert conn.execute("SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 5 AND library = 'moved'", (blob(q),)).fetchall() == []


def test_metadata_errors_say_how_to_write_the_query():
    conn = connect()
    filled_with_metadata(conn, n=50)
    q = blob(random_rows(9, 1)[0])
    expect_error(conn, "INSERT INTO ix(rowid, embedding, library) VALUES (900, ?, 5)", (q,), "column library is declared text, got INTEGER")
    expect_error(conn, "INSERT INTO ix(rowid, embedding, looped) VALUES (900, ?, 2)", (q,), "boolean", "1 or 0")
    expect_error(conn, "INSERT INTO ix(rowid, embedding, takes) VALUES (900, ?, 2.5)", (q,), "declared integer, got REAL")
    expect_error(conn, "UPDATE ix SET duration = 'long' WHERE rowid = 3", (), "declared float, got TEXT")
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (50,)
    expect_error(conn, "SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 3 AND path = 'sounds/1.wav'", (q,),
                 "+path is an auxiliary column", "rowid IN (SELECT rowid FROM ix WHERE")
    expect_error(conn, "SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 3 AND library LIKE 'fo%'", (q,),
                 "only with =, !=, <, <=, >, >=, BETWEEN, IN (...) and IS [NOT] NULL", "(LIKE)", "Filter first")
    # The way the messages point to works: filter first, then search.
    rows = conn.execute("SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 3 AND rowid IN (SELECT rowid FROM ix WHERE library LIKE 'fo%')", (q,)).fetchall()
    assert len(rows) == 3 and all(conn.execute("SELECT library FROM ix WHERE rowid = ?", r).fetchone()[0] == "foley" for r in rows)


# --- 2. transactions --------------------------------------------------------------------------

def test_rollback_hides_rows_inserted_in_the_transaction():
    conn = connect()
    ref, vectors = filled(conn)
    q = queries(6, vectors)[0]
    before = assert_exact(conn, ref, q)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO ix(rowid, embedding) VALUES (9001, ?)", (blob(q * 3),))
    top = knn(conn, q)
    assert top[0][0] == 9001 and abs(top[0][1]) < TOL
    conn.execute("ROLLBACK")
    assert 9001 not in [r[0] for r in knn(conn, q)]
    assert assert_exact(conn, ref, q) == before
    assert conn.execute("SELECT count(*) FROM ix WHERE rowid = 9001").fetchone() == (0,)
    # A delete rolled back: the row (in a chunk) is found again.
    nearest = before[0]
    conn.execute("BEGIN")
    conn.execute("DELETE FROM ix WHERE rowid = ?", (nearest,))
    assert nearest not in [r[0] for r in knn(conn, q)]
    conn.execute("ROLLBACK")
    assert assert_exact(conn, ref, q) == before


def test_rollback_across_a_fold_into_a_chunk():
    conn = connect()
    ref, vectors = filled(conn)
    q = queries(7, vectors)[0]
    before = assert_exact(conn, ref, q)
    extra = random_rows(8, 1100)
    extra[0] = q * 0.5  # the nearest of all, folded into the new chunk
    extra[1099] = q * 2.0  # the nearest too, left pending
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ix(rowid, embedding) VALUES (?, ?)", [(10_000 + i, blob(v)) for i, v in enumerate(extra)])
    assert counts(conn) == (3, N_ROWS + 1100 - 3 * CHUNK)
    inside = Reference()
    inside.rows = dict(ref.rows)
    inside.add(range(10_000, 11_100), extra)
    assert sorted(r[0] for r in knn(conn, q, 2)) == [10_000, 11_099]
    assert_exact(conn, inside, q, k=50)
    conn.execute("ROLLBACK")
    assert counts(conn) == (2, N_ROWS - 2 * CHUNK)
    after = knn(conn, q, 50)
    assert not {r[0] for r in after} & set(range(10_000, 11_100))
    assert assert_exact(conn, ref, q) == before
    # Other rows folded into a chunk that takes the same chunk id: the memory copy is renewed.
    other = random_rows(9, 1100)
    other[5] = q
    insert(conn, range(20_000, 21_100), other)
    ref.add(range(20_000, 21_100), other)
    assert knn(conn, q, 1)[0][0] == 20_005
    assert_exact(conn, ref, q, k=50)
    assert not {r[0] for r in knn(conn, q, 4096)} & set(range(10_000, 11_100))


def test_savepoint_rollback_to():
    conn = connect()
    ref, vectors = filled(conn, n=1100)
    q = queries(10, vectors)[0]
    conn.execute("BEGIN")
    conn.execute("INSERT INTO ix(rowid, embedding) VALUES (5001, ?)", (blob(q),))
    conn.execute("SAVEPOINT s")
    conn.execute("INSERT INTO ix(rowid, embedding) VALUES (5002, ?)", (blob(q * 2),))
    conn.execute("DELETE FROM ix WHERE rowid = 1")
    assert sorted(r[0] for r in knn(conn, q, 2)) == [5001, 5002]
    conn.execute("ROLLBACK TO s")
    top = knn(conn, q, 2)
    assert top[0][0] == 5001 and top[1][0] != 5002
    conn.execute("RELEASE s")
    conn.execute("COMMIT")
    ref.add([5001], [q])
    assert_exact(conn, ref, q)
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (1101,)
    assert conn.execute("SELECT embedding FROM ix WHERE rowid = 1").fetchone()[0] == blob(vectors[0])


@pytest.mark.parametrize("explicit", [False, True], ids=["autocommit", "in-transaction"])
def test_a_failing_multi_row_statement_leaves_none_of_its_rows(explicit):
    conn = connect()
    ref, vectors = filled(conn, n=1000)
    q = queries(11, vectors)[0]
    conn.execute("CREATE TABLE src(id INTEGER PRIMARY KEY, v BLOB)")
    source = random_rows(12, 60)
    source[0] = q
    rows = [(3000 + i, blob(v)) for i, v in enumerate(source)]
    rows.append((3100, blob(source[0][:383])))  # the last row is one dimension short
    conn.executemany("INSERT INTO src VALUES (?, ?)", rows)
    if explicit:
        conn.execute("BEGIN")
    # 1060 rows would fold a chunk before the bad one.
    expect_error(conn, "INSERT INTO ix(rowid, embedding) SELECT id, v FROM src ORDER BY id", (), "ix: the embedding value has 383 dimensions, while ix holds float[384]")
    assert conn.execute("SELECT count(*) FROM ix WHERE rowid >= 3000").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (1000,)
    assert counts(conn) == (0, 1000)
    assert_exact(conn, ref, q)
    if explicit:
        conn.execute("COMMIT")
    assert_exact(conn, ref, q)


# --- 3. delete and update ---------------------------------------------------------------------

@pytest.mark.parametrize("options", [INT8, BINARY_EXACT], ids=["int8", "binary"])
def test_deleted_rows_are_never_returned(options):
    conn = connect()
    ref, vectors = filled(conn, options)
    for rowid in (100, 1500, 2400):  # chunk 1, chunk 2, pending
        q = vectors[rowid - 1]
        assert knn(conn, q, 1)[0][0] == rowid
        conn.execute("DELETE FROM ix WHERE rowid = ?", (rowid,))
        ref.remove([rowid])
        assert rowid not in [r[0] for r in knn(conn, q, 4096)]
        assert_exact(conn, ref, q)
        assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (rowid,)).fetchall() == []
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (N_ROWS - 3,)
    # Deleting a rowid that is not there changes nothing.
    assert conn.execute("DELETE FROM ix WHERE rowid = 999999").rowcount == 0
    # Every row of chunk 1 deleted: the chunk and its codes and vectors go.
    chunk_rows = conn.execute("SELECT count(*) FROM ix_vectors").fetchone()[0]
    conn.execute("DELETE FROM ix WHERE rowid <= 1024")
    ref.remove([r for r in range(1, 1025) if r != 100])
    assert counts(conn) == (1, N_ROWS - 2 * CHUNK - 1)  # 2400 was pending
    assert conn.execute("SELECT count(*) FROM ix_codes").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM ix_vectors").fetchone()[0] == chunk_rows // 2
    assert conn.execute("SELECT min(rowid) FROM ix_rowids").fetchone() == (1025,)
    for q in queries(13, vectors):
        assert_exact(conn, ref, q)
    assert not {r[0] for r in knn(conn, vectors[0], 4096)} & set(range(1, 1025))
    assert [r[0] for r in conn.execute("SELECT rowid FROM ix")] == sorted(ref.rows)


def test_update_of_the_vector_and_of_the_rowid():
    conn = connect()
    ref, vectors = filled(conn)
    q = queries(14, vectors)[0]
    for rowid in (50, 2450):  # chunked, pending
        old = vectors[rowid - 1]
        conn.execute("UPDATE ix SET embedding = ? WHERE rowid = ?", (blob(q * (rowid / 100)), rowid))
        ref.rows[rowid] = q * (rowid / 100)
        assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (rowid,)).fetchone()[0] == blob(q * (rowid / 100))
        assert knn(conn, old, 1)[0][0] != rowid
    top = assert_exact(conn, ref, q)
    assert sorted(top[:2]) == [50, 2450]
    # A new rowid keeps the vector; the old rowid is gone.
    conn.execute("UPDATE ix SET rowid = 7777 WHERE rowid = 50")
    ref.rows[7777] = ref.rows.pop(50)
    conn.execute("UPDATE ix SET rowid = 8888 WHERE rowid = 1300")
    ref.rows[8888] = ref.rows.pop(1300)
    assert conn.execute("SELECT embedding FROM ix WHERE rowid = 8888").fetchone()[0] == blob(vectors[1299])
    assert conn.execute("SELECT count(*) FROM ix WHERE rowid IN (50, 1300)").fetchone() == (0,)
    assert sorted(assert_exact(conn, ref, q)[:2]) == [2450, 7777]
    assert knn(conn, vectors[1299], 1)[0][0] == 8888
    assert [r[0] for r in conn.execute("SELECT rowid FROM ix")] == sorted(ref.rows)


# --- 4. several connections and processes -----------------------------------------------------

def open_file(path, mode):
    conn = connect(path)
    assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    return conn


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_other_connections_writes_are_seen(tmp_path, mode):
    path = tmp_path / "shared.db"
    a = open_file(path, mode)
    ref, vectors = filled(a)
    b = open_file(path, mode)
    q = queries(15, vectors)[-2]  # nearest: row 17, in chunk 1
    before = assert_exact(a, ref, q)  # A's memory copy is warm
    b.execute("INSERT INTO ix(rowid, embedding) VALUES (5000, ?)", (blob(q),))
    top = knn(a, q, 1)
    assert top[0][0] == 5000 and abs(top[0][1]) < TOL
    b.execute("DELETE FROM ix WHERE rowid = 5000")
    assert assert_exact(a, ref, q) == before
    # B deletes A's nearest (a chunked row): A no longer returns it.
    assert before[0] == 17
    b.execute("DELETE FROM ix WHERE rowid = ?", (before[0],))
    ref.remove([before[0]])
    assert before[0] not in [r[0] for r in knn(a, q, 4096)]
    assert_exact(a, ref, q)
    # B's transaction folds a chunk: A sees all of it.
    extra = random_rows(16, 700)
    extra[3] = q
    insert(b, range(30_000, 30_700), extra)
    ref.add(range(30_000, 30_700), extra)
    assert counts(a) == (3, N_ROWS + 700 - 3 * CHUNK)
    assert knn(a, q, 1)[0][0] == 30_003
    for query in queries(17, vectors):
        assert_exact(a, ref, query)
    # And the other way round.
    a.execute("DELETE FROM ix WHERE rowid = 30003")
    ref.remove([30_003])
    assert_exact(b, ref, q)
    a.close()
    b.close()


SUBPROCESS = """
import sqlite3, sys
import numpy as np
db, extension, vectors, first = sys.argv[1:5]
conn = sqlite3.connect(db)
conn.enable_load_extension(True)
conn.load_extension(extension)
rows = np.load(vectors)
conn.executemany("INSERT INTO ix(rowid, embedding) VALUES (?, ?)",
                 [(int(first) + i, v.astype("<f4").tobytes()) for i, v in enumerate(rows)])
conn.commit()
print("committed", len(rows), flush=True)
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_another_process_writes_are_seen(tmp_path, mode):
    path = tmp_path / "shared.db"
    a = open_file(path, mode)
    ref, vectors = filled(a)
    q = queries(18, vectors)[0]
    assert_exact(a, ref, q)  # warm
    extra = random_rows(19, 1100)
    extra[1050] = q * 4
    np.save(tmp_path / "rows.npy", extra)
    done = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, str(path), str(EXTENSION), str(tmp_path / "rows.npy"), "40000"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "committed 1100" in done.stdout
    ref.add(range(40_000, 41_100), extra)
    top = knn(a, q, 1)
    assert top[0][0] == 41_050 and abs(top[0][1]) < TOL
    for query in queries(20, vectors):
        assert_exact(a, ref, query)
    assert a.execute("SELECT count(*) FROM ix").fetchone() == (N_ROWS + 1100,)
    a.close()


# --- 5. VACUUM and reopening ------------------------------------------------------------------

def test_vacuum_and_reopen_keep_the_results(tmp_path):
    path = tmp_path / "v.db"
    conn = connect(path)
    ref, vectors = filled(conn)
    conn.execute("DELETE FROM ix WHERE rowid % 7 = 0")  # holes in both chunks and pending
    ref.remove([r for r in range(1, N_ROWS + 1) if r % 7 == 0])
    qs = queries(21, vectors)
    before = [knn(conn, q) for q in qs]
    for q in qs:
        assert_exact(conn, ref, q)
    conn.execute("VACUUM")
    assert [knn(conn, q) for q in qs] == before
    conn.close()
    conn = connect(path)
    assert [knn(conn, q) for q in qs] == before
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (len(ref.rows),)
    assert conn.execute("SELECT embedding FROM ix WHERE rowid = 1500").fetchone()[0] == blob(vectors[1499])
    assert conn.execute("SELECT embedding FROM ix WHERE rowid = 2498").fetchone()[0] == blob(vectors[2497])
    # Still writable after reopening.
    conn.execute("INSERT INTO ix(rowid, embedding) VALUES (7, ?)", (blob(qs[0]),))
    ref.add([7], [qs[0]])
    assert knn(conn, qs[0], 1)[0][0] == 7
    assert_exact(conn, ref, qs[1])
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


# --- 6. DROP TABLE and ATTACH -----------------------------------------------------------------

def shadow_tables(conn, schema="main", prefix="ix"):
    return sorted(
        r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE name LIKE ? ESCAPE '\\'", (prefix.replace("_", "\\_") + "\\_%",))
    )


def test_drop_table_removes_every_shadow_table():
    conn = connect()
    filled(conn, n=1100)
    assert shadow_tables(conn) == sorted(f"ix_{s}" for s in SHADOWS)
    conn.execute("DROP TABLE ix")
    assert shadow_tables(conn) == []
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    # The name can be used again, for an empty index.
    conn.execute("CREATE VIRTUAL TABLE ix USING audiotext_index(embedding float[8])")
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (0,)
    assert knn(conn, np.ones(8)) == []


def test_index_in_an_attached_database(tmp_path):
    conn = connect(tmp_path / "main.db")
    conn.execute("ATTACH ? AS aux", (str(tmp_path / "aux.db"),))
    main_ref, main_vectors = filled(conn, n=1100, seed=30)
    conn.execute("CREATE VIRTUAL TABLE aux.ix USING audiotext_index(embedding float[384], quantizer=binary, rescore=2000)")
    aux_vectors = random_rows(31, 1500)
    insert(conn, range(1, 1501), aux_vectors, table="aux.ix")
    aux_ref = Reference()
    aux_ref.add(range(1, 1501), aux_vectors)
    assert shadow_tables(conn, "aux") == sorted(f"ix_{s}" for s in SHADOWS)
    assert counts(conn, "aux.ix") == (1, 1500 - CHUNK)
    for q in queries(32, aux_vectors):
        assert_exact(conn, aux_ref, q, table="aux.ix")
        assert_exact(conn, main_ref, q, table="main.ix")
    assert conn.execute("SELECT embedding FROM aux.ix WHERE rowid = 3").fetchone()[0] == blob(aux_vectors[2])
    assert conn.execute("SELECT embedding FROM main.ix WHERE rowid = 3").fetchone()[0] == blob(main_vectors[2])
    conn.execute("DELETE FROM aux.ix WHERE rowid = 3")
    aux_ref.remove([3])
    assert knn(conn, aux_vectors[2], 1, "aux.ix")[0][0] != 3
    assert knn(conn, main_vectors[2], 1, "main.ix")[0][0] == 3
    conn.execute("DROP TABLE aux.ix")
    assert shadow_tables(conn, "aux") == []
    assert shadow_tables(conn, "main") == sorted(f"ix_{s}" for s in SHADOWS)
    assert_exact(conn, main_ref, main_vectors[5])
    conn.close()


def test_a_table_name_that_needs_quoting():
    conn = connect()
    conn.execute('CREATE VIRTUAL TABLE "my ""odd"" ix" USING audiotext_index(embedding float[384])')
    vectors = random_rows(33, 1100)
    insert(conn, range(1, 1101), vectors, table='"my ""odd"" ix"')
    ref = Reference()
    ref.add(range(1, 1101), vectors)
    assert_exact(conn, ref, vectors[10], table='"my ""odd"" ix"')
    assert conn.execute('SELECT embedding FROM "my ""odd"" ix" WHERE rowid = 11').fetchone()[0] == blob(vectors[10])
    conn.execute('DROP TABLE "my ""odd"" ix"')
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


# --- 7. errors --------------------------------------------------------------------------------

@pytest.fixture
def small():
    """An int8 index of 1100 rows (one chunk and 76 pending rows) and its reference."""
    conn = connect()
    ref, vectors = filled(conn, n=1100, seed=40)
    yield conn, ref, vectors
    conn.close()


def bad_vectors():
    v = random_rows(41, 1)[0]
    nan, inf, ninf = v.copy(), v.copy(), v.copy()
    nan[5], inf[7], ninf[0] = np.nan, np.inf, -np.inf
    return [
        ("short", blob(v[:383]), "the embedding value has 383 dimensions, while ix holds float[384]"),
        ("long", blob(np.concatenate([v, v])), "the embedding value has 768 dimensions, while ix holds float[384]"),
        ("nan", blob(nan), "the embedding value holds NaN at element 5: vectors must be finite"),
        ("inf", blob(inf), "the embedding value holds inf at element 7: vectors must be finite"),
        ("-inf", blob(ninf), "the embedding value holds -inf at element 0: vectors must be finite"),
        ("zeros", blob(np.zeros(DIM)), "the embedding value is all zeros, so it has no cosine distance"),
        ("null", None, "the embedding value is NULL; every row of ix needs a vector"),
        ("odd-bytes", blob(v) + b"\x00", "the embedding value is a BLOB of 1537 bytes, which is not a float32 vector"),
        ("integer", 42, "the embedding value must be a float32 vector BLOB, got INTEGER"),
        ("text", "a dog", "the embedding value is TEXT that is not a JSON array of numbers"),
    ]


@pytest.mark.parametrize("value, needle", [b[1:] for b in bad_vectors()], ids=[b[0] for b in bad_vectors()])
def test_a_bad_vector_is_refused_and_changes_nothing(small, value, needle):
    conn, ref, vectors = small
    expect_error(conn, "INSERT INTO ix(rowid, embedding) VALUES (5000, ?)", (value,), f"ix: {needle}")
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (1100,)
    # An UPDATE to the same value is refused too and keeps the row (chunked and pending).
    for rowid in (10, 1090):
        expect_error(conn, "UPDATE ix SET embedding = ? WHERE rowid = ?", (value, rowid), "ix: ")
        assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (rowid,)).fetchone()[0] == blob(vectors[rowid - 1])
    assert_exact(conn, ref, vectors[10])
    assert counts(conn) == (1, 1100 - CHUNK)


def test_duplicate_rowid_and_insert_or_replace(small):
    conn, ref, vectors = small
    new = random_rows(42, 2)
    for i, rowid in enumerate((5, 1090)):  # chunked, pending
        expect_error(conn, "INSERT INTO ix(rowid, embedding) VALUES (?, ?)", (rowid, blob(new[i])),
                     f"ix: UNIQUE constraint failed: rowid {rowid} is already in ix; delete it first, or use INSERT OR REPLACE")
        assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (rowid,)).fetchone()[0] == blob(vectors[rowid - 1])
        conn.execute("INSERT OR REPLACE INTO ix(rowid, embedding) VALUES (?, ?)", (rowid, blob(new[i])))
        ref.rows[rowid] = new[i]
        assert conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (rowid,)).fetchone()[0] == blob(new[i])
        assert knn(conn, new[i], 1)[0][0] == rowid
        assert knn(conn, vectors[rowid - 1], 1)[0][0] != rowid
    assert conn.execute("SELECT count(*) FROM ix").fetchone() == (1100,)
    # An UPDATE onto a taken rowid fails and keeps both rows, in and out of a transaction.
    for explicit in (False, True):
        if explicit:
            conn.execute("BEGIN")
        expect_error(conn, "UPDATE ix SET rowid = 7 WHERE rowid = 6", (), "ix: UNIQUE constraint failed: rowid 7 is already in ix")
        assert conn.execute("SELECT rowid FROM ix WHERE rowid IN (6, 7) ORDER BY rowid").fetchall() == [(6,), (7,)]
        assert knn(conn, vectors[5], 1)[0][0] == 6
        if explicit:
            conn.execute("COMMIT")
    assert_exact(conn, ref, vectors[5])


def test_query_errors(small):
    conn, ref, vectors = small
    q = blob(vectors[3])
    sql = "SELECT rowid, distance FROM ix WHERE embedding MATCH ? AND k = ?"
    expect_error(conn, sql, (q, 0), "k = 0 is out of range: ask for 1 to 4096 nearest rows")
    expect_error(conn, sql, (q, 5000), "k = 5000 is out of range: ask for 1 to 4096 nearest rows")
    expect_error(conn, sql, (q, "ten"), "k must be an INTEGER from 1 to 4096, got TEXT")
    expect_error(conn, "SELECT rowid FROM ix WHERE embedding MATCH ?", (q,), "ix: a MATCH query needs how many rows to return: add `AND k = 10`")
    expect_error(conn, sql, (blob(np.zeros(DIM)), 3), "ix: the MATCH query is all zeros")
    expect_error(conn, sql, (blob(vectors[3][:100]), 3), "ix: the MATCH query has 100 dimensions, while ix holds float[384]")
    expect_error(conn, sql, (q[:-1], 3), "ix: the MATCH query is a BLOB of 1535 bytes, which is not a float32 vector")
    bad = vectors[3].copy()
    bad[9] = np.nan
    expect_error(conn, sql, (blob(bad), 3), "ix: the MATCH query holds NaN at element 9")
    expect_error(conn, sql, (12, 3), "ix: the MATCH query must be a float32 vector BLOB, got INTEGER")
    # MATCH NULL: no rows, no error.
    assert conn.execute(sql, (None, 3)).fetchall() == []
    # k = 4096 is allowed.
    assert len(knn(conn, q, 4096)) == 1100
    assert_exact(conn, ref, vectors[3])


@pytest.mark.parametrize(
    "arguments, needle",
    [
        ("embedding float[384], colour=red", "unknown option 'colour'; declare it as audiotext_index(embedding float[384])"),
        ("embedding float[0]", "column type 'float[0]' must be float[N] with N from 1 to 65536"),
        ("embedding int8[384]", "column type 'int8[384]' must be float[N]"),
        ("embedding float[384] distance_metric=l2", "distance_metric=l2 is not supported: audiotext_index ranks by cosine distance"),
        ("embedding float[384], quantizer=pq", "quantizer=pq is not known; use int8 (the default) or binary"),
        ("embedding float[384], rescore=0", "rescore=0 must be a whole number from 1 to 100000"),
        ("embedding float[384], rescore=100001", "rescore=100001 must be a whole number from 1 to 100000"),
        ("embedding float[384], quantizer=int8, quantizer=binary", "quantizer is given twice"),
        ("", "no vector column was declared"),
        ("distance float[384]", "column name 'distance' is taken by the index itself"),
        ("embedding float[384], library varchar", "column library has type 'varchar'; use integer, float, text or boolean"),
        ("embedding float[384], duration float partition key", "partition key duration must be integer or text"),
        ("embedding float[384], +path text partition key", "+path is auxiliary"),
        ("embedding float[384], k integer", "column name 'k' is taken by the index itself"),
        ("embedding float[384], a text, A float", "column A is declared twice"),
        ("embedding float[384], " + ", ".join(f"m{i} float" for i in range(17)), "17 metadata columns are declared; at most 16"),
    ],
    ids=["unknown-option", "float0", "int8-type", "l2", "pq", "rescore0", "rescore-too-big", "twice", "no-column", "reserved-name",
         "column-type", "float-partition", "aux-partition", "reserved-column", "column-twice", "too-many-columns"],
)
def test_bad_declarations_are_refused(arguments, needle):
    conn = connect()
    with pytest.raises(sqlite3.OperationalError) as error:
        conn.execute(f"CREATE VIRTUAL TABLE bad USING audiotext_index({arguments})")
    assert str(error.value).startswith("audiotext_index: bad: "), str(error.value)
    assert needle in str(error.value), str(error.value)
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    assert_sound(conn)


def test_good_declarations():
    conn = connect()
    for i, arguments in enumerate([
        "embedding float[384] distance_metric=cosine",
        "v F32[16], model='default', quantizer=BINARY, rescore=5",
        "embedding float[3], quantizer=int8, rescore=100000",
    ]):
        conn.execute(f"CREATE VIRTUAL TABLE t{i} USING audiotext_index({arguments})")
    conn.execute("INSERT INTO t1(rowid, v) VALUES (1, ?), (2, ?)", (blob(np.arange(1, 17)), blob(-np.arange(1, 17))))
    top = conn.execute("SELECT rowid, distance FROM t1 WHERE v MATCH ? AND k = 2", (blob(np.arange(1, 17)),)).fetchall()
    assert [r[0] for r in top] == [1, 2]
    np.testing.assert_allclose([r[1] for r in top], [0.0, 2.0], atol=TOL)
    assert conn.execute("SELECT v FROM t1 WHERE rowid = 2").fetchone()[0] == blob(-np.arange(1, 17))


def test_text_match_with_a_model_of_other_dimensions():
    default_text_model()
    conn = connect()
    conn.execute("CREATE VIRTUAL TABLE ix8 USING audiotext_index(embedding float[8])")
    conn.execute("INSERT INTO ix8(rowid, embedding) VALUES (1, ?)", (blob(np.ones(8)),))
    expect_error(conn, "SELECT rowid FROM ix8 WHERE embedding MATCH 'dog' AND k = 3", (),
                 "ix8: model 'default' embeds text in 384 dimensions while ix8 holds float[8]; name the model that made the vectors with model=")


def test_text_match_with_an_unknown_model():
    conn = connect()
    conn.execute("CREATE VIRTUAL TABLE ix USING audiotext_index(embedding float[384], model=nosuch)")
    conn.execute("INSERT INTO ix(rowid, embedding) VALUES (1, ?)", (blob(random_rows(43, 1)[0]),))
    expect_error(conn, "SELECT rowid FROM ix WHERE embedding MATCH 'dog' AND k = 3", (),
                 "ix: the MATCH query is text, to be embedded with model 'nosuch' (the index's model= option)", "no model named 'nosuch'")


DAMAGES = [
    ("UPDATE ix_codes SET codes = x'00'", '"main"."ix_codes" is damaged at 1 (its rowids or codes have the wrong size)'),
    ("UPDATE ix_codes SET rowids = x'00'", '"main"."ix_codes" is damaged at 1'),
    ("DELETE FROM ix_codes", '"main"."ix_codes" is damaged at 1'),
    ("UPDATE ix_info SET dimensions = 7", "its shadow tables hold 7-dimensional int8 codes while its declaration says float[384]"),
    ("UPDATE ix_info SET quantizer = 'binary'", "hold 384-dimensional binary codes while its declaration says float[384] with quantizer=int8"),
    ("UPDATE ix_info SET format = 2", "it was written in storage format 2"),
    ("DELETE FROM ix_info", 'its shadow table "main"."ix_info" is empty'),
    ("UPDATE ix_pending SET vector = x'0000'", '"main"."ix_pending" is damaged at 1025'),
    ("UPDATE ix_pending SET vector = zeroblob(1536)", "row 1025 has no finite distance to the query (a zero vector in the index)"),
    ("UPDATE ix_pending SET vector = CAST(zeroblob(1532) || x'0000c07f' AS BLOB)", '"main"."ix_pending" is damaged at 1025'),  # NaN
    ("UPDATE ix_pending SET vector = 'not a vector'", "reading its shadow tables: Invalid column type Text"),
    ("UPDATE ix_chunks SET live = x'01'", '"main"."ix_chunks" is damaged at 1 (its live flags have the wrong size)'),
    ("DELETE FROM ix_vectors", '"main"."ix_vectors" is damaged at'),
    ("UPDATE ix_vectors SET vectors = x'00'", '"main"."ix_vectors" is damaged at'),
]


@pytest.mark.parametrize("damage, needle", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_shadow_tables_say_rebuild(tmp_path, damage, needle):
    path = tmp_path / "d.db"
    conn = connect(path)
    filled(conn, n=1100, seed=44)
    conn.execute(damage)
    conn.close()
    conn = connect(path)  # a fresh memory copy, read from the damaged tables
    message = expect_error(conn, "SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 5", (blob(random_rows(45, 1)[0]),), needle)
    assert "rebuild" in message, message
    # The advice can be followed: DROP TABLE works on the damaged index, and it can be rebuilt.
    try:
        conn.execute("DROP TABLE ix")
    except sqlite3.OperationalError as error:
        pytest.fail(f"the error says to rebuild (DROP TABLE first), but DROP TABLE ix fails: {error}")
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    ref, vectors = filled(conn, n=50)
    assert_exact(conn, ref, vectors[0])
    conn.close()


@pytest.mark.parametrize("suffix", ["pending", "codes"])
def test_a_missing_shadow_table_says_rebuild(tmp_path, suffix):
    path = tmp_path / "d.db"
    conn = connect(path)
    filled(conn, n=1100, seed=46)
    conn.execute(f"DROP TABLE ix_{suffix}")
    conn.close()
    conn = connect(path)
    message = expect_error(conn, "SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 5", (blob(random_rows(47, 1)[0]),), f"ix_{suffix}")
    assert "rebuild" in message, message
    conn.close()


# --- 8. TEXT queries --------------------------------------------------------------------------

def test_text_query_equals_text_embed_query():
    default_text_model()
    conn = connect()
    ref, vectors = filled(conn)
    captions = ["a dog barks", "rain falls on a roof", "a jet plane takes off", "people talk in a cafe"]
    conn.executemany(
        "INSERT INTO ix(rowid, embedding) VALUES (?, text_embed(?))",
        [(10_000 + i, c) for i, c in enumerate(captions)],
    )
    by_text = knn(conn, "dog barking", 3)
    by_vector = conn.execute("SELECT rowid, distance FROM ix WHERE embedding MATCH text_embed('dog barking') AND k = 3").fetchall()
    assert [r[0] for r in by_text] == [r[0] for r in by_vector]
    np.testing.assert_allclose([r[1] for r in by_text], [r[1] for r in by_vector], atol=TOL)
    assert by_text[0][0] == 10_000
    assert knn(conn, "an airliner departs", 1)[0][0] == 10_002
    # Text is embedded with the index's model; the same query vector from Python gives the same rows.
    q = np.frombuffer(conn.execute("SELECT text_embed('dog barking')").fetchone()[0], dtype="<f4")
    ref.add(range(10_000, 10_004), [np.frombuffer(conn.execute("SELECT embedding FROM ix WHERE rowid = ?", (10_000 + i,)).fetchone()[0], "<f4") for i in range(4)])
    assert_exact(conn, ref, q)
    assert [r[0] for r in knn(conn, q, 3)] == [r[0] for r in by_text]


# --- 9. recall on real embeddings -------------------------------------------------------------

def test_recall_of_the_default_quantization_on_real_embeddings(shared_data, tmp_path):
    if not (DEFAULT_BUNDLE / "audio.onnx").exists() or not (DEFAULT_BUNDLE / "text.onnx").exists():
        pytest.skip(f"{DEFAULT_BUNDLE} lacks audio.onnx or text.onnx: run scripts/setup.sh first")
    dev = shared_data / "esc50-dev"
    clips = sorted((dev / "audio").glob("*.flac"))[:100]
    assert len(clips) == 100
    folder = tmp_path / "clips"
    folder.mkdir()
    for clip in clips:
        (folder / clip.name).symlink_to(clip)
    conn = connect()
    started = time.monotonic()
    rows = conn.execute("SELECT path, embedding, error FROM audio_embed_files(?)", (str(folder),)).fetchall()
    embed_seconds = time.monotonic() - started
    assert len(rows) == 100 and all(r[2] is None for r in rows), [r for r in rows if r[2]]
    base = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float64)
    # 20,000 vectors: copies of the clips plus Gaussian noise, renormalised.
    rng = np.random.default_rng(2024)
    data = np.repeat(base, 200, axis=0) + rng.normal(0.0, 0.02, (20_000, DIM))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    data = data.astype("<f4")
    rng.shuffle(data)
    conn.execute(f"CREATE VIRTUAL TABLE ix USING audiotext_index({INT8})")
    insert(conn, range(1, 20_001), data)
    assert counts(conn) == (19, 20_000 - 19 * CHUNK)
    # 20 distinct captions of esc50-dev.
    with open(dev / "captions.csv", newline="") as f:
        captions = []
        for i, row in enumerate(csv.DictReader(f)):
            caption = row[f"caption_{1 + i % 5}"]
            if caption not in captions:
                captions.append(caption)
    captions = captions[:20]
    assert len(captions) == 20
    matrix = data.astype(np.float64)
    hits = 0
    for caption in captions:
        q = conn.execute("SELECT text_embed(?)", (caption,)).fetchone()[0]
        got = [r[0] for r in knn(conn, q, 10)]
        d = 1.0 - matrix @ np.frombuffer(q, dtype="<f4").astype(np.float64)
        want = set((np.argsort(d, kind="stable")[:10] + 1).tolist())
        hits += len(want & set(got))
    recall = hits / (10 * len(captions))
    print(f"recall@10 of int8 (default rescore) on 20,000 noisy copies of 100 esc50-dev clip embeddings, "
          f"20 caption queries: {recall:.4f} (embedding the clips took {embed_seconds:.1f} s)")
    assert recall >= 0.99
