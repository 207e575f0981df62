"""Audio through SQL, the way a user calls it: every format and rate, path vs blob, channel
mix-down, bad files, audio_embed_files, audio_text_score, audio_info, and an independent
reproduction of audio_embed with librosa + onnxruntime from the manifest's keys alone."""

import json
import re
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import make_audio as ma
from conftest import DEFAULT_BUNDLE, open_connection

RATE = 32000


def audio_bundle_dir():
    """The default bundle (its committed audio encoder); AUDIOTEXT_TEST_AUDIO_BUNDLE overrides."""
    return Path(os.environ.get("AUDIOTEXT_TEST_AUDIO_BUNDLE", DEFAULT_BUNDLE))


@pytest.fixture(scope="module")
def bundle():
    path = audio_bundle_dir()
    manifest = json.loads((path / "manifest.json").read_text())
    assert "audio" in manifest, f"{path} has no audio encoder: train and export one (see README)"
    return path, manifest


@pytest.fixture
def aconn(bundle):
    conn = open_connection()
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('a', ?)", (str(bundle[0]),))
    yield conn
    conn.close()


def vec(blob):
    return np.frombuffer(blob, dtype="<f4")


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def embed(conn, source):
    return vec(conn.execute("SELECT audio_embed('a', ?)", (source,)).fetchone()[0])


