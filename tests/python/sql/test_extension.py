"""The extension as a user loads it into Debian's Python sqlite3: its SQL surface, the model
registry, and every failure path ending in a clear SQL error with the connection still usable."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import make_audio as ma
from conftest import DEFAULT_BUNDLE, DIST, EXTENSION, ROOT, open_connection

# Everything one `.load` adds: ours, then sqlite-vec's.
DECLARED_FUNCTIONS = {
    ("audiotext_debug", 0),
    ("audiotext_finite", 1),
    ("audiotext_option", 1),
    ("audiotext_fts_query", 1),
    ("audiotext_option", 2),
    ("audiotext_runtime", 1),
    ("audiotext_version", 0),
    ("text_embed", 1),
    ("text_embed", 2),
    ("audio_embed", 1),
    ("audio_embed", 2),
    ("audio_info", 1),
    ("audio_text_score", 2),
    ("audio_text_score", 3),
    ("vec_add", 2), ("vec_bit", 1), ("vec_debug", 0), ("vec_distance_cosine", 2),
    ("vec_distance_hamming", 2), ("vec_distance_l1", 2), ("vec_distance_l2", 2), ("vec_f32", 1),
    ("vec_int8", 1), ("vec_length", 1), ("vec_normalize", 1), ("vec_quantize_binary", 1),
    ("vec_quantize_int8", 2), ("vec_slice", 3), ("vec_sub", 2), ("vec_to_json", 1),
    ("vec_type", 1), ("vec_version", 0),
}
DECLARED_MODULES = {"audiotext_models", "audio_files", "audio_embed_files", "audio_segments", "audio_segment_files",
                    "audiotext_index", "vec0", "vec_each"}
FAULT_BUILD = ROOT / "target" / "fault-injection" / "audiotext0"


def vector(blob):
    return np.frombuffer(blob, dtype="<f4")


def assert_usable(conn):
    """The connection still answers after an error, including our own functions."""
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert conn.execute("SELECT audiotext_version()").fetchone()[0].startswith("v")


def copy_bundle(tmp_path, name="bundle"):
    target = tmp_path / name
    shutil.copytree(DEFAULT_BUNDLE, target)
    return target


# --- the SQL surface -------------------------------------------------------------------------

def test_function_list_equals_the_declared_list():
    """pragma_function_list after .load minus before .load is exactly the declared surface."""
    plain = sqlite3.connect(":memory:")
    before = set(plain.execute("SELECT name, narg FROM pragma_function_list"))
    modules_before = {r[0] for r in plain.execute("SELECT name FROM pragma_module_list")}
    conn = open_connection()
    after = set(conn.execute("SELECT name, narg FROM pragma_function_list"))
    modules_after = {r[0] for r in conn.execute("SELECT name FROM pragma_module_list")}
    assert after - before == DECLARED_FUNCTIONS
    assert modules_after - modules_before == DECLARED_MODULES


def test_every_function_of_ours_has_a_test():
    """Each of our SQL functions is called as `name(` somewhere in the tests (the declared list
    above spells names as strings, so it does not count)."""
    sources = "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("*")
        if p.suffix in {".py", ".rs", ".sh", ".sql"} and "target" not in p.parts
    )
    own = {name for name, _ in DECLARED_FUNCTIONS if not name.startswith("vec_")}
    untested = sorted(name for name in own if f"{name}(" not in sources)
    assert not untested, f"no test calls {untested}"


def test_flags_are_chosen_per_function(conn):
    """Deterministic only where the output depends on the input alone; file readers DIRECTONLY."""
    rows = {
        (name, narg): flags
        for name, narg, flags in conn.execute(
            "SELECT name, narg, flags FROM pragma_function_list WHERE name LIKE 'audiotext%' OR name LIKE 'text_%'"
        )
    }
    SQLITE_DETERMINISTIC, SQLITE_DIRECTONLY, SQLITE_INNOCUOUS = 0x800, 0x80000, 0x200000
    assert rows[("audiotext_version", 0)] & SQLITE_DETERMINISTIC
    assert rows[("audiotext_version", 0)] & SQLITE_INNOCUOUS
    assert rows[("audiotext_runtime", 1)] & SQLITE_DIRECTONLY
    # A pure check, usable in CHECK constraints of any schema.
    assert rows[("audiotext_finite", 1)] & SQLITE_DETERMINISTIC
    assert rows[("audiotext_finite", 1)] & SQLITE_INNOCUOUS
    # Setting a connection option is for top-level SQL only; reading one is harmless.
    assert rows[("audiotext_option", 2)] & SQLITE_DIRECTONLY
    assert not rows[("audiotext_option", 1)] & SQLITE_DIRECTONLY
    for key in [("text_embed", 1), ("text_embed", 2), ("audiotext_debug", 0), ("audiotext_option", 1)]:
        assert not rows[key] & SQLITE_DETERMINISTIC, key
        assert not rows[key] & SQLITE_INNOCUOUS, key


def test_version_and_debug(conn):
    """audiotext_debug names the ONNX Runtime version and path, the providers and the models."""
    assert conn.execute("SELECT audiotext_version()").fetchone()[0] == "v0.1.0"
    conn.execute("SELECT text_embed('warm up')").fetchone()
    debug = conn.execute("SELECT audiotext_debug()").fetchone()[0]
    assert "onnxruntime: 1.31.1 from" in debug
    assert str(DIST / "libonnxruntime.so") in debug
    assert "execution providers available: " in debug and "CPUExecutionProvider" in debug
    assert "model default: " in debug and "text on CPUExecutionProvider" in debug


def test_text_embed_is_a_vec0_vector(conn):
    """text_embed returns float32 little-endian with sqlite-vec's subtype: vec0 and vec_* take it."""
    blob, vtype, length = conn.execute(
        "SELECT text_embed('a dog barks'), vec_type(text_embed('a dog barks')), vec_length(text_embed('a dog barks'))"
    ).fetchone()
    assert len(blob) == 384 * 4 and vtype == "float32" and length == 384
    assert abs(np.linalg.norm(vector(blob)) - 1) < 1e-5


