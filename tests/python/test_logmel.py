"""Log-mel parity with librosa.

The Rust test tests/logmel_parity.rs computes our samples and log-mels, dumps them with
cases.json, and runs this file as a command on that folder:

    .venv/bin/python tests/python/test_logmel.py target/logmel-parity

Under pytest, this file checks the reference pieces that need no Rust (window bounds, the hand-
derived filterbank the Rust unit tests use) and, when target/logmel-parity exists (after
`cargo test --test logmel_parity`), compares its synthetic and windowed dumps again.

Tolerance. librosa runs here in float64 on our exact float32 samples; ours runs the FFT, power
and mel sums in float32 (window and filterbank computed in f64, rounded to f32). float32 rounding
leaves an absolute error of about 1e-7 of the frame's spectral peak in every bin, so the
relative error of a band grows as its level falls below the signal's peak. Values are compared
as levels in dB of power (a `db` value times 2/power; an `ln` value times 10/ln(10) * 2/power):
  1. bands within LOUD_RANGE_DB of the clip's loudest band (and above the log floor): |diff| <=
     LOUD_TOL_DB;
  2. every value: the mel value (power or magnitude) differs by at most ALL_TOL_REL of the
     clip's largest mel value, i.e. errors stay ~100 dB under the peak;
  3. silence: every value equals the floor (within 1e-4 dB).
Measured with librosa 0.11.0 on the synthetic cases, the windowed cases and the 312 ESC-50 dev
clips: at most 2.6e-4 dB for (1) and 1.3e-6 for (2); the bounds leave a margin of about 8x.
"""

import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DUMPS = ROOT / "target" / "logmel-parity"

LOUD_RANGE_DB = 60.0
LOUD_TOL_DB = 2e-3
ALL_TOL_REL = 1e-5
DB_PER_NEPER = 10.0 / math.log(10.0)


def window_bounds(total, rate, windowing):
    """The windows of a signal of `total` samples: an independent statement of
    src/audio/stream.rs's contract (lengths are round(seconds * rate), halves up)."""

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


def win_lengths(cfg):
    """The window length of every channel: win_length, then multiscale_win_lengths."""
    return [cfg["win_length"]] + list(cfg.get("multiscale_win_lengths", []))


def librosa_logmel(y, cfg):
    """librosa's melspectrogram + the manifest's log for one FrontEnd, frames x (channels *
    mels), float64: with multiscale_win_lengths, one melspectrogram per window length
    (win_length=...), side by side in each frame's row, channel 0 first."""
    channels = [librosa_logmel_one(y, cfg, w) for w in win_lengths(cfg)]
    return np.concatenate(channels, axis=1)


def librosa_logmel_one(y, cfg, win_length):
    """One channel: librosa's melspectrogram with `win_length`, + the log, frames x mels."""
    import librosa

    # Short inputs are part of the test; librosa warns that n_fft exceeds them.
    warnings.filterwarnings("ignore", message="n_fft=.* is too large")

    s = librosa.feature.melspectrogram(
        y=np.asarray(y, dtype=np.float64),
        sr=cfg["sample_rate"],
        n_fft=cfg["n_fft"],
        hop_length=cfg["hop_length"],
        win_length=win_length,
        window=cfg["window"],
        center=cfg["center"],
        pad_mode=cfg["pad_mode"],
        power=float(cfg["power"]),
        n_mels=cfg["n_mels"],
        fmin=float(cfg["fmin"]),
        fmax=float(cfg["fmax"]),
        htk=cfg["mel_scale"] == "htk",
        norm="slaney" if cfg["mel_norm"] == "slaney" else None,
    )
    floor = float(np.float32(cfg["log_floor"]))
    if cfg["log"] == "db":
        out = librosa.power_to_db(s, ref=1.0, amin=floor, top_db=None)
    else:
        out = np.log(s + floor)
    return out.T


def to_mel_value(logmel, cfg):
    floor = float(np.float32(cfg["log_floor"]))
    x = np.asarray(logmel, dtype=np.float64)
    if cfg["log"] == "db":
        return 10.0 ** (x / 10.0)
    return np.maximum(np.exp(x) - floor, 0.0)


