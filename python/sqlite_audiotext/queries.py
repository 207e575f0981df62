"""SQL that the command line and the Datasette plugin share. Parameters: :model (a registered
model name, 'default' for the package's), :query (text or a text_embed BLOB), :k.

`audiotext index` keeps `clip_index` (an audiotext_index over clips' embeddings, rowid = clips.id,
with the metadata columns CLIP_INDEX_COLUMNS) beside the clips table: whole-file searches answer
from it, filtered exactly inside the search by `clip_filters`."""

import os

# The metadata `clip_index` keeps for filtering, and how a file gets it.
CLIP_INDEX_COLUMNS = "folder text, extension text, duration float"


def clip_index_values(path, duration):
    """(folder, extension, duration) of a file for clip_index: its folder with a trailing
    slash (so a folder's prefix finds its subfolders too), its extension in lower case."""
    folder = os.path.dirname(os.path.abspath(path)).rstrip(os.sep) + os.sep
    return folder, os.path.splitext(path)[1].lower().lstrip("."), duration


def clip_filters(folder=None, extension=None, min_duration=None, max_duration=None):
    """SQL conditions on clip_index (alias i) for the filters given, and their parameters:
    files below `folder`, with `extension`, lasting min_duration to max_duration seconds."""
    conditions, params = [], {}
    if folder is not None:
        prefix = os.path.abspath(folder).rstrip(os.sep) + os.sep
        conditions.append("i.folder >= :folder_from AND i.folder < :folder_to")
        params.update(folder_from=prefix, folder_to=prefix + "\U0010ffff")
    if extension is not None:
        conditions.append("i.extension = :extension")
        params["extension"] = extension.lower().lstrip(".")
    if min_duration is not None:
        conditions.append("i.duration >= :min_duration")
        params["min_duration"] = float(min_duration)
    if max_duration is not None:
        conditions.append("i.duration <= :max_duration")
        params["max_duration"] = float(max_duration)
    return conditions, params


def best_clips_from_index(conditions):
    """The best whole files from clip_index, nearest first, as (path, NULL, NULL, score): score
    is the cosine, audio_text_score's value. :query is a text_embed vector (TEXT would be
    embedded by the index's model, `default`)."""
    where = "".join(f" AND {c}" for c in conditions)
    return f"""
SELECT c.path, NULL AS start, NULL AS end, 1 - i.distance AS score
  FROM clip_index i JOIN clips c ON c.id = i.rowid
 WHERE i.embedding MATCH :query AND i.k = :k{where}
 ORDER BY i.distance
"""


def best_moments(conditions):
    """BEST_MOMENTS over the segments of the files the filters allow."""
    if not conditions:
        return BEST_MOMENTS
    where = " AND ".join(conditions)
    return BEST_MOMENTS.replace(
        "FROM segments\n",
        f"FROM segments WHERE path IN (SELECT c.path FROM clips c JOIN clip_index i ON i.rowid = c.id WHERE {where})\n",
    )

# The margin below a file's best window score that still counts as part of an event.
EVENT_MARGIN = 0.05

# The best moments of a collection: in each file, the windows within EVENT_MARGIN of its best
# score for the query, merged where they overlap (the README's event query), best first.
BEST_MOMENTS = f"""
WITH scored AS (
  SELECT path, start, end, audio_text_score(:model, embedding, :query) AS score FROM segments
), kept AS (
  SELECT * FROM (SELECT *, max(score) OVER (PARTITION BY path) AS best FROM scored) WHERE score >= best - {EVENT_MARGIN}
), numbered AS (
  SELECT *, sum(new_event) OVER (PARTITION BY path ORDER BY start) AS event
    FROM (SELECT *, start > coalesce(lag(end) OVER (PARTITION BY path ORDER BY start), -1) AS new_event FROM kept)
)
SELECT path, min(start) AS start, max(end) AS end, max(score) AS score FROM numbered
 GROUP BY path, event ORDER BY score DESC LIMIT :k
"""

# The best whole files: rows (path, NULL, NULL, score), as BEST_MOMENTS gives them.
BEST_CLIPS = """
SELECT path, NULL AS start, NULL AS end, audio_text_score(:model, embedding, :query) AS score FROM clips
 WHERE embedding IS NOT NULL ORDER BY score DESC LIMIT :k
"""
