"""Moments inside recordings: `audio_segments(path_or_blob [, model [, hop_seconds]])` and
`audio_segment_files(dir_or_glob [, model [, hop_seconds]])` (crates/sqlite-audiotext/src/segments.rs), the way a
user calls them: the window layout against an independent statement of the manifest's windowing,
each row's embedding against `audio_embed` of the same samples, finding an event in a minute of
background by its sound, finding real ESC-50 sounds in a recording by text, folders with a bad
file, LIMIT and sqlite3_interrupt on a long file, and the errors.

Every file here is generated (numpy, make_audio.py) except the ESC-50 clips of the text search,
which skips without ../shared/data. The default model is used throughout (registered next to
the extension), so its manifest gives the window (`windowing.clip_seconds`), the hop, the
shortest kept tail (`min_seconds`) and the rate the times are counted at (`sample_rate`).

Bounded memory is tested on one hour of audio segmented at the longest hop (about half a minute
on two cores); bench/long_audio_memory.py measures peak RSS and time for every format."""

import csv
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import make_audio as ma
from conftest import DEFAULT_BUNDLE, EXTENSION, open_connection, threads_named, window_bounds

MANIFEST = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
AUDIO = MANIFEST["audio"]
MODEL_RATE = AUDIO["sample_rate"]
WINDOWING = AUDIO["windowing"]
DIM = MANIFEST["embedding_dim"]
RATE = 16000  # the rate of most generated files; the model resamples them to MODEL_RATE
THREAD_NAME = "audiotext-segme"  # "audiotext-segments" as /proc shows it (15 characters)


# --- an independent statement of the windows ------------------------------------------------------

def seconds_to_samples(seconds, rate):
    """A manifest length (read as float32) in samples, halves rounded up (stream.rs)."""
    return int(math.floor(float(np.float32(seconds)) * rate + 0.5))


def resampled_len(n, in_rate, out_rate):
    """round(n * out / in), halves up: the length of n samples resampled (resample.rs)."""
    return (2 * n * out_rate + in_rate) // (2 * in_rate)


def expected_windows(n_samples, file_rate, hop_seconds=None):
    """(start, end) in seconds of the windows of a file of `n_samples` at `file_rate`: the
    windows of conftest.window_bounds at the model's rate, with the hop overridden if asked."""
    total = resampled_len(n_samples, file_rate, MODEL_RATE)
    windowing = dict(WINDOWING, **({} if hop_seconds is None else {"hop_seconds": hop_seconds}))
    return [(s / MODEL_RATE, e / MODEL_RATE) for s, e in window_bounds(total, MODEL_RATE, windowing)]


# --- helpers --------------------------------------------------------------------------------------

def vec(blob):
    return np.frombuffer(blob, dtype="<f4")


def segments(conn, source, *args, columns="start, end, embedding"):
    placeholders = ", ".join("?" * (1 + len(args)))
    return conn.execute(f"SELECT {columns} FROM audio_segments({placeholders})", (source, *args)).fetchall()


def assert_layout(rows, expected, tolerance=1e-6):
    """Rows (start, end, ...) equal the expected windows, one for one."""
    got = [(r[0], r[1]) for r in rows]
    assert len(got) == len(expected), (len(got), len(expected), got[-3:], expected[-3:])
    for k, ((s, e), (xs, xe)) in enumerate(zip(got, expected)):
        assert abs(s - xs) < tolerance and abs(e - xe) < tolerance, (k, (s, e), (xs, xe))


def assert_unit_vectors(rows, column=2):
    for row in rows:
        blob = row[column]
        assert isinstance(blob, bytes) and len(blob) == DIM * 4, (type(blob), len(blob) if blob else None)
        v = vec(blob)
        assert np.all(np.isfinite(v))
        assert abs(float(np.linalg.norm(v.astype(np.float64))) - 1.0) < 1e-5


def still_works(conn, small_wav):
    """After an error: the connection answers and segments a file again."""
    assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
    assert conn.execute("SELECT count(*) FROM audio_segments(?)", (str(small_wav),)).fetchone() == (1,)


def expect_error(conn, sql, args, pattern, small_wav):
    with pytest.raises(sqlite3.OperationalError) as caught:
        conn.execute(sql, args).fetchall()
    assert re.search(pattern, str(caught.value)), str(caught.value)
    still_works(conn, small_wav)
    return str(caught.value)


def segment_threads():
    """Threads of this process named like audio_segments' workers."""
    return threads_named(THREAD_NAME)


def settled_segment_threads(timeout=5.0):
    """segment_threads() once it has stopped changing: a worker whose scan just ended may take
    a moment to exit (and threads it started may inherit its name and live on: compare counts)."""
    last = segment_threads()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = segment_threads()
        if now == last:
            return now
        last = now
    return last


