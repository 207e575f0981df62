"""sqlite-audiotext: search sound with words inside SQLite.

    import sqlite3, sqlite_audiotext
    db = sqlite3.connect("sounds.db")
    sqlite_audiotext.load(db)
    db.execute("CREATE TABLE clips AS SELECT path, embedding FROM audio_embed_files('recordings/')")
    db.execute("SELECT path FROM clips ORDER BY audio_text_score(embedding, 'a dog barking') DESC LIMIT 5")

The package holds the loadable extension (audiotext0.so) and its default model (models/default:
an aiSFX audio encoder with an ESC-50 head, all-MiniLM-L6-v2 for text). ONNX Runtime is not
copied: it comes from the `onnxruntime` package, a dependency, and `load` points the extension
at the library inside it.
"""

import importlib.util
import sqlite3
from pathlib import Path

__all__ = ["load", "loadable_path", "onnxruntime_path", "default_model_path"]

_HERE = Path(__file__).resolve().parent


def loadable_path() -> str:
    """The extension's path without its suffix, as `conn.load_extension` and the sqlite3
    shell's `.load` take it."""
    return str(_HERE / "audiotext0")


def default_model_path() -> str:
    """The default model bundle shipped in the package (registered as `default` on load)."""
    return str(_HERE / "models" / "default")


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


def load(conn: sqlite3.Connection) -> None:
    """Loads the extension into `conn` and points it at onnxruntime's library. Extension loading
    is switched on for the load only, then off again."""
    if not hasattr(conn, "enable_load_extension"):
        raise RuntimeError(
            "this Python's sqlite3 module cannot load extensions (it was built without "
            "SQLITE_ENABLE_LOAD_EXTENSION); use a Python that can, such as Debian's or python.org's"
        )
    runtime = onnxruntime_path()
    conn.enable_load_extension(True)
    try:
        conn.load_extension(loadable_path())
    finally:
        conn.enable_load_extension(False)
    # Loads the runtime now (once per process; later calls with the same file are no-ops), so
    # a missing or broken one is reported here rather than at the first query.
    conn.execute("SELECT audiotext_runtime(?)", (runtime,)).fetchone()
