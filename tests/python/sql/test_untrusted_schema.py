"""A database file made by someone else cannot make the extension read files.

Each case builds a database whose schema calls a file reader (as an attacker would, with
`PRAGMA writable_schema` where SQLite refuses to create it directly), closes it, and opens it
again in a fresh connection the way a victim would (extension loaded, `trusted_schema=OFF`),
then does something ordinary. The file reader must not run: SQLite's own "unsafe use" at
prepare time (DIRECTONLY, where this SQLite applies it) or our refusal naming the schema object.
The paths are FIFOs with no writer: a reader that opened one would hang the test, not pass it.
"""

import os
import sqlite3

import pytest

from conftest import open_connection

REFUSED = r"(unsafe use of (audio_info|audio_embed|audiotext_runtime|virtual table)|refused: the (table|index|view|trigger) '\w+' of database '\w+' calls (audio_info|audio_embed|audiotext_runtime|audio_embed_files)\(\) in its schema)"


def craft(path, kind, name, table, sql):
    """Makes a schema object that SQLite would refuse with the real extension loaded (it is not
    deterministic): tables and indexes are created while look-alike deterministic functions of
    the same names are registered; views and triggers are written into sqlite_schema directly."""
    conn = sqlite3.connect(path)
    for function in ("audio_info", "audio_embed", "audiotext_runtime"):
        conn.create_function(function, 1, lambda x: 1, deterministic=True)
    conn.execute("CREATE TABLE IF NOT EXISTS victim_data(x)")
    if kind in ("table", "index"):
        conn.execute(sql)
    else:
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute(
            "INSERT INTO sqlite_schema(type, name, tbl_name, rootpage, sql) VALUES (?, ?, ?, 0, ?)",
            (kind, name, table, sql),
        )
    conn.commit()
    conn.close()


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "secret.wav"
    os.mkfifo(path)
    return str(path)


def victim(path):
    conn = open_connection(str(path))
    conn.execute("PRAGMA trusted_schema=OFF")
    return conn


def made_with_sql(tmp_path, sql):
    """A database made by plain SQL with the extension loaded (SQLite accepts these)."""
    path = tmp_path / "made.db"
    conn = open_connection(str(path))
    conn.executescript(sql)
    conn.close()
    return path


def test_check_constraint(tmp_path, fifo):
    # The reported case: SQLite 3.40 runs a DIRECTONLY function from a CHECK constraint.
    path = made_with_sql(tmp_path, "CREATE TABLE t(x TEXT CHECK (audio_info(x) IS NOT NULL));")
    conn = victim(path)
    with pytest.raises(sqlite3.Error, match=REFUSED):
        conn.execute("INSERT INTO t VALUES (?)", (fifo,))
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_check_constraint_disguised(tmp_path, fifo):
    path = made_with_sql(tmp_path, 'CREATE TABLE t(x TEXT CHECK ("AUDIO_EMBED" /* hi */ (x) IS NOT NULL));')
    with pytest.raises(sqlite3.Error, match=REFUSED):
        victim(path).execute("INSERT INTO t VALUES (?)", (fifo,))


def test_check_constraint_in_an_attached_database(tmp_path, fifo):
    evil = made_with_sql(tmp_path, "CREATE TABLE t(x TEXT CHECK (audio_info(x) IS NOT NULL));")
    conn = open_connection(str(tmp_path / "mine.db"))
    conn.execute("ATTACH ? AS other", (str(evil),))
    with pytest.raises(sqlite3.Error, match=REFUSED):
        conn.execute("INSERT INTO other.t VALUES (?)", (fifo,))


@pytest.mark.parametrize(
    "kind, name, table, sql, action",
    [
        ("table", "d", "d", "CREATE TABLE d(x, y DEFAULT (audio_info('{fifo}')))", "INSERT INTO d(x) VALUES (1)"),
        ("table", "g", "g", "CREATE TABLE g(x, y AS (audio_info(x)))", "INSERT INTO g(x) VALUES ('{fifo}')"),
        ("index", "ix", "victim_data", "CREATE INDEX ix ON victim_data(audio_info(x))", "INSERT INTO victim_data VALUES ('{fifo}')"),
        ("index", "px", "victim_data", "CREATE INDEX px ON victim_data(x) WHERE audio_embed(x) IS NOT NULL", "INSERT INTO victim_data VALUES ('{fifo}')"),
        ("trigger", "tr", "victim_data", "CREATE TRIGGER tr AFTER INSERT ON victim_data BEGIN SELECT audio_info(new.x); END", "INSERT INTO victim_data VALUES ('{fifo}')"),
        ("view", "v", "v", "CREATE VIEW v AS SELECT audio_info('{fifo}') AS i", "SELECT * FROM v"),
        ("view", "vf", "vf", "CREATE VIEW vf AS SELECT * FROM audio_embed_files WHERE source = '{fifo}'", "SELECT * FROM vf"),
        ("view", "vr", "vr", "CREATE VIEW vr AS SELECT audiotext_runtime('{fifo}')", "SELECT * FROM vr"),
    ],
    ids=["default", "generated-column", "index-expression", "partial-index", "trigger", "view", "view-of-files", "view-loading-a-library"],
)
def test_crafted_schemas(tmp_path, fifo, kind, name, table, sql, action):
    path = tmp_path / "crafted.db"
    craft(path, kind, name, table, sql.format(fifo=fifo))
    conn = victim(path)
    with pytest.raises(sqlite3.Error, match=REFUSED):
        conn.execute(action.format(fifo=fifo)).fetchall()
    # And with the schema open, the file readers refuse any call, even the user's own.
    try:
        with pytest.raises(sqlite3.Error, match=REFUSED):
            conn.execute("SELECT audio_info(?)", (fifo,)).fetchone()
    finally:
        conn.close()


def test_own_temp_objects_and_innocent_names_still_work(tmp_path):
    """What stays allowed: a column named like a function, TEMP views and triggers (only the
    connection's own SQL can make them), and functions that read no file."""
    path = made_with_sql(
        tmp_path,
        "CREATE TABLE clips(path TEXT, audio_info TEXT, embedding BLOB);"
        "CREATE VIEW scores AS SELECT path, audio_info FROM clips;",
    )
    conn = victim(path)
    conn.execute("CREATE TEMP VIEW info AS SELECT audio_info('/no/such/file.wav') AS i")
    with pytest.raises(sqlite3.Error, match="cannot open /no/such/file.wav"):
        conn.execute("SELECT * FROM info").fetchall()
    with pytest.raises(sqlite3.Error, match="cannot open /no/such/file.wav"):
        conn.execute("SELECT audio_info('/no/such/file.wav')").fetchone()
    assert conn.execute("SELECT count(*) FROM scores").fetchone() == (0,)
