"""The Python package as a new user gets it: a fresh virtual environment, `pip install` of the
built wheel (dist/wheels/, made by scripts/build-wheel.sh, which scripts/test.sh runs first) and
its dependencies, no Rust toolchain on the PATH; then the README's five lines of Python and the
`audiotext` command line, on real recorded sounds.

The sounds are Debian's (scripts/install-deps.sh installs them: Scratch's sound library, Tux
Paint's and GNOME Pomodoro's), linked under names that say what they are. The default model
never trained on them (it trains on ESC-50). pip fetches onnxruntime's own dependencies from
PyPI; onnxruntime itself comes from set-up's cache when it is there.
"""

import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

WHEELS = ROOT / "dist" / "wheels"
ORT_WHEELS = ROOT / ".cache" / "wheels"
SCRATCH = Path("/usr/share/scratch/Media/Sounds")
SOUNDS = {
    "rooster.wav": SCRATCH / "Animal" / "Rooster.wav",
    "cat-meowing.wav": SCRATCH / "Animal" / "Meow.wav",
    "bell-tolling.wav": SCRATCH / "Effects" / "BellToll.wav",
    "baby-crying.mp3": SCRATCH / "Human" / "BabyCry.mp3",
    "thunder.ogg": Path("/usr/share/tuxpaint/sounds/magic/lightning.ogg"),
    "rain.ogg": Path("/usr/share/tuxpaint/sounds/magic/rain.ogg"),
    "clock-ticking.ogg": Path("/usr/share/gnome-pomodoro/sounds/clock.ogg"),
}
# Without a Rust toolchain: the system's folders only.
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"


