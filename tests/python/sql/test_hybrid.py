"""Hybrid search as README.md gives it: FTS5 over file names and audiotext_index over sound,
fused by reciprocal rank in one statement, on real recordings (Debian packages scripts/
install-deps.sh installs). The fused order is checked against the fusion computed here from the
two lists, and a named file whose sound alone ranks low comes first when its name says it."""

import re
from pathlib import Path

import pytest

from conftest import open_connection

SOUNDS = [
    Path("/usr/share/scratch/Media/Sounds/Animal/Rooster.wav"),
    Path("/usr/share/scratch/Media/Sounds/Animal/Meow.wav"),
    Path("/usr/share/scratch/Media/Sounds/Animal/Dog1.wav"),
    Path("/usr/share/scratch/Media/Sounds/Effects/BellToll.wav"),
    Path("/usr/share/tuxpaint/sounds/magic/rain.ogg"),
    Path("/usr/share/tuxpaint/sounds/magic/lightning.ogg"),
]
HYBRID = """
WITH by_sound AS (
  SELECT rowid AS id, row_number() OVER (ORDER BY distance) AS rank
    FROM clip_index WHERE embedding MATCH text_embed(:q) AND k = 50
), by_words AS (
  SELECT rowid AS id, row_number() OVER (ORDER BY rank) AS rank
    FROM clip_words WHERE clip_words MATCH audiotext_fts_query(:q) ORDER BY rank LIMIT 50
)
SELECT c.path, sum(weight / (60 + r.rank)) AS score
  FROM (SELECT *, 1.0 AS weight FROM by_sound UNION ALL SELECT *, :w FROM by_words) r
  JOIN clips c ON c.id = r.id
 GROUP BY r.id ORDER BY score DESC LIMIT 10
"""


@pytest.fixture
def library():
    missing = [str(p) for p in SOUNDS if not p.exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install-deps.sh")
    conn = open_connection()
    conn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT, embedding BLOB)")
    conn.execute("INSERT INTO clips(path, embedding) SELECT path, embedding FROM audio_embed_files(?) WHERE error IS NULL",
                 (str([str(p) for p in SOUNDS]).replace("'", '"'),))
    conn.execute("CREATE VIRTUAL TABLE clip_index USING audiotext_index(embedding float[384])")
    conn.execute("INSERT INTO clip_index(rowid, embedding) SELECT id, embedding FROM clips")
    conn.execute("CREATE VIRTUAL TABLE clip_words USING fts5(words)")
    # The words a library's names give: folder and file name, split at case changes too.
    for id_, path in conn.execute("SELECT id, path FROM clips").fetchall():
        words = " ".join(re.sub(r"(?<=[a-z])(?=[A-Z])", " ", part) for part in Path(path).parts[-2:])
        conn.execute("INSERT INTO clip_words(rowid, words) VALUES (?, ?)", (id_, words))
    assert conn.execute("SELECT count(*) FROM clips").fetchone() == (len(SOUNDS),)
    yield conn
    conn.close()


def test_the_fused_order_is_reciprocal_rank_fusion(library):
    q, w = "a bell tolling in the rain", 0.25
    sound = [r[0] for r in library.execute("SELECT rowid FROM clip_index WHERE embedding MATCH text_embed(?) AND k = 50 ORDER BY distance", (q,))]
    words = [r[0] for r in library.execute("SELECT rowid FROM clip_words WHERE clip_words MATCH audiotext_fts_query(?) ORDER BY rank", (q,))]
    assert words, "the words of the query should match Bell and rain"
    expected = {}
    for weight, ranked in ((1.0, sound), (w, words)):
        for rank, id_ in enumerate(ranked, start=1):
            expected[id_] = expected.get(id_, 0.0) + weight / (60 + rank)
    paths = dict(library.execute("SELECT id, path FROM clips"))
    got = library.execute(HYBRID, {"q": q, "w": w}).fetchall()
    want = sorted(expected.items(), key=lambda kv: -kv[1])
    assert [p for p, _ in got] == [paths[i] for i, _ in want]
    assert all(abs(s - e) < 1e-12 for (_, s), (_, e) in zip(got, want))


def test_a_name_lifts_a_file_its_sound_alone_ranks_low(library):
    """Asked for 'meow', the sound alone puts the rooster first; the cat's file is named Meow.wav,
    and the fusion puts it first."""
    q = "meow"
    sound = [r[0] for r in library.execute("SELECT c.path FROM clip_index i JOIN clips c ON c.id = i.rowid WHERE i.embedding MATCH text_embed(?) AND k = 6 ORDER BY distance", (q,))]
    fused = [r[0] for r in library.execute(HYBRID, {"q": q, "w": 0.25})]
    assert not sound[0].endswith("Meow.wav"), sound
    assert fused[0].endswith("Meow.wav"), (fused, sound)
    assert library.execute("SELECT audiotext_fts_query('  --  '), audiotext_fts_query(NULL)").fetchone() == ('""', None)
    assert library.execute(HYBRID, {"q": "--", "w": 1.0}).fetchall()  # no words: the sound ranking alone
