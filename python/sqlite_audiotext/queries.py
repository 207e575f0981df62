"""SQL that the command line and the Datasette plugin share. Parameters: :model (a registered
model name, 'default' for the package's), :query (text or a text_embed BLOB), :k."""

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
