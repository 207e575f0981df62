"""How `rescore` (candidates ranked exactly) trades latency for recall in audiotext_index.

    .venv/bin/python bench/index_rescore.py 100000 [int8:10,25,50,100,200,400 binary:500,2000]

Random unit vectors (384 dimensions, seed 0) in a plain table of a database under the system's
temporary folder; for each quantizer and rescore, an index is built from it, queried once to
warm up, then 30 random unit queries: median latency and recall@10 against numpy's exact top 10.
"""

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    plans = sys.argv[2:] or ["int8:10,25,50,100,200,400", "binary:500,2000,5000,10000"]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((31, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = [set((np.argpartition(-(vectors @ q), 10)[:10] + 1).tolist()) for q in queries]
    with tempfile.TemporaryDirectory(prefix="index-rescore-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "rescore.db")
        conn.enable_load_extension(True)
        conn.load_extension(str(ROOT / "dist" / "audiotext0"))
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("CREATE TABLE clips(id INTEGER PRIMARY KEY, embedding BLOB)")
        conn.executemany("INSERT INTO clips VALUES (?, ?)", ((i + 1, v.tobytes()) for i, v in enumerate(vectors)))
        conn.commit()
        search = "SELECT rowid FROM ix WHERE embedding MATCH ? AND k = 10"
        for plan in plans:
            quantizer, rescores = plan.split(":")
            for rescore in map(int, rescores.split(",")):
                conn.execute(f"CREATE VIRTUAL TABLE ix USING audiotext_index(embedding float[{DIM}], quantizer={quantizer}, rescore={rescore})")
                conn.execute("INSERT INTO ix(rowid, embedding) SELECT id, embedding FROM clips")
                conn.commit()
                conn.execute(search, (queries[0].tobytes(),)).fetchall()
                latencies, recalls = [], []
                for q, exact in zip(queries[1:], truth[1:]):
                    started = time.perf_counter()
                    found = {r[0] for r in conn.execute(search, (q.tobytes(),))}
                    latencies.append(time.perf_counter() - started)
                    recalls.append(len(found & exact) / 10)
                print(f"{n} rows, {quantizer} rescore={rescore}: median {1000 * np.median(latencies):.2f} ms, recall@10 {np.mean(recalls):.3f}", flush=True)
                conn.execute("DROP TABLE ix")
                conn.commit()


if __name__ == "__main__":
    main()
