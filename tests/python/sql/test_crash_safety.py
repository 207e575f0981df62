"""A process killed in the middle of `INSERT ... SELECT FROM audio_embed_files(...)` leaves the
database intact and the transaction rolled back, in both journal modes; and folder walks survive
link loops without listing a file twice."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import make_audio as ma
from conftest import TESTS, open_connection

CLIPS = 800
WAIT_SECONDS = 1.5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Enough clips that embedding them all takes well over the WAIT_SECONDS the test waits:
    with the int8 default, 400 took under 4 s on two idle cores, so 800 (about 7 s)."""
    base = tmp_path_factory.mktemp("many")
    for i in range(CLIPS):
        ma.write_wav(base / f"clip-{i:03}.wav", ma.realish(16000, 3.0, seed=i), 16000)
    return base


INSERTER = """
import sys, time
sys.path.insert(0, {here!r})
from conftest import open_connection
conn = open_connection({db!r})
conn.execute("PRAGMA journal_mode={mode}")
print("inserting", flush=True)
conn.execute("INSERT INTO clips(path, embedding) SELECT path, embedding FROM audio_embed_files(?)", ({folder!r},))
conn.commit()
print("finished", flush=True)
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_kill_in_the_middle_of_an_insert_rolls_back(tmp_path, folder, mode):
    db = tmp_path / "clips.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT, embedding BLOB)")
    conn.execute("INSERT INTO clips(path) VALUES ('before-1'), ('before-2')")
    conn.commit()
    conn.close()
    code = INSERTER.format(here=str(TESTS), db=str(db), mode=mode, folder=str(folder))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "inserting"
    # Let it write: the first rows are embedded and inserted (into the journal or the WAL).
    time.sleep(WAIT_SECONDS)
    assert child.poll() is None, "the insert finished before it could be killed: add clips"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    conn = open_connection(str(db))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [r[0] for r in conn.execute("SELECT path FROM clips ORDER BY id")] == ["before-1", "before-2"]
    # And the database takes the whole insert afterwards.
    conn.execute("INSERT INTO clips(path, embedding) SELECT path, embedding FROM audio_embed_files(?)", (str(folder),))
    conn.commit()
    assert conn.execute("SELECT count(*) FROM clips WHERE embedding IS NOT NULL").fetchone() == (CLIPS,)
    conn.close()


def test_link_loops_end_and_no_file_is_listed_twice(tmp_path):
    root = tmp_path / "sounds"
    (root / "sub").mkdir(parents=True)
    ma.write_wav(root / "a.wav", ma.realish(16000, 1.0), 16000)
    ma.write_wav(root / "sub" / "b.wav", ma.realish(16000, 1.0, seed=1), 16000)
    os.symlink("..", root / "sub" / "up")  # a loop
    os.symlink(root / "sub", root / "sub-again")  # a second way into one folder
    os.symlink(root / "a.wav", root / "z-link.wav")  # a second name for one file
    os.symlink(root, root / "sub" / "root")  # another loop, by absolute path
    conn = open_connection()
    rows = conn.execute("SELECT path, error FROM audio_embed_files(?)", (str(root),)).fetchall()
    assert sorted(p for p, _ in rows) == [str(root / "a.wav"), str(root / "sub" / "b.wav")]
    assert all(error is None for _, error in rows)
    rows = conn.execute("SELECT path FROM audio_embed_files(?)", (f"{root}/**/*.wav",)).fetchall()
    assert len(rows) == 2
    # audio_files(), which the command line lists folders with, lists exactly the same files.
    (root / "notes.txt").write_text("not audio")
    ma.write_wav(root / "sub" / "C.WAV", ma.realish(16000, 0.5, seed=2), 16000)
    for source in (str(root), f"{root}/**/*.wav", f"{root}/sub"):
        listed = [p for (p,) in conn.execute("SELECT path FROM audio_files(?)", (source,))]
        embedded = [p for (p,) in conn.execute("SELECT path FROM audio_embed_files(?)", (source,))]
        assert listed == embedded and listed == sorted(listed), source
    assert str(root / "sub" / "C.WAV") in listed and not any(p.endswith(".txt") for p in listed)
    with pytest.raises(sqlite3.OperationalError, match=r"audio_files.*argument 1 \(dir_or_glob\) is required"):
        conn.execute("SELECT path FROM audio_files").fetchall()
