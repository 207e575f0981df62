"""Shared fixtures: the built extension loaded into Debian's Python sqlite3 module."""

import os
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