def test_vec0_knn_over_text_embed(conn):
    """A vec0 KNN query with a text_embed query vector returns the paraphrase first."""
    conn.executescript(
        """
        CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO docs(body) VALUES ('a dog barks in the yard'), ('heavy rain on the window'),
                                      ('a jet plane taking off'), ('people talking in a cafe');
        CREATE VIRTUAL TABLE idx USING vec0(embedding float[384] distance_metric=cosine);
        INSERT INTO idx(rowid, embedding) SELECT id, text_embed(body) FROM docs;
        """
    )
    rows = conn.execute(
        "SELECT d.body FROM idx JOIN docs d ON d.id = idx.rowid "
        "WHERE idx.embedding MATCH text_embed('an airliner departs') AND k = 2 ORDER BY distance"
    ).fetchall()
    assert rows[0][0] == "a jet plane taking off"


def test_argument_errors_name_function_and_argument(conn):
    with pytest.raises(sqlite3.OperationalError, match=r"text_embed: argument 1 \(text\) must be TEXT, got BLOB"):
        conn.execute("SELECT text_embed(x'00')").fetchone()
    with pytest.raises(sqlite3.OperationalError, match=r"text_embed: argument 1 \(model\) must be TEXT"):
        conn.execute("SELECT text_embed(3, 'x')").fetchone()
    assert conn.execute("SELECT text_embed(NULL)").fetchone() == (None,)
    assert_usable(conn)


# --- the model registry -----------------------------------------------------------------------

def test_default_bundle_is_registered_on_load(conn):
    rows = conn.execute("SELECT name, path FROM temp.audiotext_models").fetchall()
    assert rows == [("default", str(DEFAULT_BUNDLE.resolve()))]


def test_register_list_replace_and_delete(conn, tmp_path):
    bundle = copy_bundle(tmp_path)
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('mini', ?)", (str(bundle),))
    names = [r[0] for r in conn.execute("SELECT name FROM temp.audiotext_models ORDER BY name")]
    assert names == ["default", "mini"]
    a = conn.execute("SELECT text_embed('mini', 'a cat meows')").fetchone()[0]
    b = conn.execute("SELECT text_embed('a cat meows')").fetchone()[0]
    assert np.abs(vector(a) - vector(b)).max() < 1e-6
    # INSERT of an existing name replaces it.
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('mini', ?)", (str(DEFAULT_BUNDLE),))
    assert conn.execute("SELECT count(*) FROM temp.audiotext_models WHERE name = 'mini'").fetchone() == (1,)
    conn.execute("UPDATE temp.audiotext_models SET path = ? WHERE name = 'mini'", (str(bundle),))
    assert conn.execute("SELECT path FROM temp.audiotext_models WHERE name = 'mini'").fetchone() == (str(bundle),)
    conn.execute("DELETE FROM temp.audiotext_models WHERE name = 'mini'")
    with pytest.raises(sqlite3.OperationalError, match="no model named 'mini'"):
        conn.execute("SELECT text_embed('mini', 'x')").fetchone()


