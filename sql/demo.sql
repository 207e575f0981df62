-- sqlite-audiotext demo: text embedding and KNN search with sqlite-vec, in one .load.
-- Run from the repository root after scripts/build.sh:  sqlite3 :memory: < sql/demo.sql
.load dist/audiotext0
.mode box
.timer off

SELECT audiotext_version() AS version, vec_version() AS sqlite_vec;
.mode list
SELECT audiotext_debug();
.mode box

-- The bundle in models/default is registered automatically; any other folder can be added:
SELECT name, path FROM temp.audiotext_models;

CREATE TABLE captions(id INTEGER PRIMARY KEY, caption TEXT NOT NULL);
INSERT INTO captions(caption) VALUES
  ('a dog barks repeatedly in the distance'),
  ('rain falls steadily on a tin roof'),
  ('a crowd cheers and applauds in a stadium'),
  ('an old clock ticks in a quiet room'),
  ('waves crash on a rocky shore'),
  ('a baby cries while someone hums a lullaby'),
  ('a car engine starts and revs up'),
  ('birds chirp in a forest at dawn');

-- Exact search: cosine similarity over every row.
CREATE TABLE caption_vectors(id INTEGER PRIMARY KEY, embedding BLOB);
INSERT INTO caption_vectors SELECT id, text_embed(caption) FROM captions;

SELECT c.caption, round(1 - vec_distance_cosine(v.embedding, text_embed('puppy howling far away')), 3) AS score
  FROM caption_vectors v JOIN captions c USING(id)
 ORDER BY score DESC LIMIT 3;

-- KNN with a vec0 index.
CREATE VIRTUAL TABLE caption_index USING vec0(embedding float[384] distance_metric=cosine);
INSERT INTO caption_index(rowid, embedding) SELECT id, embedding FROM caption_vectors;

SELECT c.caption, round(k.distance, 3) AS distance
  FROM caption_index k JOIN captions c ON c.id = k.rowid
 WHERE k.embedding MATCH text_embed('storm and downpour') AND k = 3
 ORDER BY k.distance;

SELECT c.caption, round(k.distance, 3) AS distance
  FROM caption_index k JOIN captions c ON c.id = k.rowid
 WHERE k.embedding MATCH text_embed('ocean surf') AND k = 3
 ORDER BY k.distance;
