"""datasette-audiotext: sqlite-audiotext inside Datasette.

- `prepare_connection`: the extension is loaded into every connection.
- `render_cell`: a `path` cell naming an audio file becomes an `<audio>` player; with `start`
  and `end` in the row, the player's source is that moment (a `#t=start,end` media fragment).
- `/-/audiotext`: the search page (filters by folder, extension and duration, answered from the
  database's `clip_index` when `audiotext index` made one); `/-/audiotext/audio`: the audio files themselves, served
  only when the database lists them in a `path` column and the actor may view the database,
  with byte ranges (browsers seek with them).
"""

import mimetypes
import os
import stat
from urllib.parse import urlencode

import sqlite_audiotext
from sqlite_audiotext.queries import BEST_CLIPS, best_clips_from_index, best_moments, clip_filters
from datasette import hookimpl
from datasette.utils import escape_sqlite
from datasette.utils.asgi import Response
from markupsafe import Markup, escape

AUDIO_TYPES = {
    ".wav": "audio/wav", ".wave": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
    ".oga": "audio/ogg", ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".aac": "audio/aac",
    ".mp4": "audio/mp4", ".mka": "audio/x-matroska", ".mkv": "audio/x-matroska",
}
DEFAULT_K = 10
MAX_K = 100


@hookimpl
def prepare_connection(conn):
    # Datasette opens its own connections, with pysqlite3 when it is installed, else the
    # standard library's sqlite3; only those that can load extensions can run the plugin.
    if not sqlite_audiotext.connection.can_load_extensions(conn):
        raise RuntimeError(
            "datasette-audiotext: this Python's sqlite3 cannot load extensions, so Datasette "
            "cannot load sqlite-audiotext. Install pysqlite3-binary beside Datasette (Datasette "
            "uses it when present: pip install pysqlite3-binary), or run Datasette on a Python "
            "whose sqlite3 can (Debian's, python.org's)")
    sqlite_audiotext.load(conn)


def audio_url(datasette, database, path, start=None, end=None):
    url = datasette.urls.path("/-/audiotext/audio?" + urlencode({"database": database, "path": path}))
    if start is not None and end is not None:
        url += f"#t={float(start):.2f},{float(end):.2f}"
    return url


def player(datasette, database, path, start=None, end=None):
    return Markup(
        f'<audio class="audiotext-player" controls preload="metadata" '
        f'src="{escape(audio_url(datasette, database, path, start, end))}"></audio>'
    )


def row_value(row, key):
    try:
        return row[key]
    except (IndexError, KeyError, TypeError):
        return None


@hookimpl
def render_cell(row, value, column, database, datasette):
    if column != "path" or not isinstance(value, str):
        return None
    if os.path.splitext(value)[1].lower() not in AUDIO_TYPES:
        return None
    start, end = row_value(row, "start"), row_value(row, "end")
    return Markup(f'{player(datasette, database, value, start, end)}<br><span class="audiotext-path">{escape(value)}</span>')


async def listed_in_database(db, path):
    """Whether a table of `db` has a `path` column holding `path`."""
    for table in await db.table_names():
        columns = await db.table_columns(table)
        if "path" in columns:
            found = await db.execute(f"SELECT 1 FROM {escape_sqlite(table)} WHERE path = ? LIMIT 1", [path])
            if found.first():
                return True
    return False


