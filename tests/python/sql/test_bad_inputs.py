"""The bad-input suite: several hundred broken inputs, generated here, each run through the SQL
functions as a user would run them (inside an INSERT into a file-backed database).

Every case asserts its error message (the function's name, what was wrong, and what to do), that
the statement changed nothing, that the connection still works, and that
`PRAGMA integrity_check` is ok. Inputs: every container and codec the README lists, truncated,
with random bytes behind a valid magic number and with broken header fields; 8 kHz to 192 kHz,
1 to 8 channels, with NaN, infinite and absurd samples; paths that are pipes, sockets, devices,
folders, dangling links, empty, with NUL or too long; vector BLOBs of the wrong size or with
non-finite values; text that is not UTF-8; unknown and broken model bundles; a runtime library
that is missing or not a library.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import make_audio as ma
from conftest import DEFAULT_BUNDLE, EXTENSION, TESTS, open_connection

RATE = 16000
FORMATS = ("wav", "flac", "ogg", "mp3", "m4a", "aac", "mka")
DECODE_FAILURE = (
    r"(is truncated|is corrupt|is not a supported audio file|contains no audio samples|is empty"
    r"|has no audio track|uses a codec that cannot be decoded|uses a feature|declares|could not be read as)"
)


# --- the database every case runs against ------------------------------------------------------

@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-inputs") / "clips.db"
    conn = open_connection(str(path))
    conn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT, embedding BLOB)")
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT, score REAL)")
    conn.execute("INSERT INTO clips(path, embedding) VALUES ('kept.wav', zeroblob(16))")
    conn.commit()
    yield conn
    conn.close()


def expect_error(db, sql, params, pattern):
    """Runs `sql`; it must fail with a message matching `pattern` and leave everything as it was."""
    before = db.execute("SELECT (SELECT count(*) FROM clips), (SELECT count(*) FROM notes)").fetchone()
    with pytest.raises(sqlite3.Error) as raised:
        db.execute(sql, params).fetchall()
    message = str(raised.value)
    assert re.search(pattern, message, re.S), f"message {message!r} does not match {pattern!r}"
    if db.in_transaction:
        db.rollback()
    after = db.execute("SELECT (SELECT count(*) FROM clips), (SELECT count(*) FROM notes)").fetchone()
    assert after == before
    assert db.execute("SELECT 1").fetchone() == (1,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return message


# --- inputs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """One second of a real-ish signal in every container, as bytes."""
    tools = {"mp3": ma.have_sox(), "ogg": ma.have_sox(), "flac": ma.have_sox()}
    tools.update({"m4a": ma.have_ffmpeg(), "aac": ma.have_ffmpeg(), "mka": ma.have_ffmpeg()})
    missing = [f for f, ok in tools.items() if not ok]
    if missing:
        pytest.fail(f"sox and ffmpeg are needed to make {missing}: run scripts/install-deps.sh")
    out = tmp_path_factory.mktemp("encoded")
    wav = out / "clip.wav"
    ma.write_wav(wav, ma.realish(RATE, 1.0), RATE)
    files = {"wav": wav.read_bytes()}
    for fmt in FORMATS[1:]:
        dst = out / f"clip.{fmt}"
        if fmt == "mka":
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav),
                            "-c:a", "flac", str(dst)], check=True)
        else:
            ma.encode(wav, dst)
        files[fmt] = dst.read_bytes()
    return files


def audio_sql(function):
    if function == "audio_embed":
        return "INSERT INTO clips(path, embedding) VALUES ('x', audio_embed(?))"
    return "INSERT INTO notes(text) VALUES (audio_info(?))"


def run_audio_case(db, tmp_path, name, data, as_blob, pattern, function="audio_embed"):
    if as_blob:
        source, shown = data, "audio blob"
    else:
        path = tmp_path / name
        path.write_bytes(data)
        source, shown = str(path), name
    return expect_error(
        db, audio_sql(function), (source,), rf"^{function}: .*{re.escape(shown)}.*{pattern}"
    )


# Cut inside the header: the container is recognised (or not) but holds no complete audio.
TRUNCATIONS = (1, 4, 8, 11, 20, 30)


@pytest.mark.parametrize("as_blob", [False, True], ids=["path", "blob"])
@pytest.mark.parametrize("cut", TRUNCATIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_headers(db, encoded, tmp_path, fmt, cut, as_blob):
    run_audio_case(db, tmp_path, f"cut.{fmt}", encoded[fmt][:cut], as_blob, DECODE_FAILURE)


MAGIC = {
    "wav": b"RIFF\x24\x08\x00\x00WAVE",
    "flac": b"fLaC",
    "ogg": b"OggS",
    "mp3": b"ID3\x03\x00\x00\x00\x00\x02\x00",
    "m4a": b"\x00\x00\x00\x18ftypM4A ",
    "mka": b"\x1a\x45\xdf\xa3",
}


@pytest.mark.parametrize("as_blob", [False, True], ids=["path", "blob"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fmt", sorted(MAGIC))
def test_random_bytes_behind_a_magic_number(db, tmp_path, fmt, seed, as_blob):
    body = np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes()
    run_audio_case(db, tmp_path, f"noise.{fmt}", MAGIC[fmt] + body, as_blob, DECODE_FAILURE)


def wav_bytes(format_tag=1, channels=1, rate=RATE, bits=16, block_align=None, data=None,
              chunks=("fmt ", "data"), fmt_size=16):
    """A WAV with every header field under the caller's control."""
    data = np.zeros(RATE // 4, dtype="<i2").tobytes() if data is None else data
    block_align = channels * bits // 8 if block_align is None else block_align
    fmt_chunk = struct.pack("<HHIIHH", format_tag, channels, rate, min(rate * max(block_align, 1), 2**32 - 1), block_align, bits)
    fmt_chunk = (fmt_chunk + bytes(64))[:fmt_size]
    body = b"WAVE"
    for chunk in chunks:
        payload = fmt_chunk if chunk == "fmt " else data
        body += struct.pack("<4sI", chunk.encode(), len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


BROKEN_WAV_HEADERS = {
    "rate-0": (dict(rate=0), r"(sample rate of 0 Hz|is corrupt)"),
    "rate-4GHz": (dict(rate=4_000_000_000), r"sample rate of 4000000000 Hz, outside 1000 Hz to 768000 Hz"),
    "rate-1MHz": (dict(rate=1_000_000), r"sample rate of 1000000 Hz"),
    "channels-0": (dict(channels=0), r"(0 channels|is corrupt)"),
    "bits-0": (dict(bits=0), DECODE_FAILURE),
    "bits-7": (dict(bits=7), DECODE_FAILURE),
    "bits-64-int": (dict(bits=64), DECODE_FAILURE),
    "format-unknown": (dict(format_tag=0x1234), DECODE_FAILURE),
    "block-align-0": (dict(block_align=0), DECODE_FAILURE),
    "data-empty": (dict(data=b""), DECODE_FAILURE),
    "no-data-chunk": (dict(chunks=("fmt ",)), DECODE_FAILURE),
    "no-fmt-chunk": (dict(chunks=("data",)), DECODE_FAILURE),
    "fmt-too-short": (dict(fmt_size=6), DECODE_FAILURE),
}


@pytest.mark.parametrize("as_blob", [False, True], ids=["path", "blob"])
@pytest.mark.parametrize("case", sorted(BROKEN_WAV_HEADERS))
def test_broken_wav_headers(db, tmp_path, case, as_blob):
    fields, pattern = BROKEN_WAV_HEADERS[case]
    run_audio_case(db, tmp_path, f"{case}.wav", wav_bytes(**fields), as_blob, pattern)


# 8 kHz to 192 kHz, 1 to 8 channels: a sample that is not a number (or absurdly large) half a
# second in is an error naming the file and the time, never a NaN embedding.
NON_FINITE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "1e30": 1e30}


@pytest.mark.parametrize("kind", sorted(NON_FINITE))
@pytest.mark.parametrize("channels", [1, 2, 6, 8])
@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 176400, 192000])
def test_non_finite_samples(db, tmp_path, rate, channels, kind):
    x = (0.1 * np.sin(np.arange(rate) * 0.05))[:, None].repeat(channels, axis=1)
    x[rate // 2, channels - 1] = NON_FINITE[kind]
    path = tmp_path / f"bad-{rate}-{channels}.wav"
    ma.write_float_wav(path, x, rate, bits=64 if channels == 6 else 32)
    shown = {"nan": "NaN", "inf": "infinite", "-inf": "infinite", "1e30": r"\d\.?\d*e(\+)?\d+"}[kind]
    expect_error(db, audio_sql("audio_embed"), (str(path),),
                 rf"^audio_embed: .*{path.name} holds a sample that is {shown} at 0\.50\d s.*re-export the file")


# --- paths that are not audio files ------------------------------------------------------------

@pytest.fixture(scope="module")
def special_paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("special")
    os.mkfifo(base / "pipe.wav")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(base / "socket.wav"))
    (base / "folder.wav").mkdir()
    os.symlink(base / "pipe.wav", base / "link-to-pipe.wav")
    os.symlink(base / "gone.wav", base / "dangling.wav")
    yield base
    listener.close()


