"""Shared fixtures: the built extension loaded into Debian's Python sqlite3 module; and
helpers more than one test file states: the window layout, threads by name."""

import sys
from pathlib import Path

# Tests import the helpers, conftest and each other's modules by bare name from any area folder.
TESTS = Path(__file__).resolve().parent
HELPERS = TESTS / "helpers"
AREAS = ("sql", "index", "audio", "trainer", "package", "plugin")
for _folder in (HELPERS, TESTS, *(TESTS / area for area in AREAS)):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import math
import os
import sqlite3

import numpy as np
import pytest

ROOT = TESTS.parents[1]
DIST = ROOT / "dist"
EXTENSION = DIST / "audiotext0"  # SQLite adds the platform suffix (.so)
MINILM_DIR = ROOT / ".cache" / "pretrained" / "all-MiniLM-L6-v2"
DEFAULT_BUNDLE = ROOT / "models" / "default"
SHARED_DATA = ROOT.parent / "shared" / "data"


def open_connection(path=":memory:"):
    """A connection with the extension loaded, the way a Python user would do it."""
    conn = sqlite3.connect(path)
    conn.enable_load_extension(True)
    conn.load_extension(str(EXTENSION))
    conn.enable_load_extension(False)
    return conn


@pytest.fixture
def conn():
    c = open_connection()
    yield c
    c.close()


@pytest.fixture(scope="session")
def minilm_dir():
    if not (MINILM_DIR / "model.safetensors").exists():
        pytest.fail(f"{MINILM_DIR} is missing: run scripts/setup.sh first")
    return MINILM_DIR


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: tests on real clips need ../shared/data")
    return SHARED_DATA


def window_bounds(total, rate, windowing):
    """The windows of a signal of `total` samples: an independent statement of
    crates/audiotext-core/src/audio/stream.rs's contract (lengths are round(seconds * rate), halves up)."""

    def samples(seconds):
        return int(math.floor(float(np.float32(seconds)) * rate + 0.5))

    clip = samples(windowing["clip_seconds"])
    hop = samples(windowing["hop_seconds"])
    min_len = samples(windowing["min_seconds"])
    out = []
    start = 0
    while start < total:
        end = min(start + clip, total)
        if end - start < clip and end - start < min_len and out:
            break
        out.append((start, end))
        if end == total:
            break
        start += hop
    return out


def threads_named(prefix):
    """Threads of this process whose name (as /proc shows it: 15 characters) starts with `prefix`."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return sum(name.startswith(prefix) for name in names)