def brown_noise(rate, seconds, amplitude, seed):
    """Integrated white noise with its drift removed: a low rumble, peak `amplitude`."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal(int(round(rate * seconds))))
    k = rate // 20
    x = x - np.convolve(x, np.ones(k) / k, mode="same")
    return amplitude * x / np.max(np.abs(x))


def chirp_train(rate, seconds=4.0, seed=5):
    """Bird-like: short rising chirps (1.5-6 kHz) at irregular intervals, peak 0.6."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(round(rate * seconds)))
    length = 0.1
    s = 0.0
    while s < seconds - 0.12:
        m = int(length * rate)
        i = int(s * rate)
        t = np.arange(m) / rate
        f0, f1 = rng.uniform(1500, 2500), rng.uniform(3500, 6000)
        phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / length * t * t)
        out[i:i + m] += np.sin(np.pi * t / length) ** 2 * np.sin(phase)
        s += rng.uniform(0.12, 0.2)
    return 0.6 * out / np.max(np.abs(out))


def vibrato_tone(rate, seconds=4.0):
    """A steady harmonic tone (440 Hz, nine harmonics) with a 6 Hz vibrato, peak 0.6."""
    t = np.arange(int(round(rate * seconds))) / rate
    phase = 2 * np.pi * 440 * t + 2 * np.sin(2 * np.pi * 6 * t)
    x = sum(np.sin(k * phase) / k for k in range(1, 10))
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    return 0.6 * envelope * x / np.max(np.abs(x))


@pytest.fixture(scope="module")
def small_wav(tmp_path_factory):
    """1.5 s: one window."""
    path = tmp_path_factory.mktemp("small") / "small.wav"
    ma.write_wav(path, ma.realish(RATE, 1.5, seed=3), RATE, "s16")
    return path


@pytest.fixture(scope="module")
def wav30(tmp_path_factory):
    """30 s at 16 kHz: 25 windows of the default model, the last one ending at 30 s."""
    path = tmp_path_factory.mktemp("thirty") / "thirty seconds.wav"
    ma.write_wav(path, ma.realish(RATE, 30.0, seed=1), RATE, "s16")
    return path


@pytest.fixture(scope="module")
def wav10(tmp_path_factory):
    """10 s at 16 kHz: 8 windows, for the checks that need a few."""
    path = tmp_path_factory.mktemp("ten") / "ten.wav"
    ma.write_wav(path, ma.realish(RATE, 10.0, seed=12), RATE, "s16")
    return path


@pytest.fixture(scope="module")
def wav30_rows(wav30):
    conn = open_connection()
    rows = segments(conn, str(wav30))
    conn.close()
    return rows


# --- 1. the window layout -------------------------------------------------------------------------

def test_window_layout_follows_the_manifest(wav30, wav30_rows):
    expected = expected_windows(int(30.0 * RATE), RATE)
    assert len(expected) >= 20, expected
    assert_layout(wav30_rows, expected)
    starts = [r[0] for r in wav30_rows]
    hop = WINDOWING["hop_seconds"]
    assert starts[0] == 0.0
    for a, b in zip(starts, starts[1:]):
        assert b > a and abs((b - a) - hop) < 1e-3, (a, b)
    assert abs(wav30_rows[-1][1] - 30.0) < 1e-9
    for s, e, _ in wav30_rows:
        assert e - s <= WINDOWING["clip_seconds"] + 1e-6
    assert_unit_vectors(wav30_rows)
    # Different moments of a varied signal are different vectors.
    assert len({r[2] for r in wav30_rows}) == len(wav30_rows)


def test_end_may_be_written_unquoted_and_columns_by_name(conn, wav10):
    all_rows = segments(conn, str(wav10))
    assert_layout(all_rows, expected_windows(10 * RATE, RATE))
    rows = conn.execute("SELECT start, end FROM audio_segments(?) WHERE end > 5 ORDER BY start", (str(wav10),)).fetchall()
    assert rows == [(s, e) for s, e, _ in all_rows if e > 5]
    rows = conn.execute('SELECT "end" - start AS length FROM audio_segments(?) LIMIT 1', (str(wav10),)).fetchall()
    assert abs(rows[0][0] - seconds_to_samples(WINDOWING["clip_seconds"], MODEL_RATE) / MODEL_RATE) < 1e-9
    # The hidden columns can be named as constraints too; the model by name gives the same rows.
    rows = conn.execute(
        "SELECT start, end, embedding FROM audio_segments WHERE source = ? AND model = 'default'", (str(wav10),)
    ).fetchall()
    assert rows == all_rows


