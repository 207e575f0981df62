"""A panic in any callback of any of our virtual tables is an SQL error, and the connection and
process go on (issue 22). The fault-injection build's `audiotext_fault('module.callback')` makes
the next call of that callback panic; every module's callbacks run through one wrapper
(crates/sqlite-audiotext/src/vtab.rs), and each case here arms one, runs the statement that reaches it, and then
runs the statement again to show nothing was left broken."""

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import DEFAULT_BUNDLE, DIST, ROOT

FAULT_BUILD = ROOT / "target" / "fault-injection" / "audiotext0"

pytestmark = pytest.mark.skipif(
    not FAULT_BUILD.with_suffix(".so").exists(), reason="fault-injection build missing: scripts/test.sh builds it"
)

# module -> (setup SQL run once, {callback: statement that reaches it})
INDEX_SETUP = """
    CREATE VIRTUAL TABLE ix USING audiotext_index(embedding float[4]);
    INSERT INTO ix(rowid, embedding) VALUES (1, '[1, 0, 0, 0]'), (2, '[0, 1, 0, 0]'), (3, '[0, 0, 1, 0]');
"""
KNN = "SELECT rowid, distance, embedding FROM ix WHERE embedding MATCH '[1, 0.1, 0, 0]' AND k = 2"
CASES = {
    "audiotext_index": (
        INDEX_SETUP,
        {
            "create": "CREATE VIRTUAL TABLE ix2 USING audiotext_index(embedding float[4])",
            "best_index": KNN,
            "open": KNN,
            "filter": KNN,
            "next": KNN,
            "eof": KNN,
            "column": KNN,
            "rowid": "SELECT rowid FROM ix WHERE embedding MATCH '[1, 0, 0, 0]' AND k = 2",
            "insert": "INSERT INTO ix(rowid, embedding) VALUES (10, '[1, 1, 0, 0]')",
            "update": "UPDATE ix SET embedding = '[0, 0, 0, 1]' WHERE rowid = 3",
            "delete": "DELETE FROM ix WHERE rowid = 2",
            "destroy": "DROP TABLE ix",
        },
    ),
    "audiotext_models": (
        "",
        {
            "create": "CREATE VIRTUAL TABLE temp.more_models USING audiotext_models()",
            "best_index": "SELECT name, path FROM temp.audiotext_models",
            "open": "SELECT name, path FROM temp.audiotext_models",
            "next": "SELECT name, path FROM temp.audiotext_models",
            "filter": "SELECT name, path FROM temp.audiotext_models",
            "eof": "SELECT name, path FROM temp.audiotext_models",
            "column": "SELECT name, path FROM temp.audiotext_models",
            "rowid": "SELECT rowid FROM temp.audiotext_models",
            "insert": f"INSERT INTO temp.audiotext_models(name, path) VALUES ('again', '{DEFAULT_BUNDLE}')",
            "update": f"UPDATE temp.audiotext_models SET path = '{DEFAULT_BUNDLE}' WHERE name = 'default'",
            "delete": "DELETE FROM temp.audiotext_models WHERE name = 'default'",
        },
    ),
    "audio_embed_files": (
        "",
        {
            "connect": "SELECT path, error FROM audio_embed_files(:dir)",
            "best_index": "SELECT path, error FROM audio_embed_files(:dir)",
            "open": "SELECT path, error FROM audio_embed_files(:dir)",
            "filter": "SELECT path, error FROM audio_embed_files(:dir)",
            "next": "SELECT path, error FROM audio_embed_files(:dir)",
            "eof": "SELECT path, error FROM audio_embed_files(:dir)",
            "column": "SELECT path, error FROM audio_embed_files(:dir)",
            "rowid": "SELECT rowid FROM audio_embed_files(:dir)",
        },
    ),
    "audio_files": (
        "",
        {
            "connect": "SELECT path FROM audio_files(:dir)",
            "best_index": "SELECT path FROM audio_files(:dir)",
            "open": "SELECT path FROM audio_files(:dir)",
            "filter": "SELECT path FROM audio_files(:dir)",
            "next": "SELECT path FROM audio_files(:dir)",
            "eof": "SELECT path FROM audio_files(:dir)",
            "column": "SELECT path FROM audio_files(:dir)",
            "rowid": "SELECT rowid FROM audio_files(:dir)",
        },
    ),
    "audio_segments": (
        "",
        {
            "connect": "SELECT start, length(embedding) FROM audio_segments(:file)",
            "best_index": "SELECT start, length(embedding) FROM audio_segments(:file)",
            "open": "SELECT start, length(embedding) FROM audio_segments(:file)",
            "filter": "SELECT start, length(embedding) FROM audio_segments(:file)",
            "next": "SELECT start, length(embedding) FROM audio_segments(:file)",
            "eof": "SELECT start, length(embedding) FROM audio_segments(:file)",
            "column": "SELECT start, length(embedding) FROM audio_segments(:file)",
            "rowid": "SELECT rowid FROM audio_segments(:file)",
        },
    ),
    "audio_segment_files": (
        "",
        {
            "connect": "SELECT path, start FROM audio_segment_files(:dir)",
            "best_index": "SELECT path, start FROM audio_segment_files(:dir)",
            "open": "SELECT path, start FROM audio_segment_files(:dir)",
            "filter": "SELECT path, start FROM audio_segment_files(:dir)",
            "next": "SELECT path, start FROM audio_segment_files(:dir)",
            "eof": "SELECT path, start FROM audio_segment_files(:dir)",
            "column": "SELECT path, start FROM audio_segment_files(:dir)",
            "rowid": "SELECT rowid FROM audio_segment_files(:dir)",
        },
    ),
}

