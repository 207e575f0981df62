/* sqlite3_vtab_in() and its iterators (SQLite 3.38+), which let a virtual table receive all the
 * values of `rowid IN (...)` in one xFilter call. rusqlite's bindings are those of the oldest
 * SQLite we load into, so they lack these; sqlite-vec's sqlite3ext.h has them, and sqlite-vec's
 * entry point has already stored the API table of the SQLite that loaded us (sqlite3_api).
 * Each call first checks that the running SQLite has the function. Linked into an app
 * (SQLITE_CORE, the crate without its `loadable` feature) the calls go to its SQLite directly. */
#include "sqlite3ext.h"
#ifdef SQLITE_CORE
#define HAS_VTAB_IN (sqlite3_libversion_number() >= 3038000)
#else
SQLITE_EXTENSION_INIT3
#define HAS_VTAB_IN (sqlite3_api != 0 && sqlite3_libversion_number() >= 3038000)
#endif

/* sqlite3_vtab_in(info, constraint, handle), or 0 where SQLite is older than 3.38. */
int audiotext_vtab_in(sqlite3_index_info *info, int constraint, int handle) {
  return HAS_VTAB_IN ? sqlite3_vtab_in(info, constraint, handle) : 0;
}

/* sqlite3_vtab_in_first/next; SQLITE_ERROR where SQLite is older than 3.38 (never reached:
 * xBestIndex asks for the list only where audiotext_vtab_in said yes). */
int audiotext_vtab_in_first(sqlite3_value *list, sqlite3_value **value) {
  return HAS_VTAB_IN ? sqlite3_vtab_in_first(list, value) : SQLITE_ERROR;
}

int audiotext_vtab_in_next(sqlite3_value *list, sqlite3_value **value) {
  return HAS_VTAB_IN ? sqlite3_vtab_in_next(list, value) : SQLITE_ERROR;
}
