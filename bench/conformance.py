"""Conformance against ffmpeg on real files: every audio file ffmpeg decodes without an error
must embed, and the embedding of our decode must match the embedding of a reference decode
(written as 16-bit WAV at the file's own rate and channels) within a cosine of 0.995. The
reference is ffmpeg, except for Ogg Vorbis, where it is Xiph's libvorbis (`libvorbis_wav`
says why); the figure against ffmpeg alone is reported too.

    .venv/bin/python bench/conformance.py [DIR ...] [--parity-sample N] [--json OUT]

With no DIR it reads the installed packages that scripts/install-deps.sh brings (scratch,
tuxpaint-plugins-default, gnome-shell-pomodoro-data, minetest-data); the report in
docs/hardening.md also reads the corpus packages under .cache/pkgs (scripts/build-corpus.sh).
The test suite runs `conform` on the installed packages (tests/python/sql/test_containers.py)."""

import argparse
import hashlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "dist" / "audiotext0"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".mp4", ".opus", ".webm", ".mka"}
INSTALLED = {
    "scratch": Path("/usr/share/scratch/Media/Sounds"),
    "tuxpaint-plugins-default": Path("/usr/share/tuxpaint/sounds"),
    "gnome-shell-pomodoro-data": Path("/usr/share/gnome-pomodoro/sounds"),
    "minetest-data": Path("/usr/share/games/minetest"),
}
PARITY_COSINE = 0.995


def audio_files(root):
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink() and p.suffix.lower() in AUDIO_SUFFIXES)


def ffmpeg_plays(path):
    """ffmpeg decodes the whole file without an error message (its notes, such as "estimating
    duration from bitrate" or "guessed channel layout", are warnings, not errors)."""
    run = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                         capture_output=True, text=True)
    return run.returncode == 0 and not run.stderr.strip()


def ffmpeg_wav(path, out):
    """ffmpeg's decode of `path` as 16-bit PCM WAV (its own rate and channels)."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-map", "0:a:0", "-c:a", "pcm_s16le", str(out)],
                   check=True, capture_output=True)


def libvorbis_wav(path, out):
    """Xiph's libvorbis decode (through sox, undithered) as 16-bit PCM WAV. ffmpeg's Ogg
    demuxer ends some streams 128 samples before the last page's granule position, where
    libvorbis and symphonia end (a stream of one audio page: 9,152 samples where the granule
    says 9,280); on a clip of a quarter second that alone moves the cosine to 0.91."""
    subprocess.run(["sox", "-D", str(path), "-b", "16", "-e", "signed-integer", str(out)], check=True, capture_output=True)


def is_vorbis(path):
    run = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=codec_name",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return run.stdout.strip() == "vorbis"


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def connect():
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(str(EXTENSION))
    conn.enable_load_extension(False)
    return conn


def embed(conn, path):
    blob = conn.execute("SELECT audio_embed(?)", (str(path),)).fetchone()[0]
    return np.frombuffer(blob, dtype="<f4")


def in_sample(path, every):
    """A fixed, spread sample: the hash of the path picks one file in `every`."""
    return int(hashlib.sha256(str(path).encode()).hexdigest()[:8], 16) % every == 0


def conform(files, parity_every=1, conn=None):
    """Runs every file through ffmpeg and the extension; returns the record of each."""
    conn = conn or connect()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            record = {"path": str(path), "ffmpeg_plays": ffmpeg_plays(path)}
            try:
                ours = embed(conn, path)
                record["error"] = None
            except sqlite3.OperationalError as e:
                ours, record["error"] = None, str(e)
            if ours is not None and record["ffmpeg_plays"] and in_sample(path, parity_every):
                wav = Path(tmp) / "reference.wav"
                ffmpeg_wav(path, wav)
                record["cosine_ffmpeg"] = cosine(ours, embed(conn, wav))
                record["reference"] = "ffmpeg"
                if is_vorbis(path):
                    libvorbis_wav(path, wav)
                    record["reference"] = "libvorbis"
                record["cosine"] = cosine(ours, embed(conn, wav)) if record["reference"] != "ffmpeg" else record["cosine_ffmpeg"]
            records.append(record)
    return records


def summary(records):
    played = [r for r in records if r["ffmpeg_plays"]]
    refused = [r for r in played if r["error"]]
    cosines = [r["cosine"] for r in records if "cosine" in r]
    return {
        "files": len(records),
        "ffmpeg_plays": len(played),
        "refused_of_those": len(refused),
        "ffmpeg_complains": len(records) - len(played),
        "embedded_of_those": sum(1 for r in records if not r["ffmpeg_plays"] and not r["error"]),
        "parity_files": len(cosines),
        "parity_min": min(cosines) if cosines else None,
        "parity_median": float(np.median(cosines)) if cosines else None,
        "parity_below": sum(1 for c in cosines if c < PARITY_COSINE),
        "parity_below_against_ffmpeg_alone": sum(1 for r in records if r.get("cosine_ffmpeg", 1.0) < PARITY_COSINE),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="*", type=Path)
    parser.add_argument("--parity-sample", type=int, default=1, help="compare embeddings on one file in N (default: all)")
    parser.add_argument("--json", type=Path, help="write every file's record here")
    args = parser.parse_args()
    roots = args.dirs or [p for p in INSTALLED.values() if p.exists()]
    started = time.time()
    by_root = {}
    for root in roots:
        files = audio_files(root)
        by_root[str(root)] = conform(files, args.parity_sample)
        print(f"{root}: {json.dumps(summary(by_root[str(root)]))}", flush=True)
    every = [r for records in by_root.values() for r in records]
    print(f"all: {json.dumps(summary(every))} in {time.time() - started:.0f} s")
    for r in every:
        if r["ffmpeg_plays"] and r["error"]:
            print(f"REFUSED (ffmpeg plays it): {r['error']}")
        if r.get("cosine", 1.0) < PARITY_COSINE:
            print(f"PARITY {r['cosine']:.4f}: {r['path']}")
    if args.json:
        args.json.write_text(json.dumps(by_root, indent=1))
    return 1 if any(r["ffmpeg_plays"] and r["error"] for r in every) else 0


if __name__ == "__main__":
    sys.exit(main())
