#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with cargo-fuzz (libFuzzer, nightly Rust):
#   decode_audio  audio bytes as audio_info/audio_embed get a BLOB: probe, decode, front-end
#   vector_blob   float32 vector BLOBs (audio_text_score's arguments)
#   manifest      manifest.json: parse, then the audio section's validation
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]   (default 60 s, all three)
# Seeds come from real files, regenerated on each run into fuzz/corpus/<target>/seeds: short
# WAV/FLAC/Ogg/MP3/M4A/MKV made with sox and ffmpeg from tones and from the desktop's sounds
# (/usr/share/sounds), the committed manifests, and real vector BLOBs. What libFuzzer learns
# stays in fuzz/corpus/<target>; inputs that crash land in fuzz/artifacts/<target>.
# One target at a time, one process: it is a CPU-heavy job. An allocation over 512 MB, or a
# process over 2 GB, counts as a crash (the decoder must not trust a file's counts).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(decode_audio vector_blob manifest)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "nightly Rust is missing: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

seeds() {
    local target=$1 dir=fuzz/corpus/$1/seeds
    rm -rf "$dir"
    mkdir -p "$dir"
    case $target in
    decode_audio)
        local tmp
        tmp=$(mktemp -d)
        if command -v sox >/dev/null; then
            sox -n -r 16000 -b 16 "$tmp/tone.wav" synth 0.3 sine 440
            sox -n -r 22050 -b 16 -c 2 "$tmp/stereo.wav" synth 0.3 sine 330 sine 660
            sox -n -r 8000 -b 8 -e unsigned "$dir/u8.wav" synth 0.2 sine 500
            sox -n -r 44100 -b 32 -e float "$dir/f32.wav" synth 0.1 sine 1000
            cp "$tmp/tone.wav" "$tmp/stereo.wav" "$dir/"
            for ext in flac ogg mp3; do
                sox "$tmp/tone.wav" "$dir/tone.$ext"
                sox "$tmp/stereo.wav" "$dir/stereo.$ext"
            done
        else
            echo "sox missing: fewer seeds (scripts/install-deps.sh installs it)" >&2
        fi
        if command -v ffmpeg >/dev/null && [ -f "$tmp/tone.wav" ]; then
            local ff=(ffmpeg -nostdin -loglevel error -y -i "$tmp/tone.wav")
            "${ff[@]}" -c:a aac "$dir/aac.m4a"
            "${ff[@]}" -c:a aac -movflags frag_keyframe+empty_moov "$dir/fragmented.m4a"
            "${ff[@]}" -c:a alac "$dir/alac.m4a"
            "${ff[@]}" -c:a aac -f adts "$dir/tone.aac"
            "${ff[@]}" -c:a flac "$dir/flac.mka"
            "${ff[@]}" -c:a libvorbis "$dir/vorbis.webm" 2>/dev/null || true
            "${ff[@]}" -c:a pcm_s16le "$dir/pcm.mka"
            "${ff[@]}" -c:a adpcm_ima_wav "$dir/adpcm.wav"
            "${ff[@]}" -metadata title=tagged -metadata artist=fuzz -c:a libmp3lame "$dir/id3.mp3" 2>/dev/null || true
            "${ff[@]}" -metadata title=tagged -c:a aac "$dir/tagged.m4a"
            "${ff[@]}" -metadata title=tagged -c:a pcm_s16le "$dir/list.wav"
            # What the truncation and conformance code reads (issue 22): RF64 and its ds64
            # sizes, a WAV written to a pipe, an M4A with its moov first, MPEG-2.5, and ID3v2
            # tags stacked in front of an MP3 and in front of a FLAC stream.
            "${ff[@]}" -c:a pcm_s16le -rf64 always "$dir/rf64.wav"
            "${ff[@]}" -c:a pcm_s16le -f wav - > "$dir/piped.wav"
            "${ff[@]}" -c:a aac -movflags +faststart "$dir/faststart.m4a"
            "${ff[@]}" -c:a libmp3lame -ar 8000 "$dir/mpeg25.mp3" 2>/dev/null || true
            if [ -f "$dir/id3.mp3" ] && [ -f "$dir/tone.flac" ]; then
                local tag
                tag=$(head -c 10 "$dir/id3.mp3" | od -An -tu1 | awk '{print (($7%128)*2097152)+(($8%128)*16384)+(($9%128)*128)+($10%128)+10}')
                { head -c "$tag" "$dir/id3.mp3"; cat "$dir/id3.mp3"; } > "$dir/stacked-id3.mp3"
                { head -c "$tag" "$dir/id3.mp3"; cat "$dir/tone.flac"; } > "$dir/id3-in-front.flac"
            fi
        else
            echo "ffmpeg missing: no m4a/mkv seeds" >&2
        fi
        # Real recordings: the desktop's sounds, cut to half a second (small seeds mutate fast).
        local n=0
        for f in /usr/share/sounds/*/stereo/*.oga /usr/share/sounds/*/*.wav; do
            [ -f "$f" ] || continue
            n=$((n + 1))
            [ $n -le 6 ] || break
            local base
            base=$(basename "${f%.*}")
            if command -v sox >/dev/null; then
                sox "$f" "$dir/$base.ogg" trim 0 0.5 2>/dev/null || true
                sox "$f" "$dir/$base.flac" trim 0 0.5 2>/dev/null || true
            fi
            if command -v ffmpeg >/dev/null; then
                ffmpeg -nostdin -loglevel error -y -i "$f" -t 0.5 -c:a aac "$dir/$base.m4a" || true
            fi
        done
        rm -rf "$tmp"
        ;;
    vector_blob)
        # Real embeddings from the built extension when the default bundle is set up, and
        # hand-made ones (short, odd lengths, NaN, infinity) always.
        local py=python3
        # Debian's python3 may lack enable_load_extension; the project's venv has it.
        [ -x .venv/bin/python ] && py=.venv/bin/python
        "$py" - "$dir" <<'PY'