def test_registry_is_per_connection(tmp_path):
    first, second = open_connection(), open_connection()
    first.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('only_first', ?)", (str(DEFAULT_BUNDLE),))
    assert first.execute("SELECT text_embed('only_first', 'x')").fetchone()[0]
    with pytest.raises(sqlite3.OperationalError, match="no model named 'only_first'"):
        second.execute("SELECT text_embed('only_first', 'x')").fetchone()


def test_a_query_only_connection_loads_and_uses_the_default_model():
    """Datasette's read connections set PRAGMA query_only before extensions load: no temp table
    can be made there, yet the functions work with the default model."""
    c = sqlite3.connect(":memory:")
    c.execute("PRAGMA query_only = 1")
    c.enable_load_extension(True)
    c.load_extension(str(EXTENSION))
    vector = c.execute("SELECT text_embed('a dog barking')").fetchone()[0]
    assert len(vector) == 384 * 4
    assert c.execute("SELECT audiotext_version()").fetchone() == ("v0.1.0",)
    assert c.execute("SELECT count(*) FROM temp.sqlite_schema WHERE name = 'audiotext_models'").fetchone() == (0,)
    c.close()


def test_unknown_model_says_how_to_register(conn):
    with pytest.raises(sqlite3.OperationalError) as error:
        conn.execute("SELECT text_embed('x', 'hello')").fetchone()
    message = str(error.value)
    assert message.startswith("text_embed: no model named 'x': register it with INSERT INTO temp.audiotext_models(name, path)")
    assert "registered: default" in message
    assert_usable(conn)


def test_registering_a_folder_without_manifest_fails_cleanly(conn, tmp_path):
    with pytest.raises(sqlite3.OperationalError, match=r"cannot register 'x': .* is not a model bundle"):
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('x', ?)", (str(tmp_path),))
    with pytest.raises(sqlite3.OperationalError, match="cannot open bundle folder"):
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('x', '/no/such/folder')")
    with pytest.raises(sqlite3.OperationalError, match="path must be TEXT"):
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('x', 42)")
    assert conn.execute("SELECT count(*) FROM temp.audiotext_models").fetchone() == (1,)
    assert_usable(conn)


def test_registry_cannot_be_written_from_a_trigger(conn, tmp_path):
    """Registering reads files, so the registry is DIRECTONLY like the file-reading functions."""
    conn.executescript(
        "CREATE TABLE t(x); CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN "
        "INSERT INTO audiotext_models(name, path) VALUES ('evil', new.x); END;"
    )
    with pytest.raises(sqlite3.OperationalError, match="unsafe use of virtual table"):
        conn.execute("INSERT INTO t VALUES (?)", (str(DEFAULT_BUNDLE),))


def test_audiotext_runtime_is_directonly_and_checks_its_argument(conn):
    conn.executescript("CREATE TABLE t(x); CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT audiotext_runtime(new.x); END;")
    with pytest.raises(sqlite3.OperationalError, match="unsafe use of audiotext_runtime"):
        conn.execute("INSERT INTO t VALUES ('/tmp/x.so')")
    # While that trigger is in the schema, even direct calls are refused (see schema_guard.rs).
    with pytest.raises(sqlite3.OperationalError, match="refused: the trigger 'tr' of database 'main' calls audiotext_runtime"):
        conn.execute("SELECT audiotext_runtime('/tmp/x.so')").fetchone()
    conn.execute("DROP TRIGGER tr")
    # The runtime already loaded in this process is reported; another one is refused.
    loaded = conn.execute("SELECT audiotext_runtime(?)", (str(DIST / "libonnxruntime.so"),)).fetchone()[0]
    assert loaded.startswith("onnxruntime 1.31.1 from")
    with pytest.raises(sqlite3.OperationalError, match="already loaded from .*restart"):
        conn.execute("SELECT audiotext_runtime('/somewhere/else/libonnxruntime.so')").fetchone()
    assert_usable(conn)


