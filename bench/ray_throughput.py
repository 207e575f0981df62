"""Files per second of examples/ray/embed_on_ray.py against one process, on real clips.

    .venv/bin/python bench/ray_throughput.py [--files 400] [--workers 1,2]

Makes (or reuses) a virtual environment at .cache/ray-venv with the built wheel
(scripts/build-wheel.sh) and Ray, then embeds the first N clips of ../shared/data/esc50-16k
(5 s each): once with `audio_embed_files` in one process, and once per worker count on a local
Ray cluster of that many one-CPU worker nodes (the head runs no work). Times are wall seconds of
the whole embed step, Ray's start-up excluded; run it alone on the machine.
"""

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "ray-venv"
RAY = "ray[data]==2.60.0"
DATA = ROOT.parent / "shared" / "data" / "esc50-16k" / "audio"

RUN = textwrap.dedent("""
    import json, sqlite3, sys, time
    sys.path.insert(0, sys.argv[1])
    import embed_on_ray, sqlite_audiotext
    files, out, workers = sys.argv[2], sys.argv[3], int(sys.argv[4])
    if workers == 0:
        conn = sqlite3.connect(":memory:"); sqlite_audiotext.load(conn)
        conn.execute("SELECT text_embed('warm up')").fetchone()
        started = time.perf_counter()
        n = conn.execute("SELECT count(embedding) FROM audio_embed_files(?)", (json.dumps(open(files).read().split()),)).fetchone()[0]
    else:
        import ray
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 200 * 2**20})
        for _ in range(workers):
            cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        started = time.perf_counter()
        n = embed_on_ray.embed(files, out, address=cluster.address, workers=workers)
    seconds = time.perf_counter() - started
    print("RESULT", n, seconds, flush=True)
    if workers:
        ray.shutdown()
        cluster.shutdown()
""")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: this benchmark embeds esc50-16k clips")
    wheels = sorted((ROOT / "dist" / "wheels").glob("sqlite_audiotext-*.whl"))
    if not wheels:
        sys.exit("no wheel: run scripts/build-wheel.sh")
    if not (VENV / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)
    links = [a for d in sorted((ROOT / ".cache" / "wheels").glob("onnxruntime-*")) for a in ("--find-links", str(d))]
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *links,
                    "--force-reinstall", "--no-deps", str(wheels[-1])], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *links,
                    str(wheels[-1]), RAY], check=True)
    work = ROOT / "target" / "ray-bench"
    work.mkdir(parents=True, exist_ok=True)
    files = work / "files.txt"
    files.write_text("".join(f"{p}\n" for p in sorted(DATA.iterdir())[:args.files]))
    print(f"{args.files} esc50-16k clips (5 s each), {os.cpu_count()} cores")
    print(f"{'run':<28} {'seconds':>8} {'files/s':>8} {'files/s per core':>17}")
    for workers in [0, *(int(w) for w in args.workers.split(","))]:
        out = work / f"parquet-{workers}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        done = subprocess.run([str(VENV / "bin" / "python"), "-c", RUN, str(ROOT / "examples" / "ray"), str(files), str(out), str(workers)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        count, seconds = next(line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT "))
        cores = os.cpu_count() if workers == 0 else workers
        label = "one process (all cores)" if workers == 0 else f"Ray, {workers} worker node(s) x 1 CPU"
        rate = int(count) / float(seconds)
        print(f"{label:<28} {float(seconds):>8.1f} {rate:>8.1f} {rate / cores:>17.1f}", flush=True)


if __name__ == "__main__":
    main()
