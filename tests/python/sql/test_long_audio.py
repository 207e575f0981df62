"""Long calls: `sqlite3_interrupt` stops audio_embed on a long file and audio_embed_files over a
folder, and the connection stays usable; audio_embed_files streams files too long to batch.

Debian's SQLite (3.40.1) has no sqlite3_is_interrupted; the extension notices the interrupt by
stepping a nested `SELECT 1` on the same connection (crates/sqlite-audiotext/src/interrupt.rs), which these tests
exercise through Python's `Connection.interrupt()`. No tight timing: each test measures the
full call first and asks the interrupted one to return well before that.

The memory side (peak RSS for an hour of audio) is measured by bench/long_audio_memory.py."""

import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import make_audio as ma
from conftest import threads_named
from test_audio_sql import aconn, bundle, embed, vec  # noqa: F401  (fixtures)

RATE = 16000
LONG_SECONDS = 180


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """Three minutes of a realistic-ish signal: about 155 windows for the default model."""
    path = tmp_path_factory.mktemp("long") / "three minutes.wav"
    ma.write_wav(path, ma.realish(RATE, LONG_SECONDS, seed=1), RATE, "s16")
    return path


def timed(conn, sql, args=()):
    started = time.perf_counter()
    rows = conn.execute(sql, args).fetchall()
    return rows, time.perf_counter() - started


def interrupted_call(conn, sql, args, after_seconds):
    """Runs `sql` while another thread calls conn.interrupt() after `after_seconds`; returns
    the error message and how long the call took."""
    timer = threading.Timer(after_seconds, conn.interrupt)
    timer.start()
    started = time.perf_counter()
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            conn.execute(sql, args).fetchall()
    finally:
        timer.cancel()
    return str(caught.value), time.perf_counter() - started


def decode_threads():
    """Threads of this process named like audio_embed_files' worker. rayon's pool threads, which
    the worker starts and which live on, inherit the name: compare counts, not with zero."""
    return threads_named("audiotext-decod")


@pytest.mark.parametrize("as_blob", [False, True], ids=["path", "blob"])
def test_interrupt_stops_audio_embed_on_a_long_file(aconn, long_wav, as_blob):
    source = long_wav.read_bytes() if as_blob else str(long_wav)
    (full,), full_seconds = timed(aconn, "SELECT audio_embed('a', ?)", (source,))
    assert len(full[0]) == 384 * 4
    message, seconds = interrupted_call(aconn, "SELECT audio_embed('a', ?)", (source,), min(0.5, full_seconds / 10))
    assert "interrupted" in message, message
    assert seconds < full_seconds / 2, (seconds, full_seconds)
    if as_blob:
        assert "audio blob of" in message, message
    else:
        # Ours, not only SQLite's: it says where it stopped.
        assert message.startswith("audio_embed: interrupted (sqlite3_interrupt) while embedding '"), message
        assert f"of {LONG_SECONDS} s" in message, message
    # The connection works afterwards, and the same call gives the same result.
    assert aconn.execute("SELECT 1 + 1").fetchone() == (2,)
    assert np.array_equal(embed(aconn, source), vec(full[0]))


def test_interrupt_stops_audio_embed_files_and_its_worker(aconn, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(48):
        ma.write_wav(folder / f"{i:02d}.wav", ma.realish(RATE, 6.0, seed=i), RATE, "s16")
    sql = "SELECT path, embedding, error FROM audio_embed_files(?, 'a')"
    rows, full_seconds = timed(aconn, sql, (str(folder),))
    assert len(rows) == 48 and all(r[2] is None for r in rows)
    time.sleep(0.5)  # the finished scan's worker has returned
    idle = decode_threads()
    message, seconds = interrupted_call(aconn, sql, (str(folder),), min(0.5, full_seconds / 10))
    assert message.startswith("audio_embed_files: interrupted (sqlite3_interrupt) after "), message
    assert message.endswith(" of 48 files; the statement was stopped as usual"), message
    assert seconds < full_seconds / 2, (seconds, full_seconds)
    # The decoding thread ends too, instead of decoding the rest of the folder.
    started = time.monotonic()
    while decode_threads() > idle and time.monotonic() < started + 5:
        time.sleep(0.01)
    assert decode_threads() == idle, f"the worker still runs {time.monotonic() - started:.1f} s after the interrupt"
    assert aconn.execute("SELECT count(*) FROM audio_embed_files(?, 'a')", (str(folder / "0*.wav"),)).fetchone() == (10,)


def test_interrupt_stops_audio_embed_files_inside_a_long_file(aconn, long_wav, tmp_path):
    """A file too long to batch is streamed by the cursor, and interruptible there too."""
    folder = tmp_path / "one"
    folder.mkdir()
    os.symlink(long_wav, folder / "long.wav")
    sql = "SELECT path, embedding, error FROM audio_embed_files(?, 'a')"
    rows, full_seconds = timed(aconn, sql, (str(folder),))
    assert rows[0][2] is None, rows[0][2]
    message, seconds = interrupted_call(aconn, sql, (str(folder),), min(0.5, full_seconds / 10))
    assert message.startswith("audio_embed_files: interrupted (sqlite3_interrupt) after 0 of 1 files"), message
    assert seconds < full_seconds / 2, (seconds, full_seconds)


def test_audio_embed_files_streams_long_files_among_short_ones(aconn, tmp_path):
    """Files longer than what a chunk may hold (about a minute for the default model) are
    embedded by streaming, in path order with the rest, with the same result as audio_embed."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    lengths = {"a.wav": 3.0, "b-long.wav": 95.0, "c.wav": 7.5, "d-long.wav": 70.0, "e.wav": 1.0}
    for i, (name, seconds) in enumerate(lengths.items()):
        ma.write_wav(folder / name, ma.realish(RATE, seconds, seed=10 + i), RATE, "s16")
    rows = aconn.execute("SELECT path, duration, embedding, error FROM audio_embed_files(?, 'a')", (str(folder),)).fetchall()
    assert [Path(r[0]).name for r in rows] == list(lengths)
    for path, duration, blob, error in rows:
        assert error is None, error
        assert abs(duration - lengths[Path(path).name]) < 0.01
        assert np.abs(vec(blob) - embed(aconn, path)).max() < 1e-5, path