import os, sqlite3, struct, sys
out = sys.argv[1]
def put(name, data):
    open(os.path.join(out, name), "wb").write(data)
put("one.f32", struct.pack("<f", 1.0))
put("four.f32", struct.pack("<4f", 0.5, -0.5, 0.25, 0.0))
put("nan.f32", struct.pack("<3f", 0.1, float("nan"), 0.2))
put("inf.f32", struct.pack("<2f", float("inf"), 1.0))
put("odd", b"\x00\x00\x80")
try:
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension("dist/audiotext0")
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('default', 'models/default')")
    for i, text in enumerate(["a dog barking", "rain on a window", "a bell rings"]):
        put(f"text_embed_{i}.f32", conn.execute("SELECT text_embed(?)", (text,)).fetchone()[0])
except Exception as e:  # the extension or the model is not built: hand-made seeds only
    print(f"vector seeds: no real embeddings ({e})", file=sys.stderr)
PY
        ;;
    manifest)
        local i=0
        for f in models/*/manifest.json; do
            [ -f "$f" ] || continue
            i=$((i + 1))
            cp "$f" "$dir/manifest_$i.json"
        done
        ;;
    esac
    # Inputs that once crashed (or ran slow) stay in the seeds: each run replays them first.
    if [ -d "fuzz/regressions/$target" ]; then
        cp fuzz/regressions/"$target"/* "$dir/"
    fi
    echo "$target: $(find "$dir" -type f | wc -l) seed files"
}

# Crash, out-of-memory, leak and timeout inputs (slow-unit-* files are reported, not counted).
crashes() {
    find "fuzz/artifacts/$1" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'leak-*' -o -name 'timeout-*' \) | wc -l
}

echo "building the fuzz targets (nightly, address sanitizer)"
(cd fuzz && cargo +nightly fuzz build)

declare -A EXECS CRASHES ELAPSED
for target in "${TARGETS[@]}"; do
    seeds "$target"
    mkdir -p "fuzz/corpus/$target/learned" "fuzz/artifacts/$target"
    before=$(crashes "$target")
    log=fuzz/artifacts/$target.log
    echo "fuzzing $target for ${SECONDS_PER_TARGET}s (log: $log)"
    started=$SECONDS
    set +e
    (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target/learned" "corpus/$target/seeds" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -timeout=20 -print_final_stats=1) >"$log" 2>&1
    set -e
    ELAPSED[$target]=$((SECONDS - started))
    EXECS[$target]=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    CRASHES[$target]=$(($(crashes "$target") - before))
    grep -E '^==[0-9]+== ?ERROR|panicked at|SUMMARY|Test unit written|Slowest unit' "$log" | head -5 || true
done

echo
printf '%-14s %12s %8s %8s\n' target executions crashes seconds
for target in "${TARGETS[@]}"; do
    printf '%-14s %12s %8s %8s\n' "$target" "${EXECS[$target]}" "${CRASHES[$target]}" "${ELAPSED[$target]}"
done
echo "libFuzzer stops at the first crash: seconds is how long it ran"
echo "crash inputs (if any): fuzz/artifacts/<target>/; reproduce with"
echo "  (cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>)"