def level_scale(cfg):
    """dB of power per unit of a log-mel value: a `db` value is 10*log10 of the mel value, an
    `ln` value its natural log, and the mel value is a power only when cfg power is 2."""
    per_unit = 1.0 if cfg["log"] == "db" else DB_PER_NEPER
    return per_unit * 2.0 / float(cfg["power"])


def compare(ours, ref, cfg):
    """Differences between two log-mels of one config, channel by channel (each channel is a
    log-mel of its own, with its own peak); returns one dict: ok when every channel is, and the
    largest error of any."""
    if ours.shape != ref.shape:
        return {"ok": False, "why": f"shape {ours.shape} vs librosa {ref.shape}"}
    m = cfg["n_mels"]
    rs = [compare_one(ours[:, c * m:(c + 1) * m], ref[:, c * m:(c + 1) * m], cfg)
          for c in range(len(win_lengths(cfg)))]
    out = {"ok": all(r["ok"] for r in rs)}
    for key in ("loud_max_db", "all_max_rel", "max_db"):
        out[key] = max(r[key] for r in rs)
    out["n"] = sum(r["n"] for r in rs)
    return out


def compare_one(ours, ref, cfg):
    """Differences between two log-mels of one channel (see the module doc); returns a dict."""
    if ours.shape != ref.shape:
        return {"ok": False, "why": f"shape {ours.shape} vs librosa {ref.shape}"}
    if ours.size == 0:
        return {"ok": True, "loud_max_db": 0.0, "all_max_rel": 0.0, "max_db": 0.0, "n": 0}
    scale = level_scale(cfg)
    diff_db = np.abs(ours.astype(np.float64) - ref) * scale
    ref_db = ref * scale
    floor = float(np.float32(cfg["log_floor"]))
    floor_db = (10.0 * math.log10(floor) if cfg["log"] == "db" else math.log(floor) * DB_PER_NEPER) * 2.0 / float(cfg["power"])
    peak_db = ref_db.max()
    v_ours, v_ref = to_mel_value(ours, cfg), to_mel_value(ref, cfg)
    if peak_db <= floor_db + 1e-3:  # silence: every value is the floor
        return {"ok": float(diff_db.max()) <= 1e-4, "loud_max_db": 0.0, "all_max_rel": 0.0,
                "max_db": float(diff_db.max()), "n": int(ours.size)}
    loud = (ref_db >= peak_db - LOUD_RANGE_DB) & (ref_db > floor_db + 1.0)
    rel = np.abs(v_ours - v_ref) / v_ref.max()
    loud_max = float(diff_db[loud].max()) if loud.any() else 0.0
    all_rel = float(rel.max())
    return {
        "ok": loud_max <= LOUD_TOL_DB and all_rel <= ALL_TOL_REL,
        "loud_max_db": loud_max,
        "all_max_rel": all_rel,
        "max_db": float(diff_db.max()),
        "n": int(ours.size),
    }


def check_cases(dump_dir, verbose=True, kinds=("synthetic", "windowed", "clip")):
    """Compares the cases of `kinds` in dump_dir/cases.json; returns (failures, rows, doc)."""
    import soundfile

    dump_dir = Path(dump_dir)
    doc = json.loads((dump_dir / "cases.json").read_text())
    configs = doc["configs"]
    rows, failures = [], []
    for case in doc["cases"]:
        if case["kind"] not in kinds:
            continue
        cfg = configs[case["config"]]
        name = case["name"]
        if case["kind"] == "windowed":
            y = np.load(dump_dir / case["samples"])
            bounds = window_bounds(len(y), cfg["sample_rate"], case["windowing"])
            if [list(b) for b in bounds] != case["bounds"]:
                failures.append(f"{name}: windows {case['bounds']} vs reference {bounds}")
                continue
            for k, ((a, b), file) in enumerate(zip(bounds, case["windows"])):
                r = compare(np.load(dump_dir / file), librosa_logmel(y[a:b], cfg), cfg)
                rows.append((f"{name}[{a}:{b}]", case["config"], r))
            continue
        if case["kind"] == "clip":
            y_ref, sr = soundfile.read(case["source"], dtype="float32", always_2d=True)
            y_ref = y_ref.mean(axis=1, dtype=np.float32) if y_ref.shape[1] > 1 else y_ref[:, 0]
            if sr != cfg["sample_rate"]:
                failures.append(f"{name}: {case['source']} is at {sr} Hz; parity on clips needs their rate")
                continue
            if "samples" in case:
                ours_y = np.load(dump_dir / case["samples"])
                if not np.array_equal(ours_y, y_ref):
                    failures.append(f"{name}: decoded samples differ from soundfile's ({case['source']})")
            y = y_ref
        else:
            y = np.load(dump_dir / case["samples"])
        ours = np.load(dump_dir / case["logmel"])
        if not cfg["center"] and len(y) < cfg["n_fft"]:
            # librosa refuses; we return no frames.
            r = {"ok": ours.shape == (0, cfg["n_mels"] * len(win_lengths(cfg))), "loud_max_db": 0.0, "all_max_rel": 0.0, "max_db": 0.0, "n": 0}
        else:
            r = compare(ours, librosa_logmel(y, cfg), cfg)
        rows.append((name, case["config"], r))
    for name, config, r in rows:
        if not r["ok"]:
            failures.append(f"{name} ({config}): {r}")
    if verbose:
        print_summary(rows)
    return failures, rows, doc