# --- damaged bundles ---------------------------------------------------------------------------

def test_missing_bundle_file(conn, tmp_path):
    bundle = copy_bundle(tmp_path)
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(sqlite3.OperationalError, match=r"lacks tokenizer.json, which its manifest lists"):
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('broken', ?)", (str(bundle),))
    assert_usable(conn)


def test_file_removed_after_registration(conn, tmp_path):
    bundle = copy_bundle(tmp_path)
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('late', ?)", (str(bundle),))
    (bundle / "text.onnx").unlink()
    with pytest.raises(sqlite3.OperationalError, match=r"text_embed: .*text.onnx"):
        conn.execute("SELECT text_embed('late', 'x')").fetchone()
    assert_usable(conn)


def test_corrupt_onnx_is_caught_by_its_checksum(conn, tmp_path):
    bundle = copy_bundle(tmp_path)
    (bundle / "text.onnx").write_bytes(b"this is not a protobuf")
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('corrupt', ?)", (str(bundle),))
    with pytest.raises(sqlite3.OperationalError, match=r"text_embed: .*text.onnx is damaged or was replaced: its sha256 is"):
        conn.execute("SELECT text_embed('corrupt', 'x')").fetchone()
    assert_usable(conn)


def test_corrupt_onnx_with_matching_checksum_is_an_onnx_runtime_error(conn, tmp_path):
    """A file that passes its checksum but is no ONNX model: ONNX Runtime's error, not a crash."""
    import hashlib

    bundle = copy_bundle(tmp_path)
    garbage = b"\x08\x07" + os.urandom(4096)
    (bundle / "text.onnx").write_bytes(garbage)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["text.onnx"] = hashlib.sha256(garbage).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('garbage', ?)", (str(bundle),))
    with pytest.raises(sqlite3.OperationalError, match=r"text_embed: onnx runtime cannot load .*text.onnx.*re-export the bundle"):
        conn.execute("SELECT text_embed('garbage', 'x')").fetchone()
    assert_usable(conn)


