-- sqlite-audiotext: searches beyond ESC-50's fifty classes (speech, music, instruments,
-- vehicles, footsteps on surfaces, tools) over real sounds no model here trained on.
-- scripts/demo.sh runs it with @sounds set to the demo's `everyday` folder (Debian packages
-- kept out of training: Scratch, Tux Paint's magic tools, GNOME Pomodoro, Minetest), whose file
-- names say what each clip is:
--   sqlite3 -cmd ".parameter set @sounds \"'.cache/demo-sounds/everyday'\"" :memory: < sql/open-world-demo.sql
.load dist/audiotext0
.mode box

CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT UNIQUE, name TEXT, embedding BLOB);
INSERT INTO clips(path, embedding)
  SELECT path, embedding FROM audio_embed_files(@sounds) WHERE error IS NULL;
UPDATE clips SET name = replace(path, rtrim(path, replace(path, '/', '')), '');

CREATE TABLE queries(id INTEGER PRIMARY KEY, query TEXT, embedding BLOB);
INSERT INTO queries(query) VALUES
  ('a crowd of people chatting at a party'), ('a woman singing'), ('someone strumming a guitar'),
  ('a trumpet playing a tune'), ('a drummer playing a beat on a drum kit'), ('a gong being struck'),
  ('a motorcycle driving past'), ('a car passing by on the road'), ('footsteps on gravel'),
  ('footsteps on a wooden floor'), ('a woman screaming'), ('an explosion'),
  ('chopping wood with an axe'), ('a sewing machine running'), ('water bubbling');
UPDATE queries SET embedding = text_embed(query);

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