def print_summary(rows):
    by_config = {}
    for name, config, r in rows:
        if "loud_max_db" not in r:
            continue
        s = by_config.setdefault(config, [0, 0.0, 0.0, 0.0])
        s[0] += 1
        s[1] = max(s[1], r["loud_max_db"])
        s[2] = max(s[2], r["all_max_rel"])
        s[3] = max(s[3], r["max_db"])
    print(f"{'config':28} {'cases':>5} {'loud max dB':>12} {'all max rel P':>14} {'any max dB':>11}")
    for config, (n, loud, rel, anydb) in sorted(by_config.items()):
        print(f"{config:28} {n:5d} {loud:12.2e} {rel:14.2e} {anydb:11.2e}")
    print(f"tolerance: |diff| <= {LOUD_TOL_DB} dB within {LOUD_RANGE_DB} dB of the peak; "
          f"power error <= {ALL_TOL_REL:g} x peak everywhere")


def time_librosa(files, cfg):
    """Seconds librosa takes for load (no resampling when rates match) + melspectrogram + log."""
    import librosa

    def one(path):
        y, _ = librosa.load(path, sr=cfg["sample_rate"], mono=True)
        return librosa_logmel_f32(y, cfg)

    one(files[0])
    t = time.perf_counter()
    for f in files:
        one(f)
    return time.perf_counter() - t


def librosa_logmel_f32(y, cfg):
    """librosa as users call it (float32 input), for timing."""
    import librosa

    s = librosa.feature.melspectrogram(
        y=y, sr=cfg["sample_rate"], n_fft=cfg["n_fft"], hop_length=cfg["hop_length"],
        win_length=cfg["win_length"], center=cfg["center"], pad_mode=cfg["pad_mode"],
        power=float(cfg["power"]), n_mels=cfg["n_mels"], fmin=float(cfg["fmin"]),
        fmax=float(cfg["fmax"]), htk=cfg["mel_scale"] == "htk",
        norm="slaney" if cfg["mel_norm"] == "slaney" else None,
    )
    return librosa.power_to_db(s, ref=1.0, amin=cfg["log_floor"], top_db=None)


def main(argv):
    import librosa

    if len(argv) != 2:
        print("usage: test_logmel.py DUMP_DIR (written by cargo test --test logmel_parity)")
        return 2
    print(f"librosa {librosa.__version__}, numpy {np.__version__}")
    failures, rows, doc = check_cases(argv[1])
    timing = doc.get("timing")
    if timing:
        cfg = doc["configs"]["panns_reflect"]
        lib = time_librosa(timing["files"], cfg)
        ours = timing["ours_front_end_seconds_1_thread"]
        print(f"front-end on {timing['clips']} clips ({timing['profile']} build): ours {ours:.3f} s "
              f"(1 thread; {timing['ours_front_end_seconds_rayon']:.3f} s on {timing['rayon_threads']} "
              f"rayon threads), librosa {lib:.3f} s: {lib / ours:.1f}x; our log-mel alone "
              f"{timing['ours_logmel_only_seconds_1_thread']:.3f} s")
    for f in failures:
        print("FAIL", f)
    print(f"{len(rows)} comparisons, {len(failures)} failures")
    return 1 if failures else 0


