"""Hostile files under a memory limit (issue 12): a 45 KB M4A whose sample-table count was
mutated made the decoder ask for gigabytes, and under `ulimit -v` the host process aborted
(SIGABRT from Rust's allocation-failure handler). Now the count is checked against the file
before anything is allocated: the call is an SQL error and the host lives on.

Each call runs in a child Python with an address-space limit (RLIMIT_AS, as `ulimit -v` sets):
twice what the same call on the intact file needs (measured in a child, so ONNX Runtime's
threads and the model are counted on this machine), and far below the ~8 GB the mutated count
asks for."""

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import make_audio as ma
from conftest import DEFAULT_BUNDLE, EXTENSION

RATE = 22050
# The stsz count written into the file: 2147418112 entries of 4 bytes, about 8 GB.
MUTATED_COUNT = 0x7FFF0000

CHILD = textwrap.dedent(
    """
    import sqlite3, sys
    extension, bundle, function, source = sys.argv[1:5]
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(extension)
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('a', ?)", (bundle,))
    arg = open(source[5:], "rb").read() if source.startswith("blob:") else source
    sql = "SELECT audio_info(?)" if function == "audio_info" else "SELECT audio_embed('a', ?)"
    try:
        value = conn.execute(sql, (arg,)).fetchone()[0]
        print("OK", len(value))
    except sqlite3.OperationalError as error:
        print("ERROR", error)
    peak = [l for l in open("/proc/self/status") if l.startswith("VmPeak")][0].split()[1]
    print("VMPEAK_KB", peak)
    """
)


def run_child(function, source, limit_bytes=None):
    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-c", CHILD, str(EXTENSION), str(DEFAULT_BUNDLE), function, source],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )


def peak_bytes(result):
    line = [l for l in result.stdout.splitlines() if l.startswith("VMPEAK_KB")][0]
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def m4a_files(tmp_path_factory):
    if not ma.have_ffmpeg():
        pytest.skip("ffmpeg missing: scripts/install-deps.sh installs it")
    if not (DEFAULT_BUNDLE / "audio.onnx").exists():
        pytest.fail(f"{DEFAULT_BUNDLE} has no audio.onnx: run scripts/build.sh first")
    tmp = tmp_path_factory.mktemp("limits")
    ma.write_wav(tmp / "tone.wav", ma.sine(440, RATE, 1.0), RATE, "s16")
    good = tmp / "good.m4a"
    ma.encode(tmp / "tone.wav", good)
    data = bytearray(good.read_bytes())
    at = data.index(b"stsz")
    # After the type: version and flags, sample size (0: a table follows), entry count.
    count = at + 4 + 8
    assert int.from_bytes(data[at + 8 : at + 12], "big") == 0, "ffmpeg wrote a constant-size stsz"
    data[count : count + 4] = MUTATED_COUNT.to_bytes(4, "big")
    bad = tmp / "bad.m4a"
    bad.write_bytes(bytes(data))
    return good, bad


@pytest.mark.parametrize("function", ["audio_info", "audio_embed"])
def test_mutated_m4a_sample_table_is_an_sql_error_under_a_memory_limit(m4a_files, function):
    good, bad = m4a_files
    normal = run_child(function, str(good))
    assert normal.returncode == 0 and normal.stdout.startswith("OK"), normal.stderr
    limit = 2 * peak_bytes(normal)
    # The limit must stay far below what the mutated count asks for, or it proves nothing.
    assert limit < MUTATED_COUNT * 4 // 2, f"a normal {function} call needs {peak_bytes(normal)} bytes"
    # The same call on the intact file fits under the limit.
    assert run_child(function, str(good), limit).stdout.startswith("OK")
    for source, name in ((str(bad), str(bad)), (f"blob:{bad}", "audio blob")):
        result = run_child(function, source, limit)
        assert result.returncode == 0, f"the host died ({result.returncode}): {result.stderr[-2000:]}"
        first = result.stdout.splitlines()[0]
        assert first.startswith(f"ERROR {function}: {name} is corrupt: its sample table (stsz) declares {MUTATED_COUNT} entries"), first
        assert "re-encode or re-download the file" in first