SPECIAL = {
    "fifo": ("pipe.wav", r"is a named pipe \(FIFO\), not a regular file.*pass the path of a file"),
    "socket": ("socket.wav", r"(is a socket, not a regular file|cannot open)"),
    "directory": ("folder.wav", r"is a directory, not a regular file"),
    "link-to-fifo": ("link-to-pipe.wav", r"is a named pipe \(FIFO\)"),
    "dangling-link": ("dangling.wav", r"cannot open .*dangling.wav.*check the path"),
    "missing": ("missing.wav", r"cannot open .*missing.wav.*working directory"),
    "dev-zero": ("/dev/zero", r"/dev/zero is a character device, not a regular file"),
    "dev-null": ("/dev/null", r"/dev/null is a character device"),
    "dev-urandom": ("/dev/urandom", r"/dev/urandom is a character device"),
}


@pytest.mark.parametrize("function", ["audio_embed", "audio_info"])
@pytest.mark.parametrize("case", sorted(SPECIAL))
def test_special_paths_are_refused_before_reading(db, special_paths, case, function):
    name, pattern = SPECIAL[case]
    path = name if name.startswith("/") else str(special_paths / name)
    expect_error(db, audio_sql(function), (path,), rf"^{function}: .*{pattern}")


def test_special_files_in_a_folder_become_error_rows(special_paths):
    conn = open_connection()
    rows = dict(conn.execute("SELECT path, error FROM audio_embed_files(?)", (str(special_paths),)).fetchall())
    # The link to the pipe is the pipe: listed once, under its first path in sorted order.
    assert "named pipe" in rows[str(special_paths / "link-to-pipe.wav")]
    assert str(special_paths / "pipe.wav") not in rows
    assert "cannot open" in rows[str(special_paths / "dangling.wav")]
    assert "is a socket" in rows[str(special_paths / "socket.wav")]
    conn.close()


