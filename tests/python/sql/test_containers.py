"""Files the world plays: truncation, tags and container variants, each checked against what
ffmpeg does with the same bytes.

- A file cut short (WAV, FLAC, Ogg Vorbis, MP3 with a Xing header, M4A with its moov first) is
  an error that names the file, what it declares and what it holds, and says how to get the
  partial audio; with `audiotext_option('truncated_audio', 'partial')` it embeds the audio
  before the cut, which matches ffmpeg's decode of the same cut file.
- Tags and containers as taggers and recorders write them (stacked ID3v2 with an extended
  header, ID3v1, APE, MPEG-2 and 2.5 layer III, WAV with extra chunks and odd padding,
  WAVE_FORMAT_EXTENSIBLE, RF64, a WAV written to a pipe, FLAC behind an ID3 tag) embed like
  ffmpeg's decode of them.
- Every audio file of the Debian packages scripts/install-deps.sh installs that ffmpeg decodes
  without an error embeds, and its embedding matches the reference decode's
  (bench/conformance.py; docs/hardening.md reports the larger run).
"""

import sqlite3
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import make_audio as ma
from conftest import ROOT, open_connection

import importlib.util

_spec = importlib.util.spec_from_file_location("conformance", ROOT / "bench" / "conformance.py")
conformance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conformance)

RATE = 22050
PARITY = conformance.PARITY_COSINE


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True, capture_output=True)


def embedding(conn, source):
    return np.frombuffer(conn.execute("SELECT audio_embed(?)", (source,)).fetchone()[0], dtype="<f4")


def info(conn, source):
    import json
    return json.loads(conn.execute("SELECT audio_info(?)", (source,)).fetchone()[0])


def matches_ffmpeg(conn, path, tmp_path):
    """Our embedding of `path` against the embedding of ffmpeg's decode of it."""
    reference = tmp_path / f"{path.name}.ffmpeg.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-c:a", "pcm_s16le", str(reference)],
                   capture_output=True)  # ffmpeg says "partial file" of a cut M4A, and decodes it
    return conformance.cosine(embedding(conn, str(path)), embedding(conn, str(reference)))


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory):
    """Four seconds of a real-ish signal whose halves differ, at 22.05 kHz."""
    path = tmp_path_factory.mktemp("containers") / "source.wav"
    ma.write_wav(path, ma.realish(RATE, 4.0, seed=3), RATE)
    return path


# --- truncation --------------------------------------------------------------------------------

ENCODINGS = {
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis"],
    "mp3": ["-c:a", "libmp3lame"],  # with a Xing/Info header, which declares the frame count
    "m4a": ["-c:a", "aac", "-movflags", "+faststart"],  # moov before mdat: a cut keeps the tables
}
# What says the file is cut: the headers' byte counts, or the frames decoded against the count.
DECLARES = {"wav": "data chunk declares", "flac": "headers declare", "ogg": "last Ogg page declares",
            "mp3": "headers declare", "m4a": "mdat atom declares"}


