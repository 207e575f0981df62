"""examples/ray/embed_on_ray.py on a local Ray cluster of two worker nodes (one CPU each), over
real recorded sounds (Debian's Scratch library): the Parquet rows, loaded into SQLite, equal
what `audio_embed_files` and `audio_segment_files` give in one process on the same files.

A fresh virtual environment gets the built wheel and Ray (pinned below) from PyPI."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from test_package import fresh_venv, run
from test_package import wheel  # noqa: F401  (fixture)

RAY = "ray[data]==2.60.0"
EXAMPLE = ROOT / "examples" / "ray" / "embed_on_ray.py"
SCRATCH = Path("/usr/share/scratch/Media/Sounds")
FILES = 24


@pytest.fixture(scope="module")
def ray_venv(wheel, tmp_path_factory):  # noqa: F811
    return fresh_venv(tmp_path_factory.mktemp("rvenv") / "env", wheel, RAY)


@pytest.fixture(scope="module")
def file_list(tmp_path_factory):
    sounds = sorted(SCRATCH.glob("*/*.wav"))[:FILES]
    if len(sounds) < FILES:
        pytest.fail(f"fewer than {FILES} WAV files under {SCRATCH}: run scripts/install-deps.sh")
    path = tmp_path_factory.mktemp("list") / "files.txt"
    path.write_text("".join(f"{p}\n" for p in sounds))
    return path


DRIVER = textwrap.dedent("""
    import sys
    from ray.cluster_utils import Cluster
    sys.path.insert(0, sys.argv[1])
    import embed_on_ray

    # A head that runs no work, and two worker nodes of one CPU each.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 200 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
    cluster.wait_for_nodes()
    import ray
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    print("worker nodes:", len(nodes))
    print(embed_on_ray.embed(sys.argv[2], sys.argv[3], address=cluster.address, segments=True, workers=2), "files")
    ray.shutdown()
    cluster.shutdown()
""")


def test_ray_pipeline_equals_one_process(ray_venv, file_list, tmp_path):
    parquet, database = tmp_path / "parquet", tmp_path / "ray.db"
    python = str(ray_venv / "bin" / "python")
    done = run(ray_venv, [python, "-c", DRIVER, str(EXAMPLE.parent), str(file_list), str(parquet)], cwd=tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "worker nodes: 2" in done.stdout and f"{FILES} files" in done.stdout, done.stdout
    assert list(parquet.glob("*.parquet")), list(parquet.iterdir())
    loaded = run(ray_venv, [python, str(EXAMPLE), "load", str(parquet), str(database)], cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]

    # The same files in one process, through the same package.
    reference = textwrap.dedent("""
        import json, sqlite3, sys, sqlite_audiotext
        conn = sqlite3.connect(sys.argv[1]); sqlite_audiotext.load(conn)
        listing = json.dumps(open(sys.argv[2]).read().split())
        conn.execute("ATTACH ':memory:' AS one")
        conn.execute("CREATE TABLE one.clips AS SELECT path, duration, embedding, error FROM audio_embed_files(?)", (listing,))
        conn.execute("CREATE TABLE one.segments AS SELECT path, start, end, embedding FROM audio_segment_files(?) WHERE error IS NULL", (listing,))
        out = {
            "clips": conn.execute("SELECT o.path, o.duration, o.error, r.duration, r.error, o.embedding, r.embedding FROM one.clips o LEFT JOIN main.clips r USING (path) ORDER BY o.path").fetchall(),
            "segments": conn.execute("SELECT o.path, o.start, o.end, o.embedding, r.embedding FROM one.segments o LEFT JOIN main.segments r ON r.path = o.path AND r.start = o.start ORDER BY o.path, o.start").fetchall(),
            "ray_counts": conn.execute("SELECT (SELECT count(*) FROM main.clips), (SELECT count(*) FROM main.segments)").fetchone(),
        }
        print(json.dumps({k: [[x.hex() if isinstance(x, bytes) else x for x in row] for row in v] if k != "ray_counts" else v for k, v in out.items()}))
    """)
    compared = run(ray_venv, [python, "-c", reference, str(database), str(file_list)], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    result = json.loads(compared.stdout)
    clips, segments = result["clips"], result["segments"]
    assert len(clips) == FILES and result["ray_counts"] == [FILES, len(segments)], result["ray_counts"]
    worst = 0.0
    for path, duration, error, ray_duration, ray_error, one, other in clips:
        assert other is not None or error is not None, f"{path} is missing from the Ray output"
        assert (error, duration) == (ray_error, ray_duration), path
        if one is not None:
            worst = max(worst, float(np.max(np.abs(np.frombuffer(bytes.fromhex(one), "<f4") - np.frombuffer(bytes.fromhex(other), "<f4")))))
    for path, start, end, one, other in segments:
        assert other is not None, f"segment {path} at {start} is missing from the Ray output"
        worst = max(worst, float(np.max(np.abs(np.frombuffer(bytes.fromhex(one), "<f4") - np.frombuffer(bytes.fromhex(other), "<f4")))))
    print(f"{FILES} files, {len(segments)} segments; largest difference {worst:.2e}")
    assert worst <= 1e-5
