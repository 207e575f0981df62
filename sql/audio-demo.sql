-- sqlite-audiotext audio demo: index a folder of real sounds, then find them by description.
-- scripts/demo.sh runs it with @sounds set to a folder (or glob) of audio files whose names say
-- what they are, so each hit can be judged by eye, e.g.
--   sqlite3 -cmd ".parameter set @sounds \"'.cache/demo-sounds/everyday'\"" :memory: < sql/audio-demo.sql
.load dist/audiotext0
.mode box

CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT UNIQUE, name TEXT, duration REAL, embedding BLOB);
-- Decoding and log-mel run in parallel; the encoder runs in batches; a bad file fills `error`.
INSERT INTO clips(path, duration, embedding)
  SELECT path, duration, embedding FROM audio_embed_files(@sounds) WHERE error IS NULL;
UPDATE clips SET name = replace(path, rtrim(path, replace(path, '/', '')), '');  -- the file name
SELECT count(*) AS clips_indexed, round(sum(duration) / 60, 1) AS minutes FROM clips;

-- Everyday queries, each embedded once: audio_text_score takes a text_embed BLOB as well as text.
CREATE TABLE queries(id INTEGER PRIMARY KEY, query TEXT, embedding BLOB);
INSERT INTO queries(query) VALUES
  ('a dog barking'), ('a rooster crowing'), ('a cat meowing'), ('birds singing'),
  ('rain falling'), ('thunder'), ('a clock ticking'), ('glass breaking'),
  ('a fire crackling'), ('someone typing on a keyboard'), ('people laughing'), ('a baby crying');
UPDATE queries SET embedding = text_embed(query);

-- Exact search: every clip scored against every query; each query's top 3 on one line.
WITH ranked AS (
  SELECT q.id, q.query, c.name, audio_text_score(c.embedding, q.embedding) AS score,
         row_number() OVER (PARTITION BY q.id ORDER BY audio_text_score(c.embedding, q.embedding) DESC, c.id) AS rank
    FROM queries q, clips c
)
SELECT query,
       max(CASE rank WHEN 1 THEN printf('%s %.2f', name, score) END) AS "1st (score)",
       max(CASE rank WHEN 2 THEN printf('%s %.2f', name, score) END) AS "2nd",
       max(CASE rank WHEN 3 THEN printf('%s %.2f', name, score) END) AS "3rd"
  FROM ranked WHERE rank <= 3 GROUP BY id ORDER BY id;

-- KNN with an audiotext_index over the same vectors (vec0's syntax; int8 codes scanned in
-- parallel, the best candidates ranked exactly): cosine distance = 1 - score. A TEXT query is
-- embedded with the index's model (model=default unless the CREATE names another).
CREATE VIRTUAL TABLE clip_index USING audiotext_index(embedding float[384]);
INSERT INTO clip_index(rowid, embedding) SELECT id, embedding FROM clips;

SELECT 'rain falling' AS query, c.name AS clip, round(k.distance, 3) AS distance
  FROM clip_index k JOIN clips c ON c.id = k.rowid
 WHERE k.embedding MATCH 'rain falling' AND k = 3
 ORDER BY k.distance;
