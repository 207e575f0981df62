#!/usr/bin/env bash
# The CUDA path, checked and timed on a machine with an NVIDIA GPU (issue 24):
#   1. builds with AUDIOTEXT_CUDA=1 (ONNX Runtime from onnxruntime-gpu), unless --prebuilt
#      (dist/ and models/ already built that way, e.g. carried to a machine without internet);
#   2. checks that audiotext_debug() says the default model runs on CUDAExecutionProvider;
#   3. embeds every audio file of FOLDER (default: ../shared/data/esc50-16k/audio, 1,892 real
#      clips) with audio_embed_files on CUDA and then on the CPU (AUDIOTEXT_PROVIDER=cpu), for
#      the default (int8) and models/default-fp32, and prints clips/s, audio-seconds/s and the
#      largest difference between the CUDA and the CPU embeddings of each file.
# PYTHON (default /usr/bin/python3, Debian's) must have a sqlite3 module that loads extensions.
# Target on one GPU: 1,000 clips/s. Exit status 1 when CUDA is not used or an embedding
# differs by more than a cosine of 0.999.
#
#   scripts/gpu-check.sh [--prebuilt] [FOLDER] [MAX_FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
prebuilt=0
if [ "${1:-}" = --prebuilt ]; then prebuilt=1; shift; fi
folder=${1:-../shared/data/esc50-16k/audio}
max_files=${2:-4000}
[ -d "$folder" ] || { echo "error: $folder is not a folder of audio files" >&2; exit 2; }
if [ "$prebuilt" = 0 ]; then AUDIOTEXT_CUDA=1 scripts/build.sh; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

"${PYTHON:-/usr/bin/python3}" - "$folder" "$max_files" <<'EOF'
import json, math, os, sqlite3, struct, subprocess, sys, time
from pathlib import Path

folder, max_files = Path(sys.argv[1]), int(sys.argv[2])
extensions = {".wav", ".flac", ".ogg", ".mp3", ".m4a"}
files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in extensions)[:max_files]
listing = json.dumps(files)

LISTING = Path("/tmp/gpu-check-files.json")
LISTING.write_text(listing)
# One process per run: the provider is chosen when the runtime loads.
RUN = """
import json, sqlite3, sys, time
files = json.loads(open(sys.argv[2]).read())
c = sqlite3.connect(':memory:'); c.enable_load_extension(True); c.load_extension('dist/audiotext0')
c.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('b', ?)", (sys.argv[1],))
c.execute("SELECT audio_embed('b', ?)", (files[0],)).fetchone()  # load the model, warm up
debug = c.execute('SELECT audiotext_debug()').fetchone()[0]
t = time.perf_counter()
rows = c.execute("SELECT path, duration, embedding, error FROM audio_embed_files(?, 'b')", (json.dumps(files),)).fetchall()
seconds = time.perf_counter() - t
print(json.dumps({"debug": debug, "seconds": seconds, "rows": [[p, d, e.hex() if e else None, err] for p, d, e, err in rows]}))
"""

def embed(bundle, provider):
    env = dict(os.environ, AUDIOTEXT_PROVIDER=provider)
    done = subprocess.run([sys.executable, "-c", RUN, str(bundle), str(LISTING)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {bundle} on {provider}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)

failed = False
for bundle in (Path("models/default"), Path("models/default-fp32")):
    results = {provider: embed(bundle, provider) for provider in ("cuda", "cpu")}
    debug = results["cuda"]["debug"]
    model_line = next((line for line in debug.splitlines() if line.startswith("model b:")), "")
    on_cuda = "audio on CUDAExecutionProvider" in model_line
    rows = {p: (d, e, err) for p, d, e, err in results["cuda"]["rows"]}
    cpu_rows = {p: (d, e, err) for p, d, e, err in results["cpu"]["rows"]}
    audio_seconds = sum(d for d, e, err in rows.values() if d)
    worst = 1.0
    for path, (d, e, err) in rows.items():
        ce = cpu_rows[path][1]
        if e and ce:
            a, b = bytes.fromhex(e), bytes.fromhex(ce)
            n = len(a) // 4
            x, y = struct.unpack(f"<{n}f", a), struct.unpack(f"<{n}f", b)
            cos = sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
            worst = min(worst, cos)
    errors = sum(1 for d, e, err in rows.values() if err)
    for provider, r in results.items():
        print(f"{bundle} on {provider}: {len(files)} files, {audio_seconds:.0f} s of audio in {r['seconds']:.2f} s: "
              f"{len(files) / r['seconds']:.1f} clips/s, {audio_seconds / r['seconds']:.0f} audio-s/s")
    print(f"{bundle}: runs on CUDA: {on_cuda}; {errors} files with errors; lowest cosine CUDA against CPU {worst:.6f}")
    if not on_cuda:
        print(debug)
    failed |= not on_cuda or worst < 0.999
sys.exit(1 if failed else 0)
EOF
