-- sqlite-audiotext audio demo: index folders of real sounds, then find them by description.
-- scripts/demo.sh runs it with @sounds set to a folder (or glob) of audio files, e.g.
--   sqlite3 -cmd ".parameter set @sounds \"'/usr/share/sounds/freedesktop/stereo'\"" :memory: < sql/audio-demo.sql
.load dist/audiotext0
.mode box

CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT UNIQUE, duration REAL, embedding BLOB);
-- Decoding and log-mel run in parallel; the encoder runs in batches; a bad file fills `error`.
INSERT INTO clips(path, duration, embedding)
  SELECT path, duration, embedding FROM audio_embed_files(@sounds) WHERE error IS NULL;
SELECT count(*) AS clips_indexed, round(sum(duration) / 60, 1) AS minutes FROM clips;

-- Exact search: score every clip against the query (encoded once per statement).
SELECT replace(path, rtrim(path, replace(path, '/', '')), '') AS clip,
       round(audio_text_score(embedding, 'a dog barking'), 3) AS score
  FROM clips ORDER BY score DESC LIMIT 3;

SELECT replace(path, rtrim(path, replace(path, '/', '')), '') AS clip,
       round(audio_text_score(embedding, 'a bell ringing'), 3) AS score
  FROM clips ORDER BY score DESC LIMIT 3;

-- KNN with a vec0 index over the same vectors.
CREATE VIRTUAL TABLE clip_index USING vec0(embedding float[384] distance_metric=cosine);
INSERT INTO clip_index(rowid, embedding) SELECT id, embedding FROM clips;

SELECT replace(c.path, rtrim(c.path, replace(c.path, '/', '')), '') AS clip, round(k.distance, 3) AS distance
  FROM clip_index k JOIN clips c ON c.id = k.rowid
 WHERE k.embedding MATCH text_embed('rain falling') AND k = 3
 ORDER BY k.distance;

SELECT replace(c.path, rtrim(c.path, replace(c.path, '/', '')), '') AS clip, round(k.distance, 3) AS distance
  FROM clip_index k JOIN clips c ON c.id = k.rowid
 WHERE k.embedding MATCH text_embed('a telephone ringing') AND k = 3
 ORDER BY k.distance;