def rich_signal(rate, seconds=3.0):
    """A chirp over noise with a tone burst: varied enough that a broken decoder shows."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    sig = 0.4 * ma.chirp(200, min(6000, rate / 2 - 500), rate, seconds) + ma.white_noise(rate, seconds, 0.05)
    sig[n // 3 : n // 2] += 0.3 * np.sin(2 * np.pi * 1000 * t[n // 3 : n // 2])
    return np.clip(sig, -0.99, 0.99).astype(np.float32)


@pytest.fixture(scope="module")
def reference_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.wav"
    ma.write_wav(path, rich_signal(RATE), RATE, "f32")
    return path


# --- formats and rates --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["u8", "s16", "s24", "f32"])
def test_wav_sample_formats(aconn, reference_wav, tmp_path, fmt):
    """WAV 8/16/24/32-bit int and 32-bit float decode to the same sound."""
    try:
        path = tmp_path / f"x-{fmt}.wav"
        ma.write_wav(path, rich_signal(RATE), RATE, fmt)
    except (ValueError, KeyError):
        pytest.skip(f"make_audio cannot write {fmt}")
    similarity = cos(embed(aconn, str(path)), embed(aconn, str(reference_wav)))
    assert similarity > (0.99 if fmt != "u8" else 0.95), similarity


@pytest.mark.parametrize("ext", ["flac", "ogg", "mp3", "m4a"])
def test_compressed_formats(aconn, reference_wav, tmp_path, ext):
    """FLAC is lossless (same embedding); Vorbis, MP3 and AAC are close to the original."""
    if ext == "m4a" and not ma.have_ffmpeg():
        pytest.skip("ffmpeg missing: scripts/install-deps.sh installs it")
    if ext != "m4a" and not ma.have_sox():
        pytest.skip("sox missing: scripts/install-deps.sh installs it")
    s16 = tmp_path / "x.wav"
    ma.write_wav(s16, rich_signal(RATE), RATE, "s16")
    out = tmp_path / f"x.{ext}"
    ma.encode(s16, out)
    info = json.loads(aconn.execute("SELECT audio_info(?)", (str(out),)).fetchone()[0])
    assert info["sample_rate"] == RATE and info["channels"] == 1
    similarity = cos(embed(aconn, str(out)), embed(aconn, str(s16)))
    assert similarity > (0.9999 if ext == "flac" else 0.95), (ext, similarity)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000])
def test_any_sample_rate_is_resampled(aconn, tmp_path, rate):
    """The same sound recorded at another rate embeds close to the model-rate original
    (below 14 kHz, the model's fmax; 8 kHz input loses the band above 4 kHz)."""
    seconds = 3.0
    t = np.arange(int(rate * seconds)) / rate
    def tones(sample_times):
        return (0.3 * np.sin(2 * np.pi * 440 * sample_times) + 0.2 * np.sin(2 * np.pi * 1500 * sample_times)
                + 0.1 * np.sin(2 * np.pi * 3000 * sample_times)).astype(np.float32)
    path = tmp_path / f"tones-{rate}.wav"
    ma.write_wav(path, tones(t), rate, "f32")
    native = tmp_path / "tones-native.wav"
    ma.write_wav(native, tones(np.arange(int(RATE * seconds)) / RATE), RATE, "f32")
    info = json.loads(aconn.execute("SELECT audio_info(?)", (str(path),)).fetchone()[0])
    assert info["sample_rate"] == rate
    assert abs(info["duration_seconds"] - seconds) < 1e-3
    assert cos(embed(aconn, str(path)), embed(aconn, str(native))) > 0.98


# --- sources and channels --------------------------------------------------------------------

def test_blob_and_path_give_the_same_embedding(aconn, reference_wav):
    from_path = aconn.execute("SELECT audio_embed('a', ?)", (str(reference_wav),)).fetchone()[0]
    from_blob = aconn.execute("SELECT audio_embed('a', ?)", (reference_wav.read_bytes(),)).fetchone()[0]
    assert from_path == from_blob


def test_stereo_mixes_all_channels(aconn, tmp_path):
    """Stereo with identical channels equals mono; L != R equals the mono of their mean."""
    left, right = rich_signal(RATE), ma.white_noise(RATE, 3.0, 0.2, seed=7).astype(np.float32)
    ma.write_wav(tmp_path / "mono.wav", left, RATE, "f32")
    ma.write_wav(tmp_path / "dual.wav", np.stack([left, left], axis=1), RATE, "f32")
    ma.write_wav(tmp_path / "lr.wav", np.stack([left, right], axis=1), RATE, "f32")
    ma.write_wav(tmp_path / "mean.wav", (left + right) / 2, RATE, "f32")
    ma.write_wav(tmp_path / "left-only.wav", left, RATE, "f32")
    mono, dual = embed(aconn, str(tmp_path / "mono.wav")), embed(aconn, str(tmp_path / "dual.wav"))
    assert np.abs(mono - dual).max() < 1e-5
    lr, mean = embed(aconn, str(tmp_path / "lr.wav")), embed(aconn, str(tmp_path / "mean.wav"))
    assert np.abs(lr - mean).max() < 1e-5
    info = json.loads(aconn.execute("SELECT audio_info(?)", (str(tmp_path / "lr.wav"),)).fetchone()[0])
    assert info["channels"] == 2


def test_long_file_is_windowed_and_pooled(aconn, tmp_path, bundle):
    """A file longer than clip_seconds: the embedding is the normalised mean of its windows',
    each window embedded from its own samples (overlapping windows too: the default's hop is
    half its window). Written at the model's rate, so a window is a slice of the file."""
    from conftest import window_bounds

    audio = bundle[1]["audio"]
    rate, clip = audio["sample_rate"], audio["windowing"]["clip_seconds"]
    a, b = rich_signal(rate, clip), ma.white_noise(rate, clip, 0.3, seed=3).astype(np.float32)
    ab = np.concatenate([a, b])
    ma.write_wav(tmp_path / "ab.wav", ab, rate, "f32")
    bounds = window_bounds(len(ab), rate, audio["windowing"])
    assert len(bounds) >= 2, bounds
    windows = []
    for k, (start, end) in enumerate(bounds):
        ma.write_wav(tmp_path / f"w{k}.wav", ab[start:end], rate, "f32")
        windows.append(embed(aconn, str(tmp_path / f"w{k}.wav")))
    pooled = np.mean(windows, axis=0)
    pooled /= np.linalg.norm(pooled)
    assert np.abs(embed(aconn, str(tmp_path / "ab.wav")) - pooled).max() < 1e-5


def test_very_short_clip_is_padded_not_refused(aconn, tmp_path):
    ma.write_wav(tmp_path / "click.wav", rich_signal(RATE, 0.02), RATE, "s16")
    assert len(embed(aconn, str(tmp_path / "click.wav"))) == 384


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.wav", b"", "is empty (0 bytes)"),
        ("notes.wav", b"this is a text file, not a sound" * 10, "is not a supported audio file"),
        ("random.flac", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a supported audio file"),
    ],
)
def test_bad_files_are_clear_errors(aconn, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    for source in (str(path), content):
        with pytest.raises(sqlite3.OperationalError, match=f"audio_embed: .*{re.escape(message)}"):
            aconn.execute("SELECT audio_embed('a', ?)", (source,)).fetchone()
    assert aconn.execute("SELECT 1").fetchone() == (1,)


def test_truncated_and_corrupt_files(aconn, reference_wav, tmp_path):
    """A file cut mid-stream embeds what it holds or errors clearly; garbage in the middle of a
    FLAC stream never crashes the host."""
    data = reference_wav.read_bytes()
    header_end = data.index(b"data") + 8
    (tmp_path / "cut.wav").write_bytes(data[:header_end])  # header only, no samples
    with pytest.raises(sqlite3.OperationalError, match="audio_embed: .*cut.wav"):
        aconn.execute("SELECT audio_embed('a', ?)", (str(tmp_path / "cut.wav"),)).fetchone()
    (tmp_path / "half.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(sqlite3.OperationalError, match="audio_embed: .*half.wav is truncated: its data chunk declares"):
        embed(aconn, str(tmp_path / "half.wav"))
    aconn.execute("SELECT audiotext_option('truncated_audio', 'partial')")
    assert len(embed(aconn, str(tmp_path / "half.wav"))) == 384
    aconn.execute("SELECT audiotext_option('truncated_audio', 'error')")
    if ma.have_sox():
        ma.encode(reference_wav, tmp_path / "x.flac")
        flac = bytearray((tmp_path / "x.flac").read_bytes())
        flac[len(flac) // 2 : len(flac) // 2 + 2000] = os.urandom(2000)
        (tmp_path / "damaged.flac").write_bytes(bytes(flac))
        try:
            assert len(embed(aconn, str(tmp_path / "damaged.flac"))) == 384
        except sqlite3.OperationalError as error:
            assert "audio_embed: " in str(error) and "damaged.flac" in str(error)
    assert aconn.execute("SELECT 1").fetchone() == (1,)


def test_argument_types(aconn):
    with pytest.raises(sqlite3.OperationalError, match=r"audio_embed: argument 2 \(audio\) must be TEXT \(a file path\) or BLOB"):
        aconn.execute("SELECT audio_embed('a', 42)").fetchone()
    assert aconn.execute("SELECT audio_embed('a', NULL)").fetchone() == (None,)
    with pytest.raises(sqlite3.OperationalError, match="(?i)audio_embed: cannot open /no/such/file.wav: no such file"):
        aconn.execute("SELECT audio_embed('a', '/no/such/file.wav')").fetchone()


def test_file_readers_are_directonly(aconn, reference_wav):
    aconn.executescript(
        "CREATE TABLE t(x); CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT audio_embed('a', new.x); END;"
        "CREATE TABLE u(x); CREATE TRIGGER tu AFTER INSERT ON u BEGIN SELECT audio_info(new.x); END;"
        "CREATE VIEW v AS SELECT * FROM audio_embed_files('/tmp');"
    )
    for table, name in (("t", "audio_embed"), ("u", "audio_info")):
        with pytest.raises(sqlite3.OperationalError, match=f"unsafe use of {name}"):
            aconn.execute(f"INSERT INTO {table} VALUES (?)", (str(reference_wav),))
    with pytest.raises(sqlite3.OperationalError, match="unsafe use of virtual table"):
        aconn.execute("SELECT * FROM main.v").fetchall()


# --- audio_embed_files ----------------------------------------------------------------------------

def test_audio_embed_files_mixes_good_and_bad_files(aconn, tmp_path):
    folder = tmp_path / "sounds"
    (folder / "sub").mkdir(parents=True)
    ma.write_wav(folder / "b-noise.wav", ma.white_noise(RATE, 2.0, 0.3).astype(np.float32), RATE, "f32")
    ma.write_wav(folder / "sub" / "c-tone.wav", rich_signal(16000, 4.0), 16000, "s16")
    ma.write_wav(folder / "a-long.wav", rich_signal(RATE, 12.5), RATE, "s16")
    (folder / "d-broken.wav").write_bytes(b"RIFF....WAVEnot really")
    (folder / "e-empty.mp3").write_bytes(b"")
    (folder / "readme.txt").write_text("not listed: not an audio extension")
    rows = aconn.execute("SELECT path, duration, embedding, error FROM audio_embed_files(?, 'a')", (str(folder),)).fetchall()
    names = [Path(r[0]).name for r in rows]
    assert names == ["a-long.wav", "b-noise.wav", "d-broken.wav", "e-empty.mp3", "c-tone.wav"]
    by_name = {Path(r[0]).name: r for r in rows}
    assert abs(by_name["a-long.wav"][1] - 12.5) < 0.01 and abs(by_name["c-tone.wav"][1] - 4.0) < 0.01
    for good in ("a-long.wav", "b-noise.wav", "c-tone.wav"):
        path, duration, blob, error = by_name[good]
        assert error is None and len(blob) == 384 * 4
        assert np.abs(vec(blob) - embed(aconn, path)).max() < 1e-5, good
    assert "d-broken.wav" in by_name["d-broken.wav"][3] and by_name["d-broken.wav"][2] is None
    assert "is empty (0 bytes)" in by_name["e-empty.mp3"][3]
    # A glob picks what it matches; the one-argument form uses the default model.
    glob_rows = aconn.execute("SELECT path FROM audio_embed_files(?, 'a')", (str(folder / "**" / "*-tone.wav"),)).fetchall()
    assert [Path(r[0]).name for r in glob_rows] == ["c-tone.wav"]


def test_audio_embed_files_feeds_vec0(aconn, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for i, freq in enumerate([300, 900, 2700]):
        ma.write_wav(folder / f"{i}.wav", ma.sine(freq, RATE, 2.0).astype(np.float32), RATE, "f32")
    aconn.executescript("CREATE VIRTUAL TABLE idx USING vec0(embedding float[384] distance_metric=cosine)")
    aconn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, path TEXT)")
    aconn.execute("INSERT INTO clips(path) SELECT path FROM audio_embed_files(?, 'a')", (str(folder),))
    aconn.execute(
        "INSERT INTO idx(rowid, embedding) SELECT c.id, f.embedding FROM audio_embed_files(?, 'a') f JOIN clips c USING(path)",
        (str(folder),),
    )
    query = embed(aconn, str(folder / "1.wav")).tobytes()
    nearest = aconn.execute(
        "SELECT c.path FROM idx JOIN clips c ON c.id = idx.rowid WHERE embedding MATCH ? AND k = 1", (query,)
    ).fetchone()[0]
    assert Path(nearest).name == "1.wav"


def test_audio_embed_files_errors(aconn):
    with pytest.raises(sqlite3.OperationalError, match=r"audio_embed_files: argument 1 \(dir_or_glob\) is required"):
        aconn.execute("SELECT * FROM audio_embed_files").fetchall()
    with pytest.raises(sqlite3.OperationalError, match="audio_embed_files: no such file or folder: /no/such"):
        aconn.execute("SELECT * FROM audio_embed_files('/no/such', 'a')").fetchall()
    with pytest.raises(sqlite3.OperationalError, match="audio_embed_files: no model named 'zz'"):
        aconn.execute("SELECT * FROM audio_embed_files('/tmp', 'zz')").fetchall()


# --- scoring --------------------------------------------------------------------------------------

def test_audio_text_score_is_cosine_and_encodes_the_query_once(aconn, reference_wav, tmp_path):
    a = aconn.execute("SELECT audio_embed('a', ?)", (str(reference_wav),)).fetchone()[0]
    t = aconn.execute("SELECT text_embed('a', 'a rising whistle over hiss')").fetchone()[0]
    score = aconn.execute("SELECT audio_text_score('a', ?, 'a rising whistle over hiss')", (a,)).fetchone()[0]
    assert abs(score - cos(vec(a), vec(t))) < 1e-5
    by_blob = aconn.execute("SELECT audio_text_score('a', ?, ?)", (a, t)).fetchone()[0]
    assert abs(by_blob - score) < 1e-6
    # One statement over 50 rows with a constant query embeds the text once.
    aconn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, embedding BLOB)")
    aconn.executemany("INSERT INTO clips(embedding) VALUES (?)", [(a,)] * 50)

    def embedded():
        debug = aconn.execute("SELECT audiotext_debug()").fetchone()[0]
        line = next(l for l in debug.splitlines() if l.startswith("model a:"))
        found = re.search(r"\((\d+) texts embedded\)", line)
        return int(found.group(1)) if found else 0

    before = embedded()
    scores = aconn.execute("SELECT audio_text_score('a', embedding, 'a brand new query') FROM clips").fetchall()
    assert len(set(scores)) == 1
    assert embedded() - before == 1


def test_audio_text_score_errors(aconn, reference_wav):
    a = aconn.execute("SELECT audio_embed('a', ?)", (str(reference_wav),)).fetchone()[0]
    with pytest.raises(sqlite3.OperationalError, match=r"audio_text_score: argument 2 \(audio_embedding\) is a BLOB of 7 bytes"):
        aconn.execute("SELECT audio_text_score('a', x'00010203040506', 'x')").fetchone()
    with pytest.raises(sqlite3.OperationalError, match=r"audio_text_score: argument 2 \(audio_embedding\) has 2 dimensions, while"):
        aconn.execute("SELECT audio_text_score('a', vec_f32('[1, 0]'), 'x')").fetchone()
    with pytest.raises(sqlite3.OperationalError, match=r"argument 1 \(audio_embedding\) must be a BLOB"):
        aconn.execute("SELECT audio_text_score('text, not blob', 'x')").fetchone()
    assert aconn.execute("SELECT audio_text_score('a', NULL, 'x')").fetchone() == (None,)


def test_audio_info_reports_the_container(aconn, tmp_path):
    ma.write_wav(tmp_path / "s.wav", np.zeros((RATE, 2), dtype=np.float32), RATE, "s24")
    info = json.loads(aconn.execute("SELECT audio_info(?)", (str(tmp_path / "s.wav"),)).fetchone()[0])
    assert info["container"] == "wav" and info["channels"] == 2 and info["sample_rate"] == RATE
    assert abs(info["duration_seconds"] - 1.0) < 1e-6
    assert aconn.execute("SELECT audio_info(NULL)").fetchone() == (None,)