# ---- pytest -------------------------------------------------------------------------------


def test_window_bounds_by_hand():
    w = {"clip_seconds": 10.0, "hop_seconds": 10.0, "min_seconds": 1.0}
    assert window_bounds(2500, 100, w) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert window_bounds(2050, 100, w) == [(0, 1000), (1000, 2000)]
    assert window_bounds(2000, 100, w) == [(0, 1000), (1000, 2000)]
    assert window_bounds(30, 100, w) == [(0, 30)]
    assert window_bounds(0, 100, w) == []
    w = {"clip_seconds": 10.0, "hop_seconds": 5.0, "min_seconds": 1.0}
    assert window_bounds(2000, 100, w) == [(0, 1000), (500, 1500), (1000, 2000)]
    w = {"clip_seconds": 2.0, "hop_seconds": 5.0, "min_seconds": 1.0}
    assert window_bounds(1100, 100, w) == [(0, 200), (500, 700), (1000, 1100)]
    assert window_bounds(1050, 100, w) == [(0, 200), (500, 700)]


def test_hand_derived_filterbank_is_librosas():
    """The filterbank values src/audio/mel.rs's unit test derives by hand are librosa's."""
    import librosa

    w = librosa.filters.mel(sr=2000, n_fft=8, n_mels=3, fmin=0.0, fmax=1000.0)
    np.testing.assert_allclose(w, [[0, 0.004, 0, 0, 0], [0, 0, 0.004, 0, 0], [0, 0, 0, 0.004, 0]], atol=1e-9)
    w = librosa.filters.mel(sr=2000, n_fft=8, n_mels=1, fmin=0.0, fmax=1000.0, norm=None)
    np.testing.assert_allclose(w, [[0, 0.5, 1.0, 0.5, 0]], atol=1e-9)


def test_reflect_padding_beyond_the_signal():
    """numpy's reflect keeps mirroring past the signal; the Rust pad relies on it."""
    assert np.pad(np.array([1.0, 2.0, 3.0]), 5, mode="reflect").tolist() == [2, 1, 2, 3, 2, 1, 2, 3, 2, 1, 2, 3, 2]
    assert np.pad(np.array([4.0]), 3, mode="reflect").tolist() == [4.0] * 7


def test_multiscale_channels_are_librosas_win_lengths():
    """The reference's multiscale layout: channel c of each row is librosa with that channel's
    win_length (needs no Rust; the Rust side is held to it by test_rust_dumps)."""
    import librosa

    cfg = {"sample_rate": 16000, "n_fft": 512, "win_length": 512, "hop_length": 160,
           "window": "hann", "center": True, "pad_mode": "constant", "power": 2.0, "n_mels": 20,
           "fmin": 0.0, "fmax": 8000.0, "mel_scale": "slaney", "mel_norm": "slaney", "log": "db",
           "log_floor": 1e-10, "multiscale_win_lengths": [256, 101]}
    y = np.sin(np.arange(4000) * 0.3) + 0.1 * np.cos(np.arange(4000) * 0.01)
    both = librosa_logmel(y, cfg)
    assert both.shape == (26, 60)
    for c, w in enumerate([512, 256, 101]):
        s = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=160, win_length=w,
                                           pad_mode="constant", n_mels=20, fmax=8000.0)
        want = librosa.power_to_db(s, ref=1.0, amin=1e-10, top_db=None).T
        # (the reference rounds log_floor to float32, as the manifest's f32 does)
        np.testing.assert_allclose(both[:, c * 20:(c + 1) * 20], want, rtol=0, atol=1e-6)
    # Different windows give different channels.
    assert not np.allclose(both[:, :20], both[:, 20:40])


def test_rust_dumps():
    """The synthetic and windowed cases again (the Rust runner also covers the real clips)."""
    import pytest

    if not (DUMPS / "cases.json").exists():
        pytest.skip(f"{DUMPS} is absent: run cargo test --test logmel_parity first")
    failures, rows, _ = check_cases(DUMPS, verbose=False, kinds=("synthetic", "windowed"))
    assert rows and not failures, "\n".join(failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