BAD_PATHS = {
    "empty": ("", r"argument 1 \(path\) is empty"),
    "nul": ("clip\x00.wav", r"argument 1 \(path\) contains a NUL character at byte 4"),
    "too-long": ("/tmp/" + "x" * 5000 + ".wav", r"cannot open .*File name too long"),
    "not-utf8": (None, r"argument 1 \(path\) is not valid UTF-8"),
}


@pytest.mark.parametrize("function", ["audio_embed", "audio_info"])
@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_bad_path_text(db, case, function):
    path, pattern = BAD_PATHS[case]
    sql = audio_sql(function)
    params = (path,)
    if path is None:
        sql = sql.replace("?", "CAST(X'2f746d702fff2e776176' AS TEXT)")
        params = ()
    expect_error(db, sql, params, rf"^{function}: {pattern}")


@pytest.mark.parametrize("value", ["42", "4.2"])
@pytest.mark.parametrize("function", ["audio_embed", "audio_info"])
def test_audio_argument_of_the_wrong_type(db, function, value):
    expect_error(db, audio_sql(function).replace("?", value), (),
                 rf"^{function}: argument 1 \(audio\) must be TEXT \(a file path\) or BLOB")


# --- vectors -----------------------------------------------------------------------------------

def floats(values):
    return struct.pack(f"<{len(values)}f", *values)


