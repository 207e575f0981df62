"""The package in a Python whose sqlite3 cannot load extensions: this machine's pyenv `python3`
(3.11.7, built without SQLITE_ENABLE_LOAD_EXTENSION), like macOS's system Python. In a fresh
venv of it the wheel installs, the command line indexes and searches real sounds through apsw
(a dependency, with its own SQLite), `load()` takes apsw and pysqlite3 connections, and apsw's
newer SQLite hands `LIMIT` to audiotext_index (3.40's cannot). Skipped, saying so, on a machine
with no such Python."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_package import PLAIN_PATH, fresh_venv, readme_snippet, recordings, run, wheel  # noqa: F401 (fixtures)

NO_LOADER_CHECK = ("import sqlite3, sys; "
                   "sys.exit(0 if sys.version_info >= (3, 9) and not hasattr(sqlite3.Connection, 'enable_load_extension') else 1)")


def pythons_without_loader():
    """Interpreters here whose sqlite3 cannot load extensions: the first `python3` on the PATH
    (pyenv's shim on these machines), then pyenv's versions."""
    candidates = []
    first = shutil.which("python3")
    if first:
        candidates.append(first)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob("3.*/bin/python3"), reverse=True)]
    for python in candidates:
        try:
            done = subprocess.run([python, "-c", NO_LOADER_CHECK], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            yield subprocess.run([python, "-c", "import sys; print(sys.executable)"],
                                 capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def no_loader_venv(wheel, tmp_path_factory):  # noqa: F811 (the imported fixture)
    python = next(pythons_without_loader(), None)
    if python is None:
        pytest.skip("no Python here is built without sqlite3 extension loading (pyenv's python3 "
                    "is on these machines); the fallback to apsw is not exercised")
    folder = tmp_path_factory.mktemp("no-loader") / "env"
    return fresh_venv(folder, wheel, "pysqlite3-binary", python=python)


def python_in(venv, code, cwd):
    return run(venv, [str(venv / "bin" / "python"), "-c", code], cwd=cwd)


def test_that_python_really_cannot_load_extensions(no_loader_venv, tmp_path):
    done = python_in(no_loader_venv, NO_LOADER_CHECK, tmp_path)
    assert done.returncode == 0, "the venv's sqlite3 can load extensions after all"


def test_the_command_line_indexes_and_searches_through_apsw(no_loader_venv, recordings, tmp_path):  # noqa: F811
    audiotext = str(no_loader_venv / "bin" / "audiotext")
    database = tmp_path / "sounds.db"
    done = run(no_loader_venv, [audiotext, "index", str(recordings), str(database)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    count = len(list(recordings.iterdir()))
    assert f"{database}: {count} files indexed, 0 with errors" in done.stdout, done.stdout
    done = run(no_loader_venv, [audiotext, "search", str(database), "a rooster crowing", "-k", "3"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.endswith("rooster.wav"), done.stdout
    # Resumable there too: a second run skips every file, commits nothing new.
    done = run(no_loader_venv, [audiotext, "index", str(recordings), str(database)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{count} unchanged, 0 to index" in done.stdout, done.stdout


def test_the_package_readme_runs_there(no_loader_venv, recordings):  # noqa: F811
    """python/README.md's lines, as in test_package, in the Python that cannot load extensions."""
    snippet = readme_snippet().replace("'a dog barking'", "'thunder'")
    done = python_in(no_loader_venv, snippet, recordings.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    ranked = eval(done.stdout)
    assert len(ranked) == 5 and Path(ranked[0][0]).name == "thunder.ogg", ranked


def test_load_takes_apsw_and_limit_reaches_the_index(no_loader_venv, tmp_path):
    code = """
import apsw, sqlite_audiotext
c = apsw.Connection(":memory:")
sqlite_audiotext.load(c)
c.execute("CREATE VIRTUAL TABLE idx USING audiotext_index(embedding float[384])")
c.execute("INSERT INTO idx(rowid, embedding) VALUES (1, text_embed('heavy rain on a roof')), (2, text_embed('a dog barks')), (3, text_embed('a jet takes off'))")
rows = c.execute("SELECT rowid, distance FROM idx WHERE embedding MATCH text_embed('a downpour') ORDER BY distance LIMIT 2").fetchall()
print(apsw.sqlite_lib_version(), [r[0] for r in rows])
"""
    done = python_in(no_loader_venv, code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    version, rowids = done.stdout.split(" ", 1)
    assert tuple(map(int, version.split(".")[:2])) >= (3, 38), version
    rowids = eval(rowids)
    assert len(rowids) == 2 and rowids[0] == 1, done.stdout


def test_load_takes_pysqlite3(no_loader_venv, tmp_path):
    code = ("from pysqlite3 import dbapi2 as sqlite3; import sqlite_audiotext; c = sqlite3.connect(':memory:'); "
            "sqlite_audiotext.load(c); print(len(c.execute(\"SELECT text_embed('a bell tolls')\").fetchone()[0]))")
    done = python_in(no_loader_venv, code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(384 * 4)


def test_connect_falls_back_to_apsw_and_load_says_how(no_loader_venv, tmp_path):
    code = """
import sqlite3, sqlite_audiotext
db = sqlite_audiotext.connect("x.db")
print(type(db).__name__, type(db.apsw).__module__)
with db:
    db.execute("CREATE TABLE t(v)")
    db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
try:
    with db:
        db.execute("INSERT INTO t VALUES (3)")
        raise KeyError
except KeyError:
    pass
print(db.execute("SELECT count(*) FROM t").fetchone()[0])
try:
    sqlite_audiotext.load(sqlite3.connect(":memory:"))
except RuntimeError as e:
    print(e)
"""
    done = python_in(no_loader_venv, code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, count, message = done.stdout.splitlines()[:3]
    assert kind == "ApswConnection apsw", done.stdout
    assert count == "2", "a `with` block that raised must roll its write back"
    assert "cannot load extensions" in message and "sqlite_audiotext.connect" in message and "apsw" in message


def test_the_datasette_plugin_says_where_it_cannot_work(no_loader_venv, tmp_path):
    plugin = Path(__file__).resolve().parents[3] / "python" / "datasette-audiotext"
    env = dict(os.environ, PATH=PLAIN_PATH)
    done = subprocess.run([str(no_loader_venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                           str(plugin)], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    code = ("import sqlite3; from datasette_audiotext import prepare_connection\n"
            "try:\n    prepare_connection(sqlite3.connect(':memory:'))\nexcept RuntimeError as e:\n    print(e)")
    done = python_in(no_loader_venv, code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot load extensions" in done.stdout and "pysqlite3-binary" in done.stdout, done.stdout
