"""Connections that can load the extension, whichever Python this is.

The standard library's sqlite3 can load extensions only where Python was built so (Debian's
and python.org's are; pyenv's, macOS's system Python and many custom builds are not). `apsw`
(a dependency) ships its own, current SQLite and can load extensions everywhere; `pysqlite3`
does too. `load(conn)` takes a connection of any of the three; `connect(path)` returns one
that works: the standard library's where it can load extensions, else apsw's, wrapped in the
small part of `sqlite3.Connection` the command line uses.
"""

import sqlite3

try:
    import apsw
except ImportError:  # apsw is a dependency; a source install without it still has sqlite3
    apsw = None

#: Errors any of the supported connections raise, for `except`.
DATABASE_ERRORS = (sqlite3.Error,) + ((apsw.Error,) if apsw is not None else ())

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def can_load_extensions(conn) -> bool:
    """Whether `conn` (sqlite3, pysqlite3 or apsw) has the calls that load an extension."""
    return hasattr(conn, "enable_load_extension") and hasattr(conn, "load_extension")


def stdlib_can_load_extensions() -> bool:
    """Whether this Python's own sqlite3 module was built with extension loading."""
    return can_load_extensions(sqlite3.Connection)


def no_loader_message() -> str:
    return ("this Python's sqlite3 module cannot load extensions (it was built without "
            "SQLITE_ENABLE_LOAD_EXTENSION): use sqlite_audiotext.connect(path), which falls back "
            "to apsw (pip install apsw), or pass a connection of apsw or pysqlite3 "
            "(pip install pysqlite3-binary) to load()")


class ApswConnection:
    """An apsw connection behind the calls of `sqlite3.Connection` the command line makes:
    `execute`, `executemany`, `executescript`, `commit`, `rollback`, `close` and `with`. Like
    sqlite3's default (legacy) transaction control, a write opens a transaction that `commit`
    (or leaving a `with` block) ends; apsw on its own would commit each statement."""

    def __init__(self, conn):
        self.apsw = conn

    def _begin_if_writing(self, sql):
        if not self.apsw.in_transaction and sql.lstrip().upper().startswith(_WRITES):
            self.apsw.execute("BEGIN")

    def execute(self, sql, parameters=()):
        self._begin_if_writing(sql)
        return self.apsw.execute(sql, parameters)

    def executemany(self, sql, sequence):
        self._begin_if_writing(sql)
        return self.apsw.executemany(sql, sequence)

    def executescript(self, script):
        self.commit()
        return self.apsw.execute(script)

    def commit(self):
        if self.apsw.in_transaction:
            self.apsw.execute("COMMIT")

    def rollback(self):
        if self.apsw.in_transaction:
            self.apsw.execute("ROLLBACK")

    def close(self):
        self.apsw.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.commit()
        else:
            self.rollback()
        return False

    # What load() calls.
    def enable_load_extension(self, enable):
        self.apsw.enable_load_extension(enable)

    def load_extension(self, path):
        self.apsw.load_extension(path)


def unwrap(conn):
    """The connection load() talks to: apsw's own inside an ApswConnection."""
    return conn.apsw if isinstance(conn, ApswConnection) else conn


def open_connection(path, driver=None):
    """A connection to `path` that can load extensions (not yet loaded): `driver` "sqlite3" or
    "apsw", or by default the standard library's where it can load extensions, else apsw."""
    if driver not in (None, "sqlite3", "apsw"):
        raise ValueError(f"driver={driver!r}: use 'sqlite3', 'apsw' or None (the first that can load extensions)")
    stdlib_loads = stdlib_can_load_extensions()
    if driver == "sqlite3" and not stdlib_loads:
        raise RuntimeError(no_loader_message())
    if driver == "sqlite3" or (driver is None and stdlib_loads):
        return sqlite3.connect(path)
    if apsw is None:
        raise RuntimeError("this Python's sqlite3 module cannot load extensions and apsw is not "
                           "installed: pip install apsw (it brings its own SQLite), or use a Python "
                           "whose sqlite3 can (Debian's, python.org's)")
    return ApswConnection(apsw.Connection(str(path)))