GOOD = floats([0.05] * 384)


def vector_cases():
    cases = {}
    for size in (0, 1, 3, 5, 1537):
        cases[f"bytes-{size}"] = (bytes(size), r"is a BLOB of \d+ bytes, which is not a float32 vector")
    for n in (1, 383, 385, 768):
        cases[f"floats-{n}"] = (floats([0.05] * n), rf"has {n} dimensions, while model 'default' makes 384")
    for kind, value in (("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))):
        for at in (0, 200, 383):
            v = [0.05] * 384
            v[at] = value
            cases[f"{kind}-at-{at}"] = (floats(v), rf"holds (nan|NaN|inf|-inf) at element {at} of 384.*must be finite")
    return cases


VECTORS = vector_cases()


@pytest.mark.parametrize("argument", [1, 2])
@pytest.mark.parametrize("case", sorted(VECTORS))
def test_bad_vectors_name_their_argument(db, case, argument):
    blob, pattern = VECTORS[case]
    params = (blob, GOOD) if argument == 1 else (GOOD, blob)
    role = "audio_embedding" if argument == 1 else "text_embedding"
    expect_error(db, "INSERT INTO notes(score) VALUES (audio_text_score(?, ?))", params,
                 rf"^audio_text_score: argument {argument} \({role}\) {pattern}")


@pytest.mark.parametrize("value", ["42", "4.2", "'text'"])
def test_audio_embedding_of_the_wrong_type(db, value):
    expect_error(db, f"INSERT INTO notes(score) VALUES (audio_text_score({value}, 'dog'))", (),
                 r"^audio_text_score: argument 1 \(audio_embedding\) must be a BLOB")


@pytest.mark.parametrize("case", ["nan", "inf"])
def test_bad_query_vector_with_a_text_query(db, case):
    v = [0.05] * 384
    v[7] = float(case)
    expect_error(db, "INSERT INTO notes(score) VALUES (audio_text_score(?, 'a dog barks'))", (floats(v),),
                 r"^audio_text_score: argument 1 \(audio_embedding\) holds .* at element 7")


# --- text --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "sql, pattern",
    [
        ("SELECT text_embed(CAST(X'ff' AS TEXT))", r"^text_embed: argument 1 \(text\) is not valid UTF-8"),
        ("SELECT text_embed(CAST(X'c3' AS TEXT))", r"^text_embed: argument 1 \(text\) is not valid UTF-8"),
        ("SELECT text_embed(42)", r"^text_embed: argument 1 \(text\) must be TEXT, got INTEGER"),
        ("SELECT text_embed(X'00')", r"^text_embed: argument 1 \(text\) must be TEXT, got BLOB"),
        ("SELECT text_embed('no-such-model', 'dog')", r"^text_embed: .*no-such-model"),
        ("SELECT text_embed(CAST(X'ff' AS TEXT), 'dog')", r"^text_embed: argument 1 \(model\) is not valid UTF-8"),
        ("SELECT audio_text_score(?, CAST(X'ff' AS TEXT))", r"^audio_text_score: argument 2 \(text\) is not valid UTF-8"),
        ("SELECT audio_embed('no-such-model', '/tmp/x.wav')", r"^audio_embed: .*no-such-model"),
        ("SELECT audio_text_score('no-such-model', ?, 'dog')", r"^audio_text_score: .*no-such-model"),
        ("SELECT * FROM audio_embed_files('/tmp', 'no-such-model')", r"^audio_embed_files: .*no-such-model"),
        ("SELECT * FROM audio_embed_files('/no/such/folder')", r"^audio_embed_files: no such file or folder: /no/such/folder"),
        ("SELECT * FROM audio_embed_files('/no/such/*.wav')", r"^audio_embed_files: no such folder: /no/such"),
    ],
)
def test_bad_text_and_names(db, sql, pattern):
    expect_error(db, sql, (GOOD,) * sql.count("?"), pattern)


@pytest.mark.parametrize("text", ["", " ", "\x00", "a" * 2_000_000, "🔊" * 10_000, "dog " * 50_000])
def test_odd_but_valid_text_embeds_to_a_finite_unit_vector(db, text):
    blob = db.execute("SELECT text_embed(?)", (text,)).fetchone()[0]
    v = np.frombuffer(blob, dtype="<f4")
    assert v.shape == (384,) and np.all(np.isfinite(v))
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-3


# --- model bundles -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Broken copies of the default bundle's manifest (with its small files linked)."""
    base = tmp_path_factory.mktemp("bundles")
    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())

    def make(name, edit=None, files=True, raw=None):
        folder = base / name
        folder.mkdir()
        if files:
            for f in ("audio.onnx", "text.onnx", "tokenizer.json"):
                os.symlink(DEFAULT_BUNDLE / f, folder / f)
        m = json.loads(json.dumps(manifest))
        if edit:
            edit(m, folder)
        (folder / "manifest.json").write_text(raw if raw is not None else json.dumps(m))
        return folder

    def garbage_audio(m, folder):
        (folder / "audio.onnx").unlink()
        data = b"not an onnx model" * 100
        (folder / "audio.onnx").write_bytes(data)
        m["files"]["audio.onnx"] = hashlib.sha256(data).hexdigest()

    def truncated_text(m, folder):
        (folder / "text.onnx").unlink()
        (folder / "text.onnx").write_bytes((DEFAULT_BUNDLE / "text.onnx").read_bytes()[:1000])

    made = {
        "invalid-json": make("invalid-json", raw="{ not json"),
        "empty-manifest": make("empty-manifest", raw=""),
        "format-99": make("format-99", lambda m, f: m.update(format_version=99)),
        "max-tokens-0": make("max-tokens-0", lambda m, f: m["text"].update(max_tokens=0)),
        "embedding-dim-0": make("embedding-dim-0", lambda m, f: m.update(embedding_dim=0)),
        "unknown-key": make("unknown-key", lambda m, f: m.update(surprise=1)),
        "missing-onnx": make("missing-onnx", lambda m, f: (f / "audio.onnx").unlink()),
        "garbage-onnx": make("garbage-onnx", garbage_audio),
        "truncated-text": make("truncated-text", truncated_text),
        "no-manifest": base / "no-manifest",
        "file-not-folder": base / "invalid-json" / "manifest.json",
        "missing-folder": base / "missing-folder",
    }
    made["no-manifest"].mkdir()
    fifo_bundle = base / "fifo-manifest"
    fifo_bundle.mkdir()
    os.mkfifo(fifo_bundle / "manifest.json")
    made["fifo-manifest"] = fifo_bundle
    return made