@pytest.fixture(scope="module")
def cut_files(source_wav, tmp_path_factory):
    out = tmp_path_factory.mktemp("cut")
    files = {}
    for fmt, codec in ENCODINGS.items():
        whole = out / f"whole.{fmt}"
        ffmpeg("-i", source_wav, *codec, whole)
        data = whole.read_bytes()
        cut = out / f"cut.{fmt}"
        cut.write_bytes(data[: len(data) * 6 // 10])
        files[fmt] = (whole, cut)
    return files


@pytest.mark.parametrize("as_blob", [False, True], ids=["path", "blob"])
@pytest.mark.parametrize("fmt", sorted(ENCODINGS))
def test_a_cut_file_is_an_error_that_says_what_is_missing(cut_files, fmt, as_blob):
    whole, cut = cut_files[fmt]
    conn = open_connection()
    assert len(embedding(conn, str(whole))) == 384
    source = cut.read_bytes() if as_blob else str(cut)
    with pytest.raises(sqlite3.OperationalError) as raised:
        embedding(conn, source)
    message = str(raised.value)
    shown = "audio blob" if as_blob else str(cut)
    assert message.startswith(f"audio_embed: {shown} is truncated: its "), message
    assert DECLARES[fmt] in message and "audiotext_option('truncated_audio', 'partial')" in message, message
    # audio_info describes it (from the headers) where the headers tell; it never refuses.
    described = info(conn, source)["truncated"]
    if fmt in ("wav", "ogg", "m4a"):
        assert DECLARES[fmt] in described, described
    else:
        assert described is None  # FLAC and MP3 show it only when decoded
    assert info(conn, str(whole))["truncated"] is None


@pytest.mark.parametrize("fmt", sorted(ENCODINGS))
def test_partial_audio_when_asked_matches_ffmpegs_decode_of_the_cut(cut_files, fmt, tmp_path):
    _, cut = cut_files[fmt]
    conn = open_connection()
    assert conn.execute("SELECT audiotext_option('truncated_audio')").fetchone() == ("error",)
    assert conn.execute("SELECT audiotext_option('truncated_audio', 'partial')").fetchone() == ("error",)
    assert conn.execute("SELECT audiotext_option('truncated_audio')").fetchone() == ("partial",)
    # symphonia 0.5 ignores an MP4's edit list, so our M4A decode keeps the encoder's 1,024
    # priming samples that ffmpeg drops (46 ms here; docs/hardening.md): a looser bound there
    # (above 0.95 with the float32 graph, 0.946 with the default's int8 one).
    assert matches_ffmpeg(conn, cut, tmp_path) >= (0.94 if fmt == "m4a" else 0.99)
    # The setting is the connection's: another one still refuses.
    with pytest.raises(sqlite3.OperationalError, match="is truncated"):
        embedding(open_connection(), str(cut))


def test_the_60_byte_wav_of_the_issue(tmp_path):
    """A WAV cut to 60 bytes: its data chunk declares seconds, 16 bytes are there."""
    path = tmp_path / "sixty.wav"
    ma.write_wav(path, ma.realish(16000, 3.0), 16000)
    path.write_bytes(path.read_bytes()[:60])
    conn = open_connection()
    with pytest.raises(sqlite3.OperationalError, match=r"declares 96000 bytes of samples, the file holds 16 of them"):
        embedding(conn, str(path))


def test_a_cut_file_in_a_folder_is_an_error_row_and_partial_applies_to_scans(cut_files):
    folder = cut_files["wav"][1].parent
    conn = open_connection()
    rows = dict(conn.execute("SELECT path, error FROM audio_embed_files(?)", (str(folder / "*.wav"),)).fetchall())
    assert rows[str(folder / "whole.wav")] is None
    assert "is truncated" in rows[str(folder / "cut.wav")]
    conn.execute("SELECT audiotext_option('truncated_audio', 'partial')")
    rows = dict(conn.execute("SELECT path, error FROM audio_embed_files(?)", (str(folder / "*.wav"),)).fetchall())
    assert rows[str(folder / "cut.wav")] is None
    segments = conn.execute("SELECT count(*) FROM audio_segments(?)", (str(folder / "cut.mp3"),)).fetchone()[0]
    assert segments >= 1


def test_an_mp3_without_a_length_header_plays_to_its_cut(source_wav, tmp_path):
    """No Xing/Info or VBRI header: nothing declares the length (ffmpeg estimates it from the
    bit rate too), so a cut MP3 is not known to be cut. It decodes its whole frames: the same
    samples as ffmpeg's decode of the uncut file, up to there (ffmpeg also decodes the frame
    the cut goes through, 26 ms of it)."""
    whole = tmp_path / "plain.mp3"
    ffmpeg("-i", source_wav, "-c:a", "libmp3lame", "-write_xing", "0", whole)
    cut = tmp_path / "plain-cut.mp3"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    conn = open_connection()
    (seconds, error), = conn.execute("SELECT duration, error FROM audio_embed_files(?)", (str(cut),)).fetchall()
    assert error is None and 2.0 < seconds < 2.6, (seconds, error)
    reference = tmp_path / "reference.wav"
    ffmpeg("-i", whole, "-af", f"atrim=end_sample={round(seconds * RATE)}", "-c:a", "pcm_s16le", reference)
    assert conformance.cosine(embedding(conn, str(cut)), embedding(conn, str(reference))) >= PARITY


@pytest.mark.parametrize(
    "sql, pattern",
    [
        ("SELECT audiotext_option('speed')", r"no option named 'speed'; options: 'truncated_audio'"),
        ("SELECT audiotext_option('truncated_audio', 'maybe')", r"'maybe' is not a value of 'truncated_audio': use 'error'"),
        ("SELECT audiotext_option(NULL)", r"argument 1\) is NULL"),
    ],
)
def test_bad_options_say_what_exists(sql, pattern):
    with pytest.raises(sqlite3.OperationalError, match=pattern):
        open_connection().execute(sql).fetchone()


def test_a_schema_cannot_change_the_connections_settings(tmp_path):
    conn = open_connection(str(tmp_path / "other.db"))
    conn.execute("CREATE VIEW sneaky AS SELECT audiotext_option('truncated_audio', 'partial') AS x")
    with pytest.raises(sqlite3.OperationalError, match="unsafe use of audiotext_option"):
        conn.execute("SELECT x FROM sneaky").fetchone()
    assert conn.execute("SELECT audiotext_option('truncated_audio')").fetchone() == ("error",)


# --- tags and container variants ---------------------------------------------------------------

def syncsafe(n):
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def without_id3v2(data):
    if data[:3] == b"ID3":
        return data[10 + int.from_bytes(syncsafe_decode(data[6:10]), "big"):]
    return data


def syncsafe_decode(b):
    n = 0
    for x in b:
        n = (n << 7) | (x & 0x7F)
    return n.to_bytes(4, "big")


def id3v23(title):
    body = b"TIT2" + struct.pack(">I", len(title) + 1) + b"\0\0" + b"\0" + title + b"\0" * 32
    return b"ID3\x03\x00\x00" + syncsafe(len(body)) + body


def id3v24_with_extended_header(title):
    extended = syncsafe(6) + b"\x01\x00"
    body = extended + b"TIT2" + syncsafe(len(title) + 1) + b"\0\0" + b"\x03" + title + b"\0" * 16
    return b"ID3\x04\x00\x40" + syncsafe(len(body)) + body


def ape_tag():
    item = struct.pack("<II", 5, 0) + b"Title\x00" + b"Hello"
    size = len(item) + 32
    header = b"APETAGEX" + struct.pack("<IIII", 2000, size, 1, 0xA0000000) + b"\0" * 8
    footer = b"APETAGEX" + struct.pack("<IIII", 2000, size, 1, 0x80000000) + b"\0" * 8
    return header + item + footer


def riff(chunks):
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunk(cid, body):
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def wav_chunks(path):
    data, pos, out = path.read_bytes(), 12, {}
    while pos + 8 <= len(data):
        cid, n = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        out[cid] = data[pos:pos + 8 + n + (n & 1)]
        pos += 8 + n + (n & 1)
    return out


@pytest.fixture(scope="module")
def variants(source_wav, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    files = {}

    def made(name, *args):
        files[name] = out / name
        ffmpeg("-i", source_wav, *args, files[name])

    made("mpeg2-22050.mp3", "-c:a", "libmp3lame", "-ar", "22050")
    made("mpeg25-8000.mp3", "-c:a", "libmp3lame", "-ar", "8000")
    made("mpeg25-11025.mp3", "-c:a", "libmp3lame", "-ar", "11025")
    made("cbr-no-xing.mp3", "-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0")
    made("rf64.wav", "-c:a", "pcm_s16le", "-rf64", "always")
    made("extensible-24bit.wav", "-c:a", "pcm_s24le", "-ac", "3")
    made("float.wav", "-c:a", "pcm_f32le")
    made("plain.flac", "-c:a", "flac")
    made("stereo.ogg", "-c:a", "libvorbis", "-ac", "2")
    mpeg = without_id3v2(files["mpeg2-22050.mp3"].read_bytes())
    variants_bytes = {
        # scratch's Eggs.mp3 has this shape: a v2.3 tag, then a v2.4 tag with an extended header.
        "stacked-id3.mp3": id3v23(b"Eggs") + id3v24_with_extended_header(b"Eggs again") + mpeg,
        "id3v1.mp3": mpeg + b"TAG" + b"Title".ljust(30, b"\0") + b"\0" * 94 + b"\x0c",
        "ape.mp3": mpeg + ape_tag(),
        "id3-in-front.flac": id3v23(b"a tagger was here") + files["plain.flac"].read_bytes(),
    }
    pcm = out / "pcm.wav"
    ffmpeg("-i", source_wav, "-c:a", "pcm_s16le", "-map_metadata", "-1", "-fflags", "+bitexact", pcm)
    parts = wav_chunks(pcm)
    fmt, data = parts[b"fmt "], parts[b"data"]
    frames = (len(data) - 8) // 2
    info_list = chunk(b"LIST", b"INFO" + chunk(b"INAM", b"odd length\0x"))
    cue = chunk(b"cue ", struct.pack("<I", 1) + struct.pack("<II4sIII", 1, 0, b"data", 0, 0, 100))
    variants_bytes.update({
        "chunks-before-data.wav": riff([fmt, chunk(b"fact", struct.pack("<I", frames)), info_list,
                                        chunk(b"bext", b"\0" * 602), chunk(b"iXML", b"<BWFXML/>"), cue, data]),
        "chunks-after-data.wav": riff([fmt, data, info_list, cue, chunk(b"iXML", b"<BWFXML/>")]),
        "odd-chunk-padding.wav": riff([fmt, chunk(b"junk", b"abc"), data]),
    })
    for name, content in variants_bytes.items():
        files[name] = out / name
        files[name].write_bytes(content)
    piped = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(pcm), "-f", "wav", "-"],
                           capture_output=True, check=True).stdout
    files["written-to-a-pipe.wav"] = out / "written-to-a-pipe.wav"
    files["written-to-a-pipe.wav"].write_bytes(piped)
    return files


VARIANTS = ["mpeg2-22050.mp3", "mpeg25-8000.mp3", "mpeg25-11025.mp3", "cbr-no-xing.mp3", "stacked-id3.mp3",
            "id3v1.mp3", "ape.mp3", "rf64.wav", "extensible-24bit.wav", "float.wav", "chunks-before-data.wav",
            "chunks-after-data.wav", "odd-chunk-padding.wav", "written-to-a-pipe.wav", "id3-in-front.flac",
            "stereo.ogg"]


@pytest.mark.parametrize("name", VARIANTS)
def test_what_ffmpeg_plays_embeds_like_ffmpegs_decode(variants, name, tmp_path):
    path = variants[name]
    assert conformance.ffmpeg_plays(path), f"the case itself is broken: ffmpeg cannot play {name}"
    conn = open_connection()
    described = info(conn, str(path))
    assert described["truncated"] is None, described
    if name == "written-to-a-pipe.wav":
        assert described["duration_seconds"] is None  # its header states no length
    else:
        assert abs(described["duration_seconds"] - 4.0) < 0.1, described
    assert matches_ffmpeg(conn, path, tmp_path) >= PARITY
    # The same bytes as a BLOB.
    assert np.array_equal(embedding(conn, path.read_bytes()), embedding(conn, str(path)))


# --- every file of real packages ---------------------------------------------------------------

def installed_files():
    roots = [p for p in conformance.INSTALLED.values() if p.exists()]
    return [f for root in roots for f in conformance.audio_files(root)]


def test_every_file_ffmpeg_plays_in_the_installed_packages_embeds_and_matches():
    files = installed_files()
    if len(files) < 100:
        pytest.fail(f"only {len(files)} audio files from the demo's packages: run scripts/install-deps.sh")
    records = conformance.conform(files, parity_every=3)
    played = [r for r in records if r["ffmpeg_plays"]]
    refused = [(r["path"], r["error"]) for r in played if r["error"]]
    assert not refused, refused
    compared = [r for r in records if "cosine" in r]
    assert len(played) >= 0.9 * len(records) and len(compared) >= 50, conformance.summary(records)
    worst = sorted(compared, key=lambda r: r["cosine"])[:3]
    assert all(r["cosine"] >= PARITY for r in compared), worst