def byte_range(header, size):
    """(first, last) of a `Range: bytes=a-b` header, or None for the whole file."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes="):].partition("-")
    try:
        if first == "":
            length = int(last)
            return (max(size - length, 0), size - 1) if length > 0 else None
        first = int(first)
        last = int(last) if last else size - 1
    except ValueError:
        return None
    if first >= size or last < first:
        return None
    return first, min(last, size - 1)


async def serve_audio(request, datasette):
    database = request.args.get("database")
    path = request.args.get("path")
    if not database or not path:
        return Response.text("audiotext: ?database= and ?path= are required", status=400)
    if database not in datasette.databases:
        return Response.text(f"audiotext: no database named {database}", status=404)
    await datasette.ensure_permissions(request.actor, [("view-database", database), "view-instance"])
    if os.path.splitext(path)[1].lower() not in AUDIO_TYPES:
        return Response.text("audiotext: not an audio file name", status=404)
    if not await listed_in_database(datasette.get_database(database), path):
        return Response.text(f"audiotext: {database} does not list this path", status=404)
    try:
        info = os.stat(path)
    except OSError:
        return Response.text("audiotext: the file is missing", status=404)
    if not stat.S_ISREG(info.st_mode):
        return Response.text("audiotext: not a regular file", status=404)
    size = info.st_size
    wanted = byte_range(request.headers.get("range"), size)
    first, last = wanted or (0, size - 1)
    with open(path, "rb") as file:
        file.seek(first)
        body = file.read(max(last - first + 1, 0))
    headers = {"accept-ranges": "bytes"}
    if wanted:
        headers["content-range"] = f"bytes {first}-{last}/{size}"
    content_type = AUDIO_TYPES.get(os.path.splitext(path)[1].lower()) or mimetypes.guess_type(path)[0]
    return Response(body, status=206 if wanted else 200, headers=headers, content_type=content_type)


async def searchable_databases(datasette):
    names = []
    for name, db in datasette.databases.items():
        if name.startswith("_"):
            continue
        if "clips" in await db.table_names():
            names.append(name)
    return names


def search_filters(args):
    """The search form's filters (clip_filters' arguments), and an error for a bad one."""
    filters = {"folder": args.get("folder") or None, "extension": args.get("extension") or None}
    for name in ("min_duration", "max_duration"):
        text = (args.get(name) or "").strip()
        try:
            filters[name] = float(text) if text else None
        except ValueError:
            return {**filters, "min_duration": None, "max_duration": None}, f"{name.replace('_', ' ')} must be a number of seconds, got {text!r}"
    return filters, None


async def search_page(request, datasette):
    await datasette.ensure_permissions(request.actor, ["view-instance"])
    databases = await searchable_databases(datasette)
    query = (request.args.get("q") or "").strip()
    database = request.args.get("database") or (databases[0] if databases else None)
    try:
        k = min(max(int(request.args.get("k") or DEFAULT_K), 1), MAX_K)
    except ValueError:
        k = DEFAULT_K
    filters, error = search_filters(request.args)
    results, moments = [], False
    if database is not None and database not in databases:
        error = f"{database} has no clips table to search"
    elif query and database and not error:
        await datasette.ensure_permissions(request.actor, [("view-database", database)])
        db = datasette.get_database(database)
        tables = await db.table_names()
        conditions, params = clip_filters(**filters)
        has_index = "clip_index" in tables
        moments = "segments" in tables and (await db.execute("SELECT EXISTS (SELECT 1 FROM segments)")).first()[0]
        if conditions and not has_index:
            error = f"{database} has no clip_index, which filters need: run audiotext index again on its folder"
            rows = None
        elif moments:
            rows = await db.execute(best_moments(conditions), {"model": "default", "query": query, "k": k, **params})
        else:
            sql = best_clips_from_index(conditions) if has_index else BEST_CLIPS
            rows = await db.execute(sql, {"model": "default", "query": query, "k": k, **params})
        for path, start, end, score in rows.rows if rows else []:
            results.append({
                "path": path, "start": start, "end": end, "score": score,
                "player": player(datasette, database, path, start, end),
            })
    return Response.html(await datasette.render_template(
        "audiotext_search.html",
        {"databases": databases, "database": database, "q": query, "k": k, "results": results,
         "moments": moments, "error": error, "filters": {k: ("" if v is None else v) for k, v in filters.items()}},
        request=request,
    ))


@hookimpl
def register_routes():
    return [
        (r"^/-/audiotext$", search_page),
        (r"^/-/audiotext/audio$", serve_audio),
    ]


@hookimpl
def menu_links(datasette, actor):
    return [{"href": datasette.urls.path("/-/audiotext"), "label": "Search sounds"}]
