"""Peak memory of audio_embed on long audio: does it stay bounded as the README promises?
And what does cutting the same files into moments (audio_segments) cost against embedding them?

For 10 s, 10 min and 1 h of audio in WAV, FLAC, MP3 and M4A, each embedded once from a path
(`audio_embed('x.wav')`) and once from a BLOB (`audio_embed(readfile('x.wav'))`: the shell's
readfile hands SQLite its buffer, so the BLOB exists once), this prints the peak RSS of a fresh
`sqlite3` process (ru_maxrss of the child, from wait4) and its difference from the 10 s file of
the same format and source; `--sources files` also measures `audio_embed_files` over the one
file, `segments` a full `audio_segments` scan of it (`SELECT count(*)`: every window embedded
and returned as a row) and `segment_files` the same through `audio_segment_files` (issue 14:
segmenting should cost no more than embedding, the windows being computed anyway). Targets (issue 12): from a path, one hour within 150 MB of ten
seconds; from a BLOB, within the BLOB's own size plus 150 MB.

The inputs are generated (no download): 10 s of 44.1 kHz stereo, pink noise under a rising
tone and a few short tone bursts, looped with ffmpeg to 10 min and 1 h, then encoded.

  .venv/bin/python bench/long_audio_memory.py [--keep DIR] [--durations 10,600,3600]
                                              [--formats wav,flac,mp3,m4a] [--sources path,blob,files]

--extension PATH measures another build (default dist/audiotext0; the bundle registered as
`default` is the one next to it or one folder up, else none). --keep DIR generates the inputs into DIR, or reuses those already there (about 1 GB for an
hour in every format); without it they go to a temporary folder that is removed afterwards.
Needs sox, ffmpeg and the sqlite3 shell, and dist/audiotext0.so with models/default (set-up).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_SECONDS = 10
TARGET_MB = 150
ENCODE = {
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "m4a": ["-c:a", "aac", "-b:a", "160k"],
}


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_inputs(folder, durations, formats):
    """`folder/{seconds}s.{ext}`; existing files are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base-10s.wav"
    if not base.exists():
        # Pink noise, a 200 -> 4000 Hz sweep, and 880 Hz bursts: every window has content.
        run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(folder / "noise.wav"),
             "synth", "10", "pinknoise", "vol", "0.3"])
        run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(folder / "sweep.wav"),
             "synth", "10", "sine", "200-4000", "vol", "0.3"])
        run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(folder / "bursts.wav"),
             "synth", "0.25", "sine", "880", "pad", "0", "0.75", "repeat", "9", "vol", "0.3"])
        run(["sox", "-m", str(folder / "noise.wav"), str(folder / "sweep.wav"),
             str(folder / "bursts.wav"), str(base)])
    out = {}
    for seconds in durations:
        for ext in formats:
            path = folder / f"{seconds}s.{ext}"
            if not path.exists():
                print(f"  generating {path.name}", file=sys.stderr, flush=True)
                tmp = path.with_suffix(".part" + path.suffix)
                run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1",
                     "-i", str(base), "-t", str(seconds), *ENCODE[ext], str(tmp)])
                tmp.rename(path)
            out[(seconds, ext)] = path
    return out


def measure(extension, path, source):
    """Peak RSS in MB and wall seconds of a fresh sqlite3 shell embedding `path` once (the
    child is reaped with wait4, so ru_maxrss is its own, not the maximum over all children)."""
    quoted = str(path).replace("'", "''")
    sql, want = {
        "path": (f"SELECT length(audio_embed('{quoted}'));", b"1536"),
        "blob": (f"SELECT length(audio_embed(readfile('{quoted}')));", b"1536"),
        "files": (f"SELECT count(embedding) FROM audio_embed_files('{quoted}');", b"1"),
        "segments": (f"SELECT count(embedding) > 0 FROM audio_segments('{quoted}');", b"1"),
        "segment_files": (f"SELECT count(embedding) > 0 AND count(error) = 0 FROM audio_segment_files('{quoted}');", b"1"),
    }[source]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(["sqlite3", ":memory:", "-bail", "-cmd", f".load {extension}", sql],
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        text, error = out.read().strip(), err.read().decode(errors="replace")
    if proc.returncode != 0 or text != want:
        raise RuntimeError(f"{path.name} ({source}): exit {proc.returncode}, {text!r} {error[-500:]}")
    return usage.ru_maxrss / 1024, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="generate inputs here, or reuse them")
    parser.add_argument("--extension", type=Path, default=ROOT / "dist" / "audiotext0")
    parser.add_argument("--durations", default="10,600,3600")
    parser.add_argument("--formats", default="wav,flac,mp3,m4a")
    parser.add_argument("--sources", default="path,blob")
    args = parser.parse_args()
    durations = sorted({BASELINE_SECONDS, *(int(s) for s in args.durations.split(","))})
    formats = args.formats.split(",")
    sources = args.sources.split(",")
    for tool in ("sox", "ffmpeg", "sqlite3"):
        if not shutil.which(tool):
            sys.exit(f"error: {tool} is not installed (scripts/install-deps.sh)")
    extension = args.extension.resolve()
    if not extension.with_suffix(".so").exists():
        sys.exit(f"error: {extension}.so is missing: run scripts/build.sh")

    folder = args.keep or Path(tempfile.mkdtemp(prefix="audiotext-long-"))
    try:
        inputs = make_inputs(folder, durations, formats)
        print(f"{'format':<6} {'length':>7} {'source':<13} {'size MB':>8} {'peak MB':>8} "
              f"{'vs 10 s':>8} {'allowed':>8} {'seconds':>8}  verdict", flush=True)
        failures = 0
        for ext in formats:
            # Sources side by side for each file: each against its own 10 s baseline.
            baseline = {}
            for seconds in durations:
                for source in sources:
                    path = inputs[(seconds, ext)]
                    size_mb = path.stat().st_size / 2**20
                    peak, wall = measure(extension, path, source)
                    if seconds == BASELINE_SECONDS:
                        baseline[source] = peak
                    extra = peak - baseline[source]
                    allowed = TARGET_MB + (size_mb if source == "blob" else 0)
                    ok = extra <= allowed
                    failures += not ok
                    length = f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"
                    if seconds >= 3600:
                        length = f"{seconds // 3600} h"
                    verdict = "baseline" if seconds == BASELINE_SECONDS else ("ok" if ok else "OVER")
                    print(f"{ext:<6} {length:>7} {source:<13} {size_mb:>8.1f} {peak:>8.1f} "
                          f"{extra:>+8.1f} {allowed:>8.1f} {wall:>8.1f}  {verdict}", flush=True)
        print(f"{failures} measurement(s) over target" if failures else "all within target")
        return 1 if failures else 0
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