def test_manifest_of_another_format_version(conn, tmp_path):
    bundle = copy_bundle(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(sqlite3.OperationalError, match="format_version 99, while this build reads format_version 1"):
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('future', ?)", (str(bundle),))


def plain_bundle(tmp_path, name="plain"):
    """A copy of the default bundle without its text centre: MiniLM's own embeddings."""
    bundle = copy_bundle(tmp_path, name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["text"].pop("centre", None)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_a_text_centre_moves_every_text_embedding_off_it(conn, tmp_path):
    """text.centre in the manifest: text_embed is the text network's embedding minus the centre,
    normalised again, and audio_text_score ranks by it; audio embeddings do not change."""
    plain = plain_bundle(tmp_path)
    centred = copy_bundle(tmp_path, "centred")
    manifest = json.loads((centred / "manifest.json").read_text())
    rng = np.random.default_rng(7)
    centre = rng.normal(size=manifest["embedding_dim"])
    centre *= 0.4 / np.linalg.norm(centre)
    manifest["text"]["centre"] = [float(np.float32(v)) for v in centre]
    (centred / "manifest.json").write_text(json.dumps(manifest))
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('plain', ?), ('centred', ?)",
                 (str(plain), str(centred)))
    for text in ["a dog barks twice", "rain on a tin roof", ""]:
        raw = vector(conn.execute("SELECT text_embed('plain', ?)", (text,)).fetchone()[0]).astype(np.float64)
        got = vector(conn.execute("SELECT text_embed('centred', ?)", (text,)).fetchone()[0])
        expected = raw - np.float32(centre)
        expected /= np.linalg.norm(expected)
        assert np.abs(got - expected).max() < 1e-6, text
        assert abs(np.linalg.norm(got) - 1) < 1e-6
    clip = str(tmp_path / "tone.wav")
    ma.write_wav(clip, ma.sine(440, 16000, 2.0), 16000)
    audio_plain, audio_centred, score = conn.execute(
        "SELECT audio_embed('plain', ?1), audio_embed('centred', ?1), audio_text_score('centred', audio_embed('centred', ?1), 'a dog barks')",
        (clip,)).fetchone()
    assert audio_plain == audio_centred
    query = vector(conn.execute("SELECT text_embed('centred', 'a dog barks')").fetchone()[0])
    assert score == pytest.approx(float(vector(audio_centred) @ query), abs=1e-6)


@pytest.mark.parametrize("centre, message", [
    ([0.1, 0.2, 0.3], r"text.centre has 3 values but embedding_dim is 384; re-export the bundle, or delete text.centre"),
    ([0.06] * 384, r"text.centre has norm 1.1\d*, which must be finite and under 0.9"),
])
def test_a_bad_text_centre_is_refused_when_the_model_is_registered(conn, tmp_path, centre, message):
    bundle = copy_bundle(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["text"]["centre"] = centre
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(sqlite3.OperationalError, match=message):
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('bad', ?)", (str(bundle),))
    assert_usable(conn)


# --- failures that need a fresh process ---------------------------------------------------------

def run_python(code, env_overrides, extension=EXTENSION):
    """Runs `code` in a fresh Debian Python with the extension loaded as `conn`; returns stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("AUDIOTEXT_ORT_DYLIB", "ORT_DYLIB_PATH")}
    env.update(env_overrides)
    prelude = textwrap.dedent(
        f"""
        import sqlite3
        conn = sqlite3.connect(':memory:')
        conn.enable_load_extension(True)
        conn.load_extension({str(extension)!r})
        def attempt(sql):
            try:
                return ('ok', conn.execute(sql).fetchone()[0])
            except sqlite3.Error as e:
                return ('error', str(e))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"host process died: {result.returncode}\n{result.stderr}"
    return result.stdout


def test_missing_runtime_named_by_environment():
    out = run_python(
        """
        print(attempt("SELECT text_embed('x')"))
        print(attempt("SELECT 40 + 2"))
        print(attempt("SELECT audiotext_debug()"))
        """,
        {"AUDIOTEXT_ORT_DYLIB": "/nonexistent/libonnxruntime.so"},
    )
    lines = out.splitlines()
    assert "('error', \"text_embed: cannot load the ONNX Runtime library; tried /nonexistent/libonnxruntime.so ($AUDIOTEXT_ORT_DYLIB): no such file" in lines[0]
    assert "AUDIOTEXT_ORT_DYLIB=/path/to/libonnxruntime.so" in lines[0]
    assert lines[1] == "('ok', 42)"
    assert "onnxruntime: not loaded: cannot load the ONNX Runtime library" in lines[2]


def test_the_default_model_can_be_named_by_the_environment(tmp_path):
    """$AUDIOTEXT_DEFAULT_MODEL (the Python package sets it to the bundle it assembled) is
    registered as `default` when the extension loads, on a query_only connection too (where no
    INSERT can register one); naming a folder that is no bundle is an error that says so, not a
    silent fall back to the bundle next to the extension."""
    bundle = copy_bundle(tmp_path)
    out = run_python(
        f"""
        print(conn.execute("SELECT path FROM temp.audiotext_models WHERE name = 'default'").fetchone()[0])
        reader = sqlite3.connect(':memory:')
        reader.execute('PRAGMA query_only = 1')
        reader.enable_load_extension(True)
        reader.load_extension({str(EXTENSION)!r})
        print(len(reader.execute("SELECT text_embed('a dog barking')").fetchone()[0]))
        """,
        {"AUDIOTEXT_DEFAULT_MODEL": str(bundle)},
    ).splitlines()
    assert out == [str(bundle), str(384 * 4)]
    missing = tmp_path / "no-bundle-here"
    out = run_python('print(attempt("SELECT text_embed(\'x\')"))', {"AUDIOTEXT_DEFAULT_MODEL": str(missing)})
    assert "no model named 'default'" in out and f"no bundle was found in {missing}" in out, out
    assert "AUDIOTEXT_DEFAULT_MODEL names one" in out and str(DEFAULT_BUNDLE) not in out, out


def test_thread_count_from_the_environment():
    """AUDIOTEXT_THREADS sets ONNX Runtime's threads per run (a Ray worker's share of a
    machine): the same vectors with one thread, and a clear error for a bad value."""
    code = """
        import os
        conn.execute("CREATE TABLE v AS SELECT text_embed('a dog barking') AS t")
        print(conn.execute("SELECT hex(t) FROM v").fetchone()[0][:64])
        print(attempt("SELECT length(text_embed('x'))"))
        """
    default = run_python(code, {}).splitlines()
    one = run_python(code, {"AUDIOTEXT_THREADS": "1"}).splitlines()
    assert one[0] == default[0] and one[1] == "('ok', 1536)"
    out = run_python('print(attempt("SELECT text_embed(\'x\')"))', {"AUDIOTEXT_THREADS": "many"})
    assert "AUDIOTEXT_THREADS=many is not a thread count: set a whole number from 1 to 1024" in out, out


def test_missing_runtime_next_to_a_copied_extension(tmp_path):
    """The extension copied alone: the error lists each place it looked, then the fix."""
    lonely = tmp_path / "audiotext0.so"
    shutil.copy(EXTENSION.with_suffix(".so"), lonely)
    out = run_python(
        f"""
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('default', '{DEFAULT_BUNDLE}')")
        print(attempt("SELECT text_embed('x')"))
        print(attempt("SELECT vec_length('[1,2,3]')"))
        """,
        {"LD_LIBRARY_PATH": ""},
        extension=tmp_path / "audiotext0",
    )
    first, second = out.splitlines()
    assert f"tried {tmp_path}/libonnxruntime.so (next to the extension): no such file" in first
    assert "libonnxruntime.so (the system library search path)" in first
    assert "Fix: put libonnxruntime.so" in first
    assert second == "('ok', 3)"


def test_runtime_named_by_environment_is_used():
    out = run_python(
        """
        print(attempt("SELECT length(text_embed('x'))"))
        print(attempt("SELECT audiotext_debug()"))
        """,
        {"ORT_DYLIB_PATH": str(DIST / "libonnxruntime.so.1.31.1")},
    )
    first, rest = out.split("\n", 1)
    assert first == "('ok', 1536)"
    assert "found $ORT_DYLIB_PATH" in rest


def test_explicit_runtime_before_first_use():
    out = run_python(
        f"""
        print(attempt("SELECT audiotext_runtime('{DIST / 'libonnxruntime.so.1.31.1'}')"))
        print(attempt("SELECT length(text_embed('x'))"))
        """,
        {},
    )
    first, second = out.splitlines()
    assert first.startswith("('ok', 'onnxruntime 1.31.1 from")
    assert second == "('ok', 1536)"


def test_not_an_onnx_runtime_library(tmp_path):
    fake = tmp_path / "libonnxruntime.so"
    shutil.copy("/usr/lib/x86_64-linux-gnu/libz.so.1" if Path("/usr/lib/x86_64-linux-gnu/libz.so.1").exists() else sys.executable, fake)
    out = run_python('print(attempt("SELECT text_embed(\'x\')"))', {"AUDIOTEXT_ORT_DYLIB": str(fake)})
    assert "not an ONNX Runtime library (no OrtGetApiBase symbol)" in out or "cannot load" in out


@pytest.mark.skipif(not FAULT_BUILD.with_suffix(".so").exists(), reason="fault-injection build missing: scripts/test.sh builds it")
def test_panic_inside_a_function_is_an_sql_error():
    out = run_python(
        f"""
        print(attempt("SELECT audiotext_fault('panic')"))
        print(attempt("SELECT audiotext_version()"))
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('default', '{DEFAULT_BUNDLE}')")
        print(attempt("SELECT length(text_embed('still works'))"))
        """,
        {"AUDIOTEXT_ORT_DYLIB": str(DIST / "libonnxruntime.so")},
        extension=FAULT_BUILD,
    )
    first, second, third = out.splitlines()
    assert first.startswith("('error', \"audiotext_fault: internal error (fault injected by audiotext_fault('panic'))")
    assert second.startswith("('ok', 'v")
    assert third == "('ok', 1536)"


def test_loading_twice_keeps_the_connections_registry(tmp_path):
    """Regression: a second .load on the same connection used to give the functions a fresh
    registry (and re-register the shipped default over the user's own)."""
    bundle = copy_bundle(tmp_path)
    conn = open_connection()
    conn.execute("DELETE FROM temp.audiotext_models")
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('default', ?)", (str(bundle),))
    conn.enable_load_extension(True)
    conn.load_extension(str(EXTENSION))
    rows = conn.execute("SELECT name, path FROM temp.audiotext_models").fetchall()
    assert rows == [("default", str(bundle.resolve()))]
    assert conn.execute("SELECT length(text_embed('still one registry'))").fetchone() == (1536,)