BROKEN_BUNDLES = {
    "invalid-json": ("register", r"is not a valid manifest"),
    "empty-manifest": ("register", r"is not a valid manifest"),
    "format-99": ("register", r"has format_version 99.*re-export"),
    "max-tokens-0": ("register", r"max_tokens.*0"),
    "embedding-dim-0": ("register", r"embedding_dim.*0"),
    "unknown-key": ("register", r"unknown field `surprise`"),
    "missing-onnx": ("register", r"audio.onnx"),
    "garbage-onnx": ("audio", r"audio.onnx"),
    "truncated-text": ("text", r"text.onnx.*sha256"),
    "no-manifest": ("register", r"manifest.json"),
    "file-not-folder": ("register", r"(not a folder|is not a directory|manifest.json)"),
    "missing-folder": ("register", r"missing-folder"),
    "fifo-manifest": ("register", r"named pipe \(FIFO\)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_BUNDLES))
def test_broken_bundles(db, bundles, case, tmp_path):
    when, pattern = BROKEN_BUNDLES[case]
    name = f"broken-{case}"
    register = "INSERT INTO temp.audiotext_models(name, path) VALUES (?, ?)"
    if when == "register":
        expect_error(db, register, (name, str(bundles[case])), rf"audiotext_models.*{pattern}")
        return
    db.execute(register, (name, str(bundles[case])))
    db.commit()
    try:
        if when == "audio":
            wav = tmp_path / "ok.wav"
            ma.write_wav(wav, ma.realish(RATE, 1.0), RATE)
            expect_error(db, "INSERT INTO clips(path, embedding) VALUES ('x', audio_embed(?, ?))",
                         (name, str(wav)), rf"^audio_embed: .*{pattern}")
        else:
            expect_error(db, "INSERT INTO clips(path, embedding) VALUES ('x', text_embed(?, 'dog'))",
                         (name,), rf"^text_embed: .*{pattern}")
    finally:
        db.execute("DELETE FROM temp.audiotext_models WHERE name = ?", (name,))
        db.commit()


# --- the runtime library -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "path, pattern",
    [
        ("/no/such/libonnxruntime.so", r"no such file"),
        ("/etc/hostname", r"cannot load the ONNX Runtime library; tried /etc/hostname.*Fix: put libonnxruntime.so"),
        ("/dev/zero", r"is a character device, not a regular file"),
        ("/tmp", r"is a directory, not a regular file"),
    ],
)
def test_runtime_paths_that_are_not_a_runtime(path, pattern):
    # A fresh process: once a runtime is loaded, audiotext_runtime refuses any other.
    code = (
        "import sqlite3, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from conftest import open_connection\n"
        "c = open_connection()\n"
        "try:\n"
        f"    c.execute('SELECT audiotext_runtime(?)', ({path!r},)).fetchone()\n"
        "except sqlite3.Error as e:\n"
        "    print(e)\n"
        "print(c.execute('SELECT 1').fetchone())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^audiotext_runtime: .*{pattern}", out.stdout, re.M | re.S), out.stdout
    assert out.stdout.strip().endswith("(1,)")


def test_missing_runtime_is_a_clear_error(tmp_path):
    """The extension copied where no ONNX Runtime lies next to it, with the search variables
    pointing nowhere: embedding fails with a message that says how to install one."""
    lonely = tmp_path / "audiotext0.so"
    shutil.copy(EXTENSION.with_suffix(".so"), lonely)
    env = dict(os.environ, AUDIOTEXT_ORT_DYLIB=str(tmp_path / "none.so"), ORT_DYLIB_PATH=str(tmp_path / "none.so"))
    env.pop("LD_LIBRARY_PATH", None)
    code = (
        "import sqlite3\n"
        "c = sqlite3.connect(':memory:')\n"
        "c.enable_load_extension(True)\n"
        f"c.load_extension({str(tmp_path / 'audiotext0')!r})\n"
        "c.execute('INSERT INTO temp.audiotext_models(name, path) VALUES (?, ?)',"
        f" ('default', {str(DEFAULT_BUNDLE)!r}))\n"
        "try:\n"
        "    c.execute(\"SELECT text_embed('dog')\").fetchone()\n"
        "except sqlite3.Error as e:\n"
        "    print(e)\n"
        "print(c.execute('SELECT 1').fetchone())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^text_embed: .*ONNX Runtime", out.stdout, re.M), out.stdout
    assert out.stdout.strip().endswith("(1,)")


def test_the_suite_has_at_least_200_cases(request):
    cases = [item for item in request.session.items if item.module.__name__ == __name__]
    assert len(cases) >= 200, len(cases)


@pytest.mark.parametrize("case", sorted(c for c in VECTORS if c.startswith(("nan", "inf", "-inf", "bytes"))))
def test_audiotext_finite_guards_vectors_from_elsewhere(db, case):
    blob, pattern = VECTORS[case]
    expect_error(db, "INSERT INTO clips(path, embedding) VALUES ('x', audiotext_finite(?))", (blob,),
                 rf"^audiotext_finite: argument 1 \(vector\) {pattern}")


def test_audiotext_finite_passes_finite_vectors_and_works_in_a_check_constraint(db):
    assert db.execute("SELECT audiotext_finite(?) = ?", (GOOD, GOOD)).fetchone() == (1,)
    conn = open_connection()
    conn.execute("CREATE TABLE guarded(e BLOB CHECK (audiotext_finite(e) IS NOT NULL))")
    conn.execute("INSERT INTO guarded VALUES (?)", (GOOD,))
    with pytest.raises(sqlite3.Error, match="holds nan at element 0|holds NaN at element 0"):
        conn.execute("INSERT INTO guarded VALUES (?)", (floats([float("nan")] + [0.0] * 383),))
    assert conn.execute("SELECT count(*) FROM guarded").fetchone() == (1,)


def test_a_huge_text_costs_what_its_first_tokens_cost():
    """50 MB of text embeds like its first 256 tokens, without tokenizing all of it (which took
    6 GB and 50 s): peak memory stays within the text's own copies plus a little."""
    code = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from conftest import open_connection\n"
        "c = open_connection()\n"
        "short = c.execute('SELECT text_embed(?)', ('dog barks ' * 300,)).fetchone()[0]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "huge = c.execute('SELECT text_embed(?)', ('dog barks ' * 5_000_000,)).fetchone()[0]\n"
        "c.execute('SELECT text_embed(?)', ('a' * 50_000_000,)).fetchone()\n"
        "print(short == huge, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    same, grown_mb = out.stdout.split()
    assert same == "True"
    # Python's string, SQLite's copy and the UTF-8 view: about 4 x 50 MB; tokenizing it all: 6 GB.
    assert int(grown_mb) < 600, grown_mb


@pytest.mark.parametrize(
    "sql, pattern",
    [
        ("INSERT INTO temp.audiotext_models(name, path) VALUES (NULL, '/tmp')", r"^audiotext_models: name must be TEXT, got NULL"),
        ("INSERT INTO temp.audiotext_models(name, path) VALUES ('', '/tmp')", r"^audiotext_models: name must not be empty"),
        ("INSERT INTO temp.audiotext_models(name, path) VALUES ('m', 42)", r"^audiotext_models: path must be TEXT naming a bundle folder"),
        ("INSERT INTO temp.audiotext_models(name, path) VALUES ('m', '')", r"^audiotext_models: path is empty"),
        ("SELECT * FROM audio_embed_files('')", r"^audio_embed_files: argument 1 \(dir_or_glob\) is empty"),
        ("SELECT * FROM audio_embed_files(42)", r"^audio_embed_files: argument 1 \(dir_or_glob\) must be TEXT \(a folder or a glob\), got INTEGER"),
        # One check (args::dir_or_glob) for every folder reader: the same words from each.
        ("SELECT * FROM audio_files(X'00')", r"^audio_files: argument 1 \(dir_or_glob\) must be TEXT \(a folder or a glob\), got BLOB"),
        ("SELECT * FROM audio_files('')", r"^audio_files: argument 1 \(dir_or_glob\) is empty"),
        ("SELECT * FROM audio_segment_files('')", r"^audio_segment_files: argument 1 \(dir_or_glob\) is empty"),
        ("SELECT * FROM audio_embed_files", r"^audio_embed_files: argument 1 \(dir_or_glob\) is required"),
        ("SELECT audiotext_runtime('')", r"^audiotext_runtime: argument 1 \(path to libonnxruntime.so\) is empty"),
        ("SELECT audiotext_runtime(NULL)", r"^audiotext_runtime: argument 1 \(path to libonnxruntime.so\) must not be NULL"),
        ("SELECT text_embed(NULL, 'x')", r"^text_embed: argument 1 \(model\) must be TEXT"),
    ],
)
def test_bad_registry_and_table_arguments(db, sql, pattern):
    expect_error(db, sql, (), pattern)


def test_non_finite_files_in_a_folder_are_error_rows(tmp_path):
    good = ma.realish(RATE, 1.0)
    ma.write_wav(tmp_path / "good.wav", good, RATE)
    bad = good.copy()
    bad[100] = np.nan
    ma.write_float_wav(tmp_path / "nan.wav", bad, RATE)
    bad[100] = 1e30
    ma.write_float_wav(tmp_path / "huge.wav", bad, RATE)
    conn = open_connection()
    rows = {Path(p).name: (e, err) for p, e, err in
            conn.execute("SELECT path, embedding, error FROM audio_embed_files(?)", (str(tmp_path),))}
    assert rows["good.wav"][1] is None and np.all(np.isfinite(np.frombuffer(rows["good.wav"][0], "<f4")))
    assert rows["nan.wav"][0] is None and "holds a sample that is NaN" in rows["nan.wav"][1]
    assert rows["huge.wav"][0] is None and "holds a sample that is 1e30" in rows["huge.wav"][1]
