-- sqlite-audiotext moments demo: find *when* something happens in a long recording.
-- scripts/demo.sh builds the recording (everyday sounds one after another, quiet noise between
-- them) and a cue sheet of where each sound really is (.cache/demo-sounds/moments/), then runs
--   sqlite3 -cmd ".parameter set @recording \"'.cache/demo-sounds/moments/long.wav'\"" :memory: < sql/moments-demo.sql
.load dist/audiotext0
.mode box

-- One row per window of the model (2.30 s, every 1.16 s), streamed: an hour costs what a minute does.
CREATE TABLE segments AS SELECT @recording AS path, start, end, embedding FROM audio_segments(@recording);
SELECT count(*) AS windows, round(max(end) / 60, 1) AS minutes FROM segments;

-- Where the sounds really are (the cue sheet written with the recording), to judge the answers.
CREATE TABLE cues(sound TEXT, start REAL, end REAL);
.import --csv --skip 1 .cache/demo-sounds/moments/cues.csv cues

CREATE TABLE queries(id INTEGER PRIMARY KEY, query TEXT, sound TEXT, embedding BLOB);
INSERT INTO queries(query, sound) VALUES
  ('a dog barking', 'dog'), ('a rooster crowing', 'rooster'), ('a bell tolling', 'bell'),
  ('someone typing on a keyboard', 'typing'), ('a baby crying', 'baby'), ('thunder', 'thunder'),
  ('a clock ticking', 'clock'), ('a fire crackling', 'fire');
UPDATE queries SET embedding = text_embed(query);

-- For each query, events: the windows within 0.05 of the recording's best score for it, merged
-- where they overlap (SQL window functions); the best event is the answer: file, start, end.
WITH scored AS (
  SELECT q.id, s.path, s.start, s.end, audio_text_score(s.embedding, q.embedding) AS score
    FROM queries q, segments s
), kept AS (
  SELECT * FROM (SELECT *, max(score) OVER (PARTITION BY id, path) AS best FROM scored)
   WHERE score >= best - 0.05
), numbered AS (
  SELECT *, sum(new_event) OVER (PARTITION BY id, path ORDER BY start) AS event
    FROM (SELECT *, start > coalesce(lag(end) OVER (PARTITION BY id, path ORDER BY start), -1) AS new_event
            FROM kept)
), events AS (
  SELECT id, path, min(start) AS start, max(end) AS end, max(score) AS score,
         row_number() OVER (PARTITION BY id ORDER BY max(score) DESC) AS rank
    FROM numbered GROUP BY id, path, event
)
SELECT q.query, replace(e.path, rtrim(e.path, replace(e.path, '/', '')), '') AS file,
       printf('%.1f', e.start) AS start, printf('%.1f', e.end) AS end, printf('%.2f', e.score) AS score,
       printf('%.1f-%.1f', c.start, c.end) AS "really at",
       CASE WHEN e.start < c.end AND c.start < e.end THEN 'yes' ELSE 'no' END AS found
  FROM events e JOIN queries q USING (id) JOIN cues c ON c.sound = q.sound
 WHERE e.rank = 1 ORDER BY q.id;