def test_each_row_is_the_embedding_of_its_window(conn, tmp_path):
    """A file at the model's rate: window k is samples [start, end) of the file, and its row's
    embedding is audio_embed of exactly those samples (one window, pooled: the window itself)."""
    seconds = 6.0
    x = ma.realish(MODEL_RATE, seconds, seed=11).astype(np.float32)
    ma.write_wav(tmp_path / "six.wav", x, MODEL_RATE, "f32")
    rows = segments(conn, str(tmp_path / "six.wav"))
    expected = expected_windows(len(x), MODEL_RATE)
    assert_layout(rows, expected)
    assert expected[-1][1] - expected[-1][0] < WINDOWING["clip_seconds"]  # a shorter last window
    for k, (start, end, blob) in enumerate(rows):
        a, b = round(start * MODEL_RATE), round(end * MODEL_RATE)
        ma.write_wav(tmp_path / f"w{k}.wav", x[a:b], MODEL_RATE, "f32")
        alone = vec(conn.execute("SELECT audio_embed(?)", (str(tmp_path / f"w{k}.wav"),)).fetchone()[0])
        assert np.abs(vec(blob) - alone).max() < 1e-5, k


def test_trailing_piece_shorter_than_min_seconds_is_dropped(conn, tmp_path):
    """With the model's hop (about half its window) no tail is ever that short; with a 2 s hop
    the piece after the first window is kept from min_seconds on, dropped below."""
    clip = seconds_to_samples(WINDOWING["clip_seconds"], MODEL_RATE)
    min_len = seconds_to_samples(WINDOWING["min_seconds"], MODEL_RATE)
    hop = seconds_to_samples(2.0, MODEL_RATE)
    assert hop < clip and clip + min_len // 4 - hop < min_len
    for total, count in ((clip + min_len // 4, 1), (hop + min_len - 1, 1), (hop + min_len, 2)):
        x = ma.realish(MODEL_RATE, total / MODEL_RATE + 0.01, seed=2)[:total]
        path = tmp_path / f"t{total}.wav"
        ma.write_wav(path, x, MODEL_RATE, "s16")
        rows = segments(conn, str(path), "default", 2.0, columns="start, end")
        expected = expected_windows(total, MODEL_RATE, hop_seconds=2.0)
        assert len(expected) == count, (total, expected)
        assert_layout(rows, expected)
        if count == 1:
            assert rows == [(0.0, clip / MODEL_RATE)], (total, rows)
        else:
            assert rows[-1] == (hop / MODEL_RATE, total / MODEL_RATE), (total, rows)


# --- 2. one window --------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [1.5, 0.4])
def test_a_clip_shorter_than_a_window_is_one_row_equal_to_audio_embed(conn, tmp_path, seconds):
    path = tmp_path / "short.wav"
    ma.write_wav(path, ma.realish(RATE, seconds, seed=4), RATE, "s16")
    rows = segments(conn, str(path))
    assert len(rows) == 1
    start, end, blob = rows[0]
    assert start == 0.0 and abs(end - seconds) < 1e-9, (start, end)
    pooled = conn.execute("SELECT audio_embed(?)", (str(path),)).fetchone()[0]
    assert blob == pooled or np.abs(vec(blob) - vec(pooled)).max() < 1e-6


# --- 3. sources and arguments ---------------------------------------------------------------------

def test_blob_gives_the_same_rows_as_the_path(conn, wav30, wav30_rows):
    assert segments(conn, wav30.read_bytes()) == wav30_rows


def test_one_scan_per_row_of_a_join(conn, small_wav, wav10):
    """audio_segments(t.path) for each row of a table: the cursor restarts for every path."""
    conn.execute("CREATE TEMP TABLE recordings(path TEXT)")
    paths = [str(wav10), str(small_wav), None, str(wav10)]
    conn.executemany("INSERT INTO recordings VALUES (?)", [(p,) for p in paths])
    rows = conn.execute(
        "SELECT r.rowid, s.start, s.end, s.embedding FROM recordings r, audio_segments(r.path) s ORDER BY r.rowid, s.start"
    ).fetchall()
    for rowid, path in enumerate(paths, start=1):
        mine = [row[1:] for row in rows if row[0] == rowid]
        assert mine == (segments(conn, path) if path else []), rowid


def test_null_source_gives_no_rows(conn):
    assert conn.execute("SELECT * FROM audio_segments(NULL)").fetchall() == []
    assert conn.execute("SELECT * FROM audio_segment_files(NULL)").fetchall() == []


def test_a_named_model_is_used(conn, wav10):
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('again', ?)", (str(DEFAULT_BUNDLE),))
    assert segments(conn, str(wav10), "again") == segments(conn, str(wav10), "default") == segments(conn, str(wav10))


@pytest.mark.parametrize("hop", [0.5, 1, 2.0])
def test_hop_seconds(conn, wav10, hop):
    rows = segments(conn, str(wav10), "default", hop)
    assert_layout(rows, expected_windows(10 * RATE, RATE, hop_seconds=hop))
    starts = [r[0] for r in rows]
    assert all(abs((b - a) - hop) < 1e-3 for a, b in zip(starts, starts[1:]))
    assert abs(rows[-1][1] - 10.0) < 1e-9
    assert_unit_vectors(rows)


def test_hop_limits_are_inclusive(conn, small_wav, tmp_path):
    """0.05 s and exactly the window's length are allowed (on a 3 s file: cheap)."""
    path = tmp_path / "three.wav"
    ma.write_wav(path, ma.realish(RATE, 3.0, seed=6), RATE, "s16")
    for hop in (0.05, WINDOWING["clip_seconds"]):
        rows = segments(conn, str(path), "default", hop, columns="start, end")
        assert_layout(rows, expected_windows(3 * RATE, RATE, hop_seconds=hop))


@pytest.mark.parametrize(
    "hop, pattern",
    [
        (0.01, r"argument 3 \(hop_seconds\) is 0\.01: it must be from 0\.05 s to the model's window of 2\.299 s"),
        (0.0, r"argument 3 \(hop_seconds\) is 0: it must be from 0\.05 s"),
        (-1.0, r"argument 3 \(hop_seconds\) is -1: it must be from 0\.05 s"),
        (10.0, r"argument 3 \(hop_seconds\) is 10: it must be from 0\.05 s to the model's window"),
        (2.3, r"argument 3 \(hop_seconds\) is 2\.3: .*window of 2\.299 s"),
        (None, r"argument 3 \(hop_seconds\) is NaN"),
        ("x", r"argument 3 \(hop_seconds\) must be a number of seconds, got TEXT"),
        (b"\x00", r"argument 3 \(hop_seconds\) must be a number of seconds, got BLOB"),
    ],
    ids=["0.01", "zero", "negative", "10", "2.3", "NULL", "text", "blob"],
)
def test_bad_hop_seconds(conn, small_wav, hop, pattern):
    for table in ("audio_segments", "audio_segment_files"):
        source = str(small_wav) if table == "audio_segments" else str(small_wav.parent)
        message = expect_error(conn, f"SELECT * FROM {table}(?, 'default', ?)", (source, hop),
                               rf"^{table}: {pattern}", small_wav)
        if isinstance(hop, float) and hop > 0:
            assert "omit it for the model's own hop of 1.161 s" in message, message


def test_unknown_model_is_the_registry_error(conn, small_wav):
    for table, source in (("audio_segments", str(small_wav)), ("audio_segment_files", str(small_wav.parent))):
        expect_error(conn, f"SELECT * FROM {table}(?, 'zz')", (source,),
                     rf"^{table}: no model named 'zz': register it with INSERT INTO temp\.audiotext_models", small_wav)
        expect_error(conn, f"SELECT * FROM {table}(?, 42)", (source,),
                     rf"^{table}: argument 2 \(model\) must be TEXT naming a registered model, got INTEGER", small_wav)


def test_file_readers_are_directonly(conn, small_wav):
    conn.executescript(
        "CREATE VIEW v1 AS SELECT * FROM audio_segments('/tmp/x.wav');"
        "CREATE VIEW v2 AS SELECT * FROM audio_segment_files('/tmp');"
    )
    for view in ("v1", "v2"):
        with pytest.raises(sqlite3.OperationalError, match="unsafe use of virtual table"):
            conn.execute(f"SELECT * FROM main.{view}").fetchall()
    still_works(conn, small_wav)


# --- 4. finding a moment by its sound -------------------------------------------------------------

@pytest.mark.parametrize(
    "event_name, event_start",
    [("chirps", 17.3), ("chirps", 41.0), ("tone", 30.55)],
)
def test_finding_an_event_by_its_sound(conn, tmp_path, event_name, event_start):
    """A minute of quiet rumble with a 4 s event at a known time; the event alone, as its own
    file, finds the window that holds it."""
    event = chirp_train(RATE) if event_name == "chirps" else vibrato_tone(RATE)
    seconds = 60.0
    x = brown_noise(RATE, seconds, 0.05, seed=1) + ma.white_noise(RATE, seconds, 0.005, seed=2)
    i = int(round(event_start * RATE))
    x[i:i + len(event)] += event
    long_path, event_path = tmp_path / "long.wav", tmp_path / "event.wav"
    ma.write_wav(long_path, x, RATE, "s16")
    ma.write_wav(event_path, event, RATE, "s16")
    event_end = event_start + len(event) / RATE
    # `... ORDER BY audio_text_score(embedding, audio_embed(?event)) DESC LIMIT 1` finds the
    # same window, but audio_embed reads files (not deterministic), so SQLite calls it for every
    # row: the CTE embeds the event once.
    best = conn.execute(
        "WITH q(event) AS MATERIALIZED (SELECT audio_embed(?)) "
        "SELECT start, end FROM audio_segments(?), q ORDER BY audio_text_score(embedding, q.event) DESC LIMIT 1",
        (str(event_path), str(long_path)),
    ).fetchall()
    assert len(best) == 1
    start, end = best[0]
    hop = WINDOWING["hop_seconds"]
    print(f"{event_name} at {event_start:.2f}-{event_end:.2f} s: best window {start:.2f}-{end:.2f} s")
    assert start < event_end and end > event_start, (start, end)
    assert abs(start - event_start) <= hop + 1e-6 or (start >= event_start and end <= event_end), (start, end)


# --- 5. finding real sounds by text ---------------------------------------------------------------

QUERIES = {
    "dog": "a dog barking",
    "rain": "rain falling",
    "church_bells": "church bells ringing",
    "rooster": "a rooster crowing",
    "crying_baby": "a baby crying",
    "clock_tick": "a clock ticking",
}


def activity(y, frame=400):
    """The share of 25 ms frames within 20 dB of the clip's loudest: how much of it sounds."""
    frames = y[: len(y) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    return float((rms > 0.1 * rms.max()).mean())


def test_finding_real_sounds_by_text(conn, shared_data, tmp_path):
    """Six ESC-50 clips of distinct classes in a 90 s recording, 7-10 s of near-silence
    between them; the best window for each class's text overlaps that clip. The default model
    was trained on these clips: this checks the function, it measures nothing."""
    import soundfile as sf

    folder = shared_data / "esc50-16k"
    if not (folder / "labels.csv").exists():
        pytest.skip(f"{folder} is absent: this test needs ../shared/data/esc50-16k")
    with open(folder / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    clips = {}
    for cls in QUERIES:
        names = sorted(r["file_name"] for r in labels if r["class"] == cls)
        assert names, f"no {cls} clip in {folder / 'labels.csv'}"
        # The clip of the class that sounds the longest (many ESC-50 clips are mostly silence).
        clips[cls] = max(names, key=lambda n: activity(sf.read(folder / "audio" / n, dtype="float32")[0]))
    gaps = [8, 9, 7, 10, 8, 9, 8]
    parts = [ma.white_noise(RATE, gaps[0], 0.001, seed=9)]
    spans = {}
    t = float(gaps[0])
    for k, (cls, name) in enumerate(clips.items()):
        y, rate = sf.read(folder / "audio" / name, dtype="float32", always_2d=True)
        assert rate == RATE, (name, rate)
        y = y.mean(axis=1)
        spans[cls] = (t, t + len(y) / RATE)
        parts += [y, ma.white_noise(RATE, gaps[k + 1], 0.001, seed=10 + k)]
        t += len(y) / RATE + gaps[k + 1]
    recording = np.concatenate(parts)
    path = tmp_path / "six sounds.wav"
    ma.write_wav(path, recording, RATE, "s16")
    # The segments once into a table, then one query per text (as a user would index them).
    conn.execute("CREATE TEMP TABLE moments AS SELECT start, end, embedding FROM audio_segments(?)", (str(path),))
    assert conn.execute("SELECT count(*) FROM moments").fetchone()[0] == len(expected_windows(len(recording), RATE))
    hits = 0
    report = []
    for cls, text in QUERIES.items():
        start, end, score = conn.execute(
            "SELECT start, end, audio_text_score(embedding, ?) AS s FROM moments ORDER BY s DESC LIMIT 1", (text,)
        ).fetchone()
        a, b = spans[cls]
        hit = start < b and end > a
        hits += hit
        report.append(f"{'hit ' if hit else 'MISS'} {text!r}: clip {clips[cls]} at {a:.1f}-{b:.1f} s, "
                      f"best window {start:.2f}-{end:.2f} s (score {score:.3f}, start error {start - a:+.2f} s)")
    print("\n".join(report))
    assert hits >= 5, "\n".join(report)
    # The same through audio_segments directly, for one text.
    start, end = conn.execute(
        "SELECT start, end FROM audio_segments(?) ORDER BY audio_text_score(embedding, 'a baby crying') DESC LIMIT 1",
        (str(path),),
    ).fetchone()
    assert (start, end) == conn.execute(
        "SELECT start, end FROM moments ORDER BY audio_text_score(embedding, 'a baby crying') DESC LIMIT 1"
    ).fetchone()


# --- 6. folders -----------------------------------------------------------------------------------

def test_audio_segment_files_over_a_folder(conn, tmp_path):
    folder = tmp_path / "recordings"
    (folder / "sub").mkdir(parents=True)
    lengths = {"a-seven.wav": (7.0, RATE), "sub/c-three.wav": (3.5, 32000)}
    for name, (seconds, rate) in lengths.items():
        ma.write_wav(folder / name, ma.realish(rate, seconds, seed=len(name)), rate, "s16")
    (folder / "b-broken.wav").write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)))
    (folder / "notes.txt").write_text("not audio: not listed")
    rows = conn.execute("SELECT path, start, end, embedding, error FROM audio_segment_files(?)", (str(folder),)).fetchall()
    # Path order: a-seven.wav, b-broken.wav, then sub/c-three.wav (as audio_embed_files lists).
    order = []
    for r in rows:
        name = str(Path(r[0]).relative_to(folder))
        if not order or order[-1] != name:
            order.append(name)
    assert order == ["a-seven.wav", "b-broken.wav", "sub/c-three.wav"], order
    by_file = {name: [r for r in rows if Path(r[0]) == folder / name] for name in order}
    for name, (seconds, rate) in lengths.items():
        got = by_file[name]
        assert all(r[4] is None for r in got), [r[4] for r in got]
        assert_layout([r[1:] for r in got], expected_windows(int(seconds * rate), rate))
        assert_unit_vectors(got, column=3)
        # The same rows as audio_segments on that one file.
        assert [r[1:4] for r in got] == segments(conn, str(folder / name))
    broken = by_file["b-broken.wav"]
    assert len(broken) == 1, broken
    path, start, end, embedding, error = broken[0]
    assert (start, end, embedding) == (None, None, None)
    assert "b-broken.wav" in error and "not a supported audio file" in error, error
    assert not error.startswith("segments:"), error
    # A glob picks what it matches, and the hop applies to every file.
    glob_rows = conn.execute(
        "SELECT path, start, end, error FROM audio_segment_files(?, 'default', 0.5)", (str(folder / "**" / "c-*.wav"),)
    ).fetchall()
    assert {Path(r[0]).name for r in glob_rows} == {"c-three.wav"}
    assert_layout([r[1:] for r in glob_rows], expected_windows(int(3.5 * 32000), 32000, hop_seconds=0.5))
    assert conn.execute("SELECT count(*) FROM audio_segment_files(?)", (str(folder / "*.wav"),)).fetchone() == (
        len(by_file["a-seven.wav"]) + 1,
    )


def test_a_json_array_of_paths_names_the_files(conn, tmp_path):
    """Both file tables take a JSON array of paths (json_group_array of a table of files to do):
    those files, in path order, each once, whatever their extension; a missing one is an error row."""
    names = ["b.wav", "a.flac.bin"]
    for index, name in enumerate(names):
        ma.write_wav(tmp_path / name, ma.realish(RATE, 3.0, seed=20 + index), RATE, "s16")
    conn.execute("CREATE TABLE todo(path TEXT)")
    conn.executemany("INSERT INTO todo VALUES (?)", [(str(tmp_path / n),) for n in [*names, "b.wav", "gone.wav"]])
    listing = "(SELECT json_group_array(path) FROM todo)"
    files = conn.execute(f"SELECT path, error IS NULL, embedding FROM audio_embed_files({listing})").fetchall()
    assert [(Path(p).name, ok) for p, ok, _ in files] == [("a.flac.bin", 1), ("b.wav", 1), ("gone.wav", 0)]
    assert files[1][2] == conn.execute("SELECT audio_embed(?)", (str(tmp_path / "b.wav"),)).fetchone()[0]
    rows = conn.execute(f"SELECT path, start, end, error FROM audio_segment_files({listing})").fetchall()
    assert [Path(r[0]).name for r in rows if r[3] is None] == ["a.flac.bin"] * 2 + ["b.wav"] * 2, rows
    assert [Path(r[0]).name for r in rows if r[3] is not None] == ["gone.wav"]
    with pytest.raises(sqlite3.OperationalError, match="looks like a JSON array of paths but is not one"):
        conn.execute("SELECT * FROM audio_embed_files('[1, 2]')").fetchall()


def test_audio_segment_files_errors(conn, small_wav):
    expect_error(conn, "SELECT * FROM audio_segment_files", (),
                 r"^audio_segment_files: argument 1 \(dir_or_glob\) is required", small_wav)
    expect_error(conn, "SELECT * FROM audio_segment_files('')", (),
                 r"^audio_segment_files: argument 1 \(dir_or_glob\) is empty", small_wav)
    expect_error(conn, "SELECT * FROM audio_segment_files('/no/such')", (),
                 r"^audio_segment_files: no such file or folder: /no/such", small_wav)
    expect_error(conn, "SELECT * FROM audio_segment_files(x'00')", (),
                 r"^audio_segment_files: argument 1 \(dir_or_glob\) must be TEXT \(a folder or a glob\), got BLOB", small_wav)


# --- 7. LIMIT and interrupt on a long file --------------------------------------------------------

@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """Ten minutes: a ten-second realistic-ish piece sixty times (about 515 windows)."""
    path = tmp_path_factory.mktemp("ten") / "ten minutes.wav"
    piece = ma.realish(RATE, 10.0, seed=8)
    ma.write_wav(path, np.tile(piece, 60), RATE, "s16")
    return path


@pytest.fixture(scope="module")
def minute_scan_seconds(tmp_path_factory):
    """How long a full audio_segments scan of one minute takes here (the ten-minute scan takes
    about ten times that: measuring it would cost tens of seconds)."""
    path = tmp_path_factory.mktemp("minute") / "minute.wav"
    ma.write_wav(path, np.tile(ma.realish(RATE, 10.0, seed=8), 6), RATE, "s16")
    conn = open_connection()
    conn.execute("SELECT count(*) FROM audio_segments(?)", (str(path),)).fetchone()  # warm: the model loads
    started = time.perf_counter()
    (count,) = conn.execute("SELECT count(*) FROM audio_segments(?)", (str(path),)).fetchone()
    seconds = time.perf_counter() - started
    conn.close()
    assert count == len(expected_windows(60 * RATE, RATE))
    return seconds


def test_limit_stops_early_and_the_worker_ends(conn, ten_minutes, minute_scan_seconds):
    idle = settled_segment_threads()
    started = time.perf_counter()
    rows = conn.execute("SELECT start FROM audio_segments(?) LIMIT 2", (str(ten_minutes),)).fetchall()
    seconds = time.perf_counter() - started
    print(f"LIMIT 2 on ten minutes: {seconds:.2f} s; a full scan of one minute: {minute_scan_seconds:.2f} s")
    assert [r[0] for r in rows] == [w[0] for w in expected_windows(600 * RATE, RATE)[:2]]
    # A tenth of the ten-minute scan at most (it needs one batch of windows).
    assert seconds < minute_scan_seconds, (seconds, minute_scan_seconds)
    # The worker stops at its next window instead of segmenting the other nine minutes.
    waited = time.monotonic()
    while segment_threads() > idle and time.monotonic() < waited + 5:
        time.sleep(0.02)
    assert segment_threads() <= idle, f"the worker still runs {time.monotonic() - waited:.1f} s after LIMIT 2"
    assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
    # A cursor left open (not stepped to its end) is closed with the statement, worker and all.
    cursor = conn.execute("SELECT start, end FROM audio_segments(?)", (str(ten_minutes),))
    assert cursor.fetchone() == (0.0, expected_windows(600 * RATE, RATE)[0][1])
    assert segment_threads() > idle, f"no thread named {THREAD_NAME}* while a scan runs: the check above proves nothing"
    cursor.close()
    waited = time.monotonic()
    while segment_threads() > idle and time.monotonic() < waited + 5:
        time.sleep(0.02)
    assert segment_threads() <= idle, "the worker outlived its closed cursor"


SEGMENT_IN_A_FRESH_PROCESS = """
import sqlite3, sys
conn = sqlite3.connect(":memory:")
conn.enable_load_extension(True)
conn.load_extension(sys.argv[1])
count, last_end = 0, None
for start, end in conn.execute("SELECT start, end FROM audio_segments(?, 'default', ?)", (sys.argv[2], float(sys.argv[3]))):
    count, last_end = count + 1, end
# VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork and exec.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(count, last_end, peak_kb // 1024)
"""


def segment_in_a_fresh_process(path, hop):
    """(rows, end of the last row, peak RSS in MB) of a fresh Python process segmenting `path`."""
    done = subprocess.run([sys.executable, "-c", SEGMENT_IN_A_FRESH_PROCESS, str(EXTENSION), str(path), str(hop)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    count, last_end, peak_mb = done.stdout.split()
    return int(count), float(last_end), int(peak_mb)


def test_an_hour_is_segmented_in_bounded_memory(tmp_path):
    """One hour of 16 kHz audio is 230 MB as float32 samples, twice that at the model's rate: a
    scan that held the file, or its rows, would grow by hundreds of MB over a one-minute file.
    (Against ten seconds the peak is some 80 MB higher: ONNX Runtime's buffers for full batches
    of windows, which a minute already fills.)"""
    hop = WINDOWING["clip_seconds"]  # the longest hop: half the windows, the same streaming
    piece = ma.realish(RATE, 10.0, seed=8)
    minute, hour = tmp_path / "minute.wav", tmp_path / "hour.wav"
    ma.write_wav(minute, np.tile(piece, 6), RATE, "s16")
    ma.write_wav(hour, np.tile(piece, 360), RATE, "s16")
    _, _, minute_peak = segment_in_a_fresh_process(minute, hop)
    count, last_end, hour_peak = segment_in_a_fresh_process(hour, hop)
    print(f"peak RSS: one minute {minute_peak} MB, one hour {hour_peak} MB ({count} windows)")
    expected = expected_windows(3600 * RATE, RATE, hop_seconds=hop)
    assert count == len(expected) and abs(last_end - expected[-1][1]) < 1e-6, (count, expected[-1], last_end)
    assert hour_peak - minute_peak < 50, (minute_peak, hour_peak)


@pytest.mark.parametrize("as_blob", [False, True], ids=["path", "blob"])
def test_interrupt_stops_a_full_scan(conn, ten_minutes, minute_scan_seconds, small_wav, as_blob):
    source = ten_minutes.read_bytes() if as_blob else str(ten_minutes)
    timer = threading.Timer(min(0.5, minute_scan_seconds / 5), conn.interrupt)
    timer.start()
    started = time.perf_counter()
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            conn.execute("SELECT start, end, embedding FROM audio_segments(?)", (source,)).fetchall()
    finally:
        timer.cancel()
    seconds = time.perf_counter() - started
    message = str(caught.value)
    print(f"interrupted after {seconds:.2f} s: {message}")
    assert "interrupted" in message, message
    # Well before the ten-minute scan (about ten one-minute scans) would have ended.
    assert seconds < 2 * minute_scan_seconds + 1.0, (seconds, minute_scan_seconds)
    still_works(conn, small_wav)
    assert conn.execute("SELECT start FROM audio_segments(?) LIMIT 1", (source,)).fetchall() == [(0.0,)]


# --- 8. errors ------------------------------------------------------------------------------------

def test_missing_argument(conn, small_wav):
    expect_error(conn, "SELECT * FROM audio_segments", (),
                 r"^audio_segments: argument 1 \(path_or_blob\) is required: SELECT \* FROM audio_segments\('recording\.wav'\)",
                 small_wav)


def test_bad_paths(conn, small_wav, tmp_path):
    expect_error(conn, "SELECT * FROM audio_segments('')", (), r"^audio_segments: argument 1 \(path\) is empty", small_wav)
    expect_error(conn, "SELECT * FROM audio_segments(?)", ("clip\x00.wav",),
                 r"^audio_segments: argument 1 \(path\) contains a NUL character", small_wav)
    missing = tmp_path / "missing.wav"
    expect_error(conn, "SELECT * FROM audio_segments(?)", (str(missing),),
                 rf"^audio_segments: .*cannot open .*{re.escape(str(missing))}", small_wav)
    (tmp_path / "folder.wav").mkdir()
    expect_error(conn, "SELECT * FROM audio_segments(?)", (str(tmp_path / "folder.wav"),),
                 r"^audio_segments: .*folder\.wav'? is a directory, not a regular file", small_wav)
    expect_error(conn, "SELECT * FROM audio_segments(42)", (),
                 r"^audio_segments: argument 1 \(audio\) must be TEXT \(a file path\) or BLOB \(the file's bytes\), got INTEGER",
                 small_wav)


def test_fifo_is_refused_without_hanging(conn, small_wav, tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    outcome = {}

    def run():
        c = open_connection()
        try:
            c.execute("SELECT * FROM audio_segments(?)", (str(fifo),)).fetchall()
            outcome["rows"] = True
        except sqlite3.OperationalError as error:
            outcome["error"] = str(error)
        finally:
            c.close()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():
        # Blocked opening the pipe: a writer that closes at once lets it go on (and end).
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        worker.join(10)
        pytest.fail("audio_segments blocked on a named pipe instead of refusing it")
    assert "error" in outcome, outcome
    assert re.search(r"^audio_segments: .*pipe\.wav'? is a named pipe \(FIFO\), not a regular file", outcome["error"]), outcome
    still_works(conn, small_wav)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"this is a text file, not a sound" * 10, r"is not a supported audio file"),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), r"is not a supported audio file"),
        (b"", r"is empty \(0 bytes\)"),
    ],
    ids=["text", "random", "empty"],
)
def test_non_audio_bytes(conn, small_wav, tmp_path, content, pattern):
    path = tmp_path / "notes.wav"
    path.write_bytes(content)
    message = expect_error(conn, "SELECT * FROM audio_segments(?)", (str(path),), rf"^audio_segments: .*{pattern}", small_wav)
    assert "notes.wav" in message, message
    expect_error(conn, "SELECT * FROM audio_segments(?)", (content,), rf"^audio_segments: .*{pattern}", small_wav)


def test_header_only_wav_has_no_samples(conn, small_wav, tmp_path):
    data = small_wav.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: data.index(b"data") + 8])
    expect_error(conn, "SELECT * FROM audio_segments(?)", (str(tmp_path / "cut.wav"),),
                 r"^audio_segments: .*cut\.wav", small_wav)