def readme_snippet():
    """The Python block of python/README.md (the package's page), as a user would paste it."""
    text = (ROOT / "python" / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture(scope="module")
def wheel():
    found = sorted(WHEELS.glob("sqlite_audiotext-*.whl"))
    if not found:
        pytest.fail(f"no wheel in {WHEELS}: run scripts/build-wheel.sh (scripts/test.sh does)")
    return found[-1]


def fresh_venv(folder, *packages, python="/usr/bin/python3"):
    """A new virtual environment of `python` at `folder` with `packages` (and their
    dependencies) installed by pip, with no Rust toolchain on the PATH; onnxruntime from
    set-up's cache when there."""
    env = dict(os.environ, PATH=PLAIN_PATH)
    env.pop("PYTHONPATH", None)
    subprocess.run([str(python), "-m", "venv", str(folder)], check=True, env=env)
    links = [arg for d in sorted(ORT_WHEELS.glob("onnxruntime-*")) for arg in ("--find-links", str(d))]
    done = subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                           *links, *map(str, packages)], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def walk_recording(recordings, folder):
    """`folder/walk.wav`: 10 s of quiet noise before each of rain, thunder and a bell (sox), and
    where the thunder is: (path, start, end) in seconds."""
    folder.mkdir()
    pieces = []
    for index, name in enumerate(["rain.ogg", "thunder.ogg", "bell-tolling.wav"]):
        gap = folder / f"gap{index}.wav"
        subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(gap), "synth", "10", "brownnoise", "vol", "0.004"], check=True)
        piece = folder / f"piece{index}.wav"
        subprocess.run(["sox", "-V1", "-G", str(recordings / name), "-r", "16000", "-c", "1", str(piece)], check=True)
        pieces += [gap, piece]
    walk = folder / "walk" / "walk.wav"
    walk.parent.mkdir()
    subprocess.run(["sox", *map(str, pieces), str(walk)], check=True)
    lengths = [float(subprocess.run(["soxi", "-D", str(p)], capture_output=True, text=True, check=True).stdout) for p in pieces]
    return walk, sum(lengths[:3]), sum(lengths[:4])


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A new virtual environment with only the wheel and its dependencies installed."""
    return fresh_venv(tmp_path_factory.mktemp("venv") / "env", wheel)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    missing = [str(p) for p in SOUNDS.values() if not p.exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install-deps.sh")
    folder = tmp_path_factory.mktemp("work") / "recordings"
    folder.mkdir()
    for name, source in SOUNDS.items():
        (folder / name).symlink_to(source)
    return folder


def run(venv, args, cwd, **kwargs):
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{PLAIN_PATH}")
    for name in ("PYTHONPATH", "AUDIOTEXT_ORT_DYLIB", "ORT_DYLIB_PATH", "LD_LIBRARY_PATH"):
        env.pop(name, None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def test_the_wheel_holds_the_extension_and_model_but_no_runtime(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "sqlite_audiotext/audiotext0.so" in names
    for file in ("manifest.json", "text.onnx", "audio.onnx", "tokenizer.json"):
        assert f"sqlite_audiotext/models/default/{file}" in names
    assert not [n for n in names if "onnxruntime" in n], names
    # PyPI takes manylinux tags only; auditwheel (build-wheel.sh) chose it from the library.
    assert re.search(r"-py3-none-manylinux_2_\d+_x86_64\.whl$", wheel.name), wheel.name
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: onnxruntime>=1.22" in metadata


def test_auditwheel_confirms_the_manylinux_tag_and_the_library_is_the_built_one(wheel):
    """`auditwheel show` (a test dependency) finds the wheel consistent with the very tag it
    carries, and the retagging left the library as built."""
    shown = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    tag = re.search(r"-(manylinux_2_\d+_x86_64)\.whl$", wheel.name).group(1)
    assert re.search(rf'platform tag:\s+"{tag}"', " ".join(shown.stdout.split())), shown.stdout
    inside = zipfile.ZipFile(wheel).read("sqlite_audiotext/audiotext0.so")
    assert inside == (ROOT / "dist" / "audiotext0.so").read_bytes()


def test_readme_snippet_finds_real_sounds(venv, recordings):
    """The five lines of python/README.md, with 'a dog barking' asked of these sounds as
    'thunder' (there is no dog among them): the thunder clip comes first."""
    snippet = readme_snippet().replace("'a dog barking'", "'thunder'")
    done = run(venv, [str(venv / "bin" / "python"), "-c", snippet], cwd=recordings.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    ranked = eval(done.stdout)  # the snippet prints a list of (path, score)
    assert len(ranked) == 5, ranked
    assert Path(ranked[0][0]).name == "thunder.ogg", ranked
    assert all(a[1] >= b[1] for a, b in zip(ranked, ranked[1:]))


def test_runtime_comes_from_the_onnxruntime_package(venv, recordings):
    code = ("import sqlite3, sqlite_audiotext; c = sqlite3.connect(':memory:'); sqlite_audiotext.load(c); "
            "print(c.execute('SELECT audiotext_debug()').fetchone()[0])")
    done = run(venv, [str(venv / "bin" / "python"), "-c", code], cwd=recordings.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"site-packages/onnxruntime/capi/libonnxruntime\.so", done.stdout), done.stdout
    assert "models/default" in done.stdout and "sqlite_audiotext" in done.stdout, done.stdout
    shell = run(venv, [str(venv / "bin" / "python"), "-m", "sqlite_audiotext"], cwd=recordings.parent)
    assert shell.returncode == 0 and ".load " in shell.stdout, shell.stderr


def test_command_line_index_is_resumable_and_search_ranks(venv, recordings, tmp_path):
    database = tmp_path / "sounds.db"
    audiotext = str(venv / "bin" / "audiotext")
    first = run(venv, [audiotext, "index", str(recordings), str(database)], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{len(SOUNDS)} audio files" in first.stdout and f"{len(SOUNDS)} to index" in first.stdout, first.stdout
    assert f"{len(SOUNDS)}/{len(SOUNDS)} files" in first.stderr and "files/s" in first.stderr, first.stderr
    # Unchanged files are skipped; a changed one is indexed again; a broken one is an error row.
    again = run(venv, [audiotext, "index", str(recordings), str(database)], cwd=tmp_path)
    assert f"{len(SOUNDS)} unchanged, 0 to index" in again.stdout, again.stdout
    (recordings / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    third = run(venv, [audiotext, "index", str(recordings), str(database)], cwd=tmp_path)
    assert "1 to index" in third.stdout and "error:" in third.stderr and "broken.wav" in third.stderr, (third.stdout, third.stderr)
    assert f"{len(SOUNDS)} files indexed, 1 with errors" in third.stdout, third.stdout
    (recordings / "broken.wav").unlink()
    found = run(venv, [audiotext, "search", str(database), "a rooster crowing", "-k", "3"], cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert len(lines) == 3 and lines[0].endswith("rooster.wav"), lines
    missing = run(venv, [audiotext, "search", str(tmp_path / "none.db"), "x"], cwd=tmp_path)
    assert missing.returncode == 1 and "no database at" in missing.stderr, missing.stderr
    # clip_index stays in step with clips (the broken file's error row has no embedding), and
    # search answers from it with the same scores as the exact scan.
    conn = sqlite3.connect(database)
    indexed = conn.execute("SELECT count(*) FROM clips WHERE embedding IS NOT NULL").fetchone()[0]
    in_index = conn.execute("SELECT count(*) FROM clip_index_metadata").fetchone()[0]
    durations = dict(conn.execute("SELECT path, duration FROM clips"))
    conn.close()
    assert in_index == indexed == len(SOUNDS), (in_index, indexed)
    # Filters, exactly: by extension, by duration, by folder.
    def search(*args):
        done = run(venv, [audiotext, "search", str(database), "a rooster crowing", "-k", "10", *args], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return [line.split()[-1] for line in done.stdout.splitlines()]
    oggs = search("--extension", "OGG")
    assert oggs and all(p.endswith(".ogg") for p in oggs), oggs
    assert len(oggs) == sum(p.endswith(".ogg") for p in durations)
    short = search("--max-duration", "2.5")
    assert sorted(short) == sorted(p for p, d in durations.items() if d is not None and d <= 2.5), (short, durations)
    assert search("--folder", str(recordings))[0].endswith("rooster.wav")
    assert search("--folder", str(tmp_path / "elsewhere")) == []


def test_command_line_finds_moments(venv, recordings, tmp_path):
    """With --segments, search answers with the moment: the thunder inside a longer recording
    made of quiet noise, rain, thunder and a bell (sox)."""
    walk, thunder_start, thunder_end = walk_recording(recordings, tmp_path / "long")
    folder = walk.parent
    database = tmp_path / "moments.db"
    audiotext = str(venv / "bin" / "audiotext")
    done = run(venv, [audiotext, "index", "--segments", str(folder), str(database)], cwd=tmp_path)
    assert done.returncode == 0 and "segments" in done.stdout, done.stderr[-3000:]
    found = run(venv, [audiotext, "search", str(database), "thunder", "-k", "1"], cwd=tmp_path)
    score, span, _, path = found.stdout.split(maxsplit=3)
    start, end = (float(x) for x in span.split("-"))
    assert path.strip().endswith("walk.wav"), found.stdout
    assert start < thunder_end and thunder_start < end, (start, end, thunder_start, thunder_end)
    # Each file is embedded once: its clip row is pooled from its segments, and equals what
    # the plain index (audio_embed_files) stores for the same files.
    def clips(*args):
        database = tmp_path / f"clips-{len(args)}.db"
        done = run(venv, [audiotext, "index", *args, str(recordings), str(database)], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        conn = sqlite3.connect(database)
        rows = {p: (d, np.frombuffer(e, "<f4")) for p, d, e in conn.execute("SELECT path, duration, embedding FROM clips")}
        conn.close()
        return rows
    pooled, embedded = clips("--segments"), clips()
    assert pooled.keys() == embedded.keys() and len(pooled) == len(SOUNDS), (pooled.keys(), embedded.keys())
    for p, (duration, vector) in embedded.items():
        assert abs(pooled[p][0] - duration) < 1e-3, (p, pooled[p][0], duration)
        assert float(vector @ pooled[p][1]) > 0.99999, p