RUNNER = """
import json, sqlite3, sys
extension, database, setup, cases, params, bundle = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6]
def connect():
    conn = sqlite3.connect(database, isolation_level=None, cached_statements=0)  # every statement is planned again
    conn.enable_load_extension(True)
    conn.load_extension(extension)
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('default', ?)", (bundle,))
    return conn
conn = connect()
conn.executescript(setup)
def attempt(sql):
    try:
        return ["ok", len(conn.execute(sql, params).fetchall())]
    except sqlite3.Error as e:
        return ["error", str(e)]
results = {}
for point, sql in cases.items():
    conn.execute("SELECT audiotext_fault(?)", (point,))
    first = attempt(sql)
    results[point] = [first, attempt(sql)]
    if point.endswith(".destroy") or point.endswith(".create"):
        conn.close()
        conn = connect()
# A panic while SQLite closes a cursor or drops a table has no statement left to fail: the
# statement's rows stand, and the process goes on.
module = next(iter(cases)).split(".")[0]
conn.executescript(setup)  # again: a case above may have dropped its table
conn.execute("SELECT audiotext_fault(?)", (module + ".drop",))
results["drop"] = attempt(cases[module + ".filter"])
conn.close()
conn = connect()
results["after close"] = attempt("SELECT audiotext_version()")
print(json.dumps(results))
"""


def one_wav(path):
    import wave

    import numpy as np

    t = np.arange(32000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())


@pytest.mark.parametrize("module", sorted(CASES))
def test_a_panic_in_any_callback_is_an_sql_error(module, tmp_path):
    setup, statements = CASES[module]
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    one_wav(sounds / "tone.wav")
    cases = {f"{module}.{callback}": sql for callback, sql in statements.items()}
    params = {"dir": str(sounds), "file": str(sounds / "tone.wav")}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(FAULT_BUILD), str(tmp_path / "db.sqlite"), textwrap.dedent(setup),
         json.dumps(cases), json.dumps(params), str(DEFAULT_BUNDLE)],
        capture_output=True, text=True, timeout=300,
        env={"AUDIOTEXT_ORT_DYLIB": str(DIST / "libonnxruntime.so"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, f"the host process died ({result.returncode}): {result.stderr}"
    assert "panicked" not in result.stderr, result.stderr
    results = json.loads(result.stdout)
    for point in cases:
        (kind, message), again = results[point]
        assert kind == "error", f"{point}: the panic did not reach SQL: {message}"
        if point.endswith(".destroy"):
            # SQLite drops xDestroy's message and says only this; the table stays, intact.
            assert message == "SQL logic error", message
            continue
        assert f"internal error (fault injected in {point})" in message, (point, message)
        assert "the connection is still usable" in message, (point, message)
        assert again[0] == "ok", f"{point}: the statement failed again after the fault: {again}"
    assert results["drop"][0] == "ok", results["drop"]
    assert results["after close"][0] == "ok"


def test_an_unknown_fault_point_is_refused():
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3
            conn = sqlite3.connect(':memory:')
            conn.enable_load_extension(True)
            conn.load_extension({str(FAULT_BUILD)!r})
            try:
                conn.execute("SELECT audiotext_fault('audiotext_index.everywhere')")
            except sqlite3.Error as e:
                print(e)
        """)],
        capture_output=True, text=True, timeout=60,
    ).stdout
    assert "must be 'panic' or 'module.callback'" in out and "best_index" in out
