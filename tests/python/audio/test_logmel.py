"""Log-mel parity with librosa.

The Rust test tests/logmel_parity.rs computes our samples and log-mels, dumps them with
cases.json, and runs this file as a command on that folder:

    .venv/bin/python tests/python/audio/test_logmel.py target/logmel-parity

Under pytest, this file checks the reference pieces that need no Rust (window bounds, the hand-
derived filterbanks the Rust unit tests use, the manifest-driven reference against aiSFX's own
computation) and, when target/logmel-parity exists (after `cargo test --test logmel_parity`),
compares its filterbanks and its synthetic, windowed and aiSFX dumps again.

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

Front-ends with a `log_divisor` are compared after multiplying both sides back by it. aiSFX's
`log10_1p` (log10(1 + m x)) is not a level in dB, so its values are turned back into mel
values (expm1(v ln 10) / m), and (1) and (2) apply to those, with levels 10*log10(mel)*2/power
and "above the floor" read as "above 0"; silence must give exactly 0 (within 1e-6). Its
outputs, about 0..1 after aiSFX's divisor, are also held to |diff| <= LOG10_1P_ABS_TOL. That
bound is set by the quietest bands, not the loud ones: where m x >> 1 an output error is the
relative mel error / (ln 10 * divisor), about 1e-7; where m x <~ 1 it is m times the absolute
mel error / (ln 10 * divisor), and float32's FFT leaves an absolute error of about 1e-13 of
the frame's peak power in every bin (a few float32 epsilons of the peak amplitude, squared):
with the peak-normalised peak near 1e5 and m = 1e4, about 1e-5. Measured with librosa 0.11.0
on the synthetic, windowed and aiSFX cases and 16 ESC-50 clips resampled to 44.1 kHz: at most
1.7e-5 (a pure 1 kHz sine, in bands 93 dB below its peak; 5e-6 on the clips), against 1.4e-6
for librosa's own float32 path (as aiSFX runs it) on the same inputs; the bound leaves a
margin of about 6x and is 1e-4 of the outputs' range. The aiSFX cases (kind `aisfx`) are
compared with `aisfx_reference`, a literal statement of aiSFX's own librosa code, rather than
with `librosa_logmel`.
"""

import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a command, not by pytest: conftest (and the helpers it adds) is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT, window_bounds  # noqa: E402

DUMPS = ROOT / "target" / "logmel-parity"

LOUD_RANGE_DB = 60.0
LOUD_TOL_DB = 2e-3
ALL_TOL_REL = 1e-5
DB_PER_NEPER = 10.0 / math.log(10.0)
# log10_1p outputs (aiSFX: divided by 9.46, so about 0..1): measured at most 1.7e-5 (see the
# module doc); the bound leaves a margin of about 6x.
LOG10_1P_ABS_TOL = 1e-4
# aiSFX's divisor: max of its training log-mels (a float32 value, kept exactly by the manifest).
AISFX_LOG_DIVISOR = 9.457798957824707
# FrontEnd::aisfx() as a manifest writes it (serde_json writes f32 values in their shortest form).
AISFX_FRONT_END = {
    "sample_rate": 44100, "peak_normalize": "window", "n_fft": 2048, "win_length": 2048,
    "hop_length": 1024, "window": "hann", "center": True, "pad_mode": "constant", "power": 2.0,
    "n_mels": 96, "fmin": 0.0, "fmax": 22050.0, "mel_scale": "htk", "mel_norm": "l1",
    "log": "log10_1p", "log_floor": 1e-10, "log_multiplier": 10000.0, "log_divisor": 9.457799,
}


def win_lengths(cfg):
    """The window length of every channel: win_length, then multiscale_win_lengths."""
    return [cfg["win_length"]] + list(cfg.get("multiscale_win_lengths", []))


def f32(cfg, key):
    """A manifest number as the float32 the Rust front-end reads (None when absent)."""
    v = cfg.get(key)
    return None if v is None else float(np.float32(v))


def librosa_norm(cfg):
    """The manifest's mel_norm as librosa.filters.mel's `norm`."""
    return {"slaney": "slaney", "l1": 1.0, "none": None}[cfg["mel_norm"]]


def scaled_samples(y, cfg):
    """The samples as the front-end scales them before framing: divided by their peak |x| with
    `peak_normalize: window` (y is one analysis window; all zeros stay zero), then multiplied
    by 10^(input_gain_db / 20)."""
    y = np.asarray(y, dtype=np.float64)
    if cfg.get("peak_normalize") is not None:
        assert cfg["peak_normalize"] == "window", cfg["peak_normalize"]
        peak = np.max(np.abs(y)) if len(y) else 0.0
        y = y / (peak if peak > 0 else 1.0)
    gain_db = f32(cfg, "input_gain_db")
    if gain_db is not None:
        y = y * 10.0 ** (gain_db / 20.0)
    return y


def librosa_logmel(y, cfg):
    """librosa's melspectrogram + the manifest's log for one FrontEnd, frames x (channels *
    mels), float64: with multiscale_win_lengths, one melspectrogram per window length
    (win_length=...), side by side in each frame's row, channel 0 first. `y` is one analysis
    window (peak_normalize works per window)."""
    y = scaled_samples(y, cfg)
    channels = [librosa_logmel_one(y, cfg, w) for w in win_lengths(cfg)]
    return np.concatenate(channels, axis=1)


def librosa_logmel_one(y, cfg, win_length):
    """One channel: librosa's melspectrogram with `win_length`, + the log, frames x mels. With
    lowpass_hz, the spectrogram is librosa.stft's |X|^power with the bins whose frequency
    k * sr / n_fft is above the cut-off zeroed, passed to melspectrogram as S."""
    import librosa

    # Short inputs are part of the test; librosa warns that n_fft exceeds them.
    warnings.filterwarnings("ignore", message="n_fft=.* is too large")

    stft = dict(n_fft=cfg["n_fft"], hop_length=cfg["hop_length"], win_length=win_length,
                window=cfg["window"], center=cfg["center"], pad_mode=cfg["pad_mode"])
    mel = dict(sr=cfg["sample_rate"], n_mels=cfg["n_mels"], fmin=float(cfg["fmin"]),
               fmax=float(cfg["fmax"]), htk=cfg["mel_scale"] == "htk", norm=librosa_norm(cfg))
    power = float(cfg["power"])
    lowpass = f32(cfg, "lowpass_hz")
    if lowpass is None:
        s = librosa.feature.melspectrogram(y=y, power=power, **stft, **mel)
    else:
        spec = np.abs(librosa.stft(y, **stft)) ** power
        spec[np.arange(spec.shape[0]) * cfg["sample_rate"] / cfg["n_fft"] > lowpass] = 0.0
        s = librosa.feature.melspectrogram(S=spec, n_fft=cfg["n_fft"], **mel)
    floor = float(np.float32(cfg["log_floor"]))
    if cfg["log"] == "db":
        out = librosa.power_to_db(s, ref=1.0, amin=floor, top_db=None)
    elif cfg["log"] == "ln":
        out = np.log(s + floor)
    else:
        assert cfg["log"] == "log10_1p", cfg["log"]
        out = np.log10(1.0 + f32(cfg, "log_multiplier") * s)
    divisor = f32(cfg, "log_divisor")
    if divisor is not None:
        out = out / divisor
    return out.T


def aisfx_reference(y, lowpass_hz=None, input_gain_db=None):
    """aiSFX's front-end as aisfx 0.1.2 computes it with librosa (spectrogram_librosa.py and
    preprocessing.py), frames x 96, float64, written out here independently of `librosa_logmel`
    and of the manifest: the waveform divided by its peak |x| (by 1 when the peak is 0),
    melspectrogram(sr=44100, n_mels=96, norm=1.0, fmin=0, fmax=22050, htk=True, power=2.0,
    hop_length=1024, win_length=2048) (n_fft 2048, hann, center=True, pad_mode 'constant' by
    librosa 0.11's defaults), log10(mel * 10000 + 1), then (x - 0) / 9.4578.
    Our additions: `input_gain_db` multiplies the normalised waveform by 10^(gain / 20);
    `lowpass_hz` zeroes the bins of librosa.stft's power above the cut-off, and the mel
    spectrogram is then librosa.filters.mel(htk=True, norm=1) @ power, in numpy."""
    import librosa

    y = np.asarray(y, dtype=np.float64)
    peak = np.max(np.abs(y)) if len(y) else 0.0
    y = y / (peak if peak != 0 else 1.0)
    if input_gain_db is not None:
        y = y * 10.0 ** (input_gain_db / 20.0)
    if lowpass_hz is None:
        mel = librosa.feature.melspectrogram(y=y, sr=44100, n_mels=96, norm=1.0, fmin=0, fmax=22050,
                                             htk=True, power=2.0, hop_length=1024, win_length=2048)
    else:
        power = np.abs(librosa.stft(y, n_fft=2048, hop_length=1024, win_length=2048)) ** 2
        freqs_hz = np.arange(power.shape[0]) * 44100 / 2048
        power[freqs_hz > lowpass_hz] = 0.0
        bank = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0, fmax=22050, htk=True, norm=1)
        mel = bank @ power
    return ((np.log10(mel * 10000 + 1) - 0) / AISFX_LOG_DIVISOR).T


def to_mel_value(logmel, cfg):
    """The mel values (power or magnitude) behind log-mel values (without log_divisor)."""
    floor = float(np.float32(cfg["log_floor"]))
    x = np.asarray(logmel, dtype=np.float64)
    if cfg["log"] == "db":
        return 10.0 ** (x / 10.0)
    if cfg["log"] == "log10_1p":
        return np.maximum(np.expm1(x * math.log(10.0)) / f32(cfg, "log_multiplier"), 0.0)
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
    divisor = f32(cfg, "log_divisor")
    abs_max = float(np.abs(ours.astype(np.float64) - ref).max()) if ours.size else 0.0
    if divisor is not None:  # compare the log itself
        ours, ref = ours.astype(np.float64) * divisor, ref * divisor
    m = cfg["n_mels"]
    rs = [compare_one(ours[:, c * m:(c + 1) * m], ref[:, c * m:(c + 1) * m], cfg)
          for c in range(len(win_lengths(cfg)))]
    out = {"ok": all(r["ok"] for r in rs)}
    for key in ("loud_max_db", "all_max_rel", "max_db"):
        out[key] = max(r[key] for r in rs)
    out["n"] = sum(r["n"] for r in rs)
    out["abs_max"] = abs_max
    if cfg["log"] == "log10_1p" and abs_max > LOG10_1P_ABS_TOL:
        out["ok"] = False
    return out


def compare_one(ours, ref, cfg):
    """Differences between two log-mels of one channel (see the module doc); returns a dict."""
    if ours.shape != ref.shape:
        return {"ok": False, "why": f"shape {ours.shape} vs librosa {ref.shape}"}
    if ours.size == 0:
        return {"ok": True, "loud_max_db": 0.0, "all_max_rel": 0.0, "max_db": 0.0, "n": 0}
    if cfg["log"] == "log10_1p":
        return compare_one_log10_1p(ours, ref, cfg)
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


def compare_one_log10_1p(ours, ref, cfg):
    """compare_one for log10(1 + m x) values (see the module doc): levels are those of the mel
    values behind them, and silence is 0."""
    v_ours, v_ref = to_mel_value(ours, cfg), to_mel_value(ref, cfg)
    n = int(ours.size)
    if v_ref.max() == 0.0:  # silence: log10(1 + 0) = 0
        err = float(np.abs(ours.astype(np.float64) - ref).max())
        return {"ok": err <= 1e-6, "loud_max_db": 0.0, "all_max_rel": 0.0, "max_db": 0.0, "n": n}
    per_db = 10.0 * 2.0 / float(cfg["power"])
    with np.errstate(divide="ignore", invalid="ignore"):
        db_ours, db_ref = per_db * np.log10(v_ours), per_db * np.log10(v_ref)
        diff_db = np.abs(db_ours - db_ref)  # inf where one side is 0, NaN where both are
    positive = (v_ref > 0) & (v_ours > 0)
    loud = (v_ref > 0) & (db_ref >= db_ref.max() - LOUD_RANGE_DB)
    loud_max = float(diff_db[loud].max()) if loud.any() else 0.0
    all_rel = float((np.abs(v_ours - v_ref) / v_ref.max()).max())
    return {
        "ok": loud_max <= LOUD_TOL_DB and all_rel <= ALL_TOL_REL,
        "loud_max_db": loud_max,
        "all_max_rel": all_rel,
        "max_db": float(diff_db[positive].max()) if positive.any() else 0.0,
        "n": n,
    }


def check_filterbanks(dump_dir, doc):
    """Our filterbank of each config against librosa.filters.mel(dtype=float32); returns
    (failures, {config: max |diff|}). They must be equal bit for bit: the Rust side follows
    numpy's operation order and float32 roundings (for norm=1 too: numpy's pairwise row sum)."""
    import librosa

    failures, diffs = [], {}
    for name, file in doc.get("filterbanks", {}).items():
        cfg = doc["configs"][name]
        ours = np.load(Path(dump_dir) / file)
        ref = librosa.filters.mel(sr=cfg["sample_rate"], n_fft=cfg["n_fft"], n_mels=cfg["n_mels"],
                                  fmin=float(np.float32(cfg["fmin"])), fmax=float(np.float32(cfg["fmax"])),
                                  htk=cfg["mel_scale"] == "htk", norm=librosa_norm(cfg), dtype=np.float32)
        diff = float(np.abs(ours.astype(np.float64) - ref).max()) if ours.shape == ref.shape else math.inf
        diffs[name] = diff
        if not np.array_equal(ours, ref):
            failures.append(f"filterbank {name}: max |diff| {diff:.3g} vs librosa (shape {ours.shape})")
    return failures, diffs


def check_cases(dump_dir, verbose=True, kinds=("synthetic", "windowed", "clip", "aisfx")):
    """Compares the cases of `kinds` in dump_dir/cases.json; returns (failures, rows, doc)."""
    import soundfile

    dump_dir = Path(dump_dir)
    doc = json.loads((dump_dir / "cases.json").read_text())
    configs = doc["configs"]
    rows, failures = [], []
    bank_failures, bank_diffs = check_filterbanks(dump_dir, doc)
    failures += bank_failures
    if verbose and bank_diffs:
        print("filterbank max |diff| vs librosa.filters.mel(dtype=float32): "
              + ", ".join(f"{k} {v:.2g}" for k, v in sorted(bank_diffs.items())))
    for case in doc["cases"]:
        if case["kind"] not in kinds:
            continue
        cfg = configs[case["config"]]
        name = case["name"]
        if case["kind"] == "aisfx":
            # aiSFX's own computation, on the exact samples our front-end got.
            y = np.load(dump_dir / case["samples"])
            r = compare(np.load(dump_dir / case["logmel"]), aisfx_reference(y, **case["reference"]), cfg)
            rows.append((name, case["config"] + " vs aisfx", r))
            continue
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
        s = by_config.setdefault(config, [0, 0.0, 0.0, 0.0, 0.0])
        s[0] += 1
        s[1] = max(s[1], r["loud_max_db"])
        s[2] = max(s[2], r["all_max_rel"])
        s[3] = max(s[3], r["max_db"])
        s[4] = max(s[4], r.get("abs_max", 0.0))
    print(f"{'config':32} {'cases':>5} {'loud max dB':>12} {'all max rel P':>14} {'any max dB':>11} {'max |diff|':>11}")
    for config, (n, loud, rel, anydb, absmax) in sorted(by_config.items()):
        print(f"{config:32} {n:5d} {loud:12.2e} {rel:14.2e} {anydb:11.2e} {absmax:11.2e}")
    print(f"tolerance: |diff| <= {LOUD_TOL_DB} dB within {LOUD_RANGE_DB} dB of the peak; "
          f"power error <= {ALL_TOL_REL:g} x peak everywhere; log10_1p outputs |diff| <= {LOG10_1P_ABS_TOL:g}")


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
    """The filterbank values crates/audiotext-core/src/audio/mel.rs's unit test derives by hand are librosa's."""
    import librosa

    w = librosa.filters.mel(sr=2000, n_fft=8, n_mels=3, fmin=0.0, fmax=1000.0)
    np.testing.assert_allclose(w, [[0, 0.004, 0, 0, 0], [0, 0, 0.004, 0, 0], [0, 0, 0, 0.004, 0]], atol=1e-9)
    w = librosa.filters.mel(sr=2000, n_fft=8, n_mels=1, fmin=0.0, fmax=1000.0, norm=None)
    np.testing.assert_allclose(w, [[0, 0.5, 1.0, 0.5, 0]], atol=1e-9)
    # norm=1 (mel_norm "l1"): each row over its sum; an empty row (below util.tiny) stays empty.
    w = librosa.filters.mel(sr=2000, n_fft=8, n_mels=1, fmin=0.0, fmax=1000.0, norm=1)
    assert w.tolist() == [[0, 0.25, 0.5, 0.25, 0]]
    w = librosa.filters.mel(sr=2000, n_fft=8, n_mels=3, fmin=0.0, fmax=1000.0, norm=1)
    assert w.tolist() == [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Empty filters detected"
        w = librosa.filters.mel(sr=2000, n_fft=8, n_mels=6, fmin=0.0, fmax=1000.0, htk=True, norm=1)
    assert not w[0].any() and np.allclose(w[1:].sum(axis=1), 1.0, atol=1e-6)


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


def test_librosa_logmel_follows_aisfx_reference():
    """The manifest-driven reference (librosa_logmel, which reproduce() uses) computes aiSFX's
    front-end as aiSFX's own code does, with each optional step (needs no Rust)."""
    from make_audio import realish

    y = realish(44100, 2.5, seed=7).astype(np.float32)
    cases = [({}, {}), ({"lowpass_hz": 8000.0}, {"lowpass_hz": 8000.0}),
             ({"input_gain_db": -20.0}, {"input_gain_db": -20.0}),
             ({"input_gain_db": 6.5, "lowpass_hz": 11025.0}, {"input_gain_db": 6.5, "lowpass_hz": 11025.0})]
    for keys, reference in cases:
        cfg = {**AISFX_FRONT_END, **keys}
        for scale in (1.0, 3.7e-4, 250.0):
            ours = librosa_logmel(y * np.float32(scale), cfg)
            ref = aisfx_reference(y * np.float32(scale), **reference)
            assert ours.shape == ref.shape == (1 + len(y) // 1024, 96)
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, err_msg=str((keys, scale)))
    # Peak normalisation: the scale does not matter (in float64: y * 1e-3 in float32 would be
    # another signal, 6e-8 away, which moves the quietest bands by up to 7e-7); silence is 0.
    a, b = aisfx_reference(y), aisfx_reference(y.astype(np.float64) * 1e-3)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert 0.3 < a.max() < 1.2  # the divisor brings values to about [0, 1]
    zeros = librosa_logmel(np.zeros(5000, np.float32), AISFX_FRONT_END)
    assert zeros.shape == (5, 96) and not zeros.any()
    # The low-pass silences the bands above the cut-off and keeps those below.
    cut = aisfx_reference(y, lowpass_hz=8000.0)
    import librosa
    bank = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, htk=True, norm=1)
    first_bin = (bank > 0).argmax(axis=1)
    last_bin = bank.shape[1] - 1 - (bank[:, ::-1] > 0).argmax(axis=1)
    assert not cut[:, first_bin * 44100 / 2048 > 8000].any()
    below = last_bin * 44100 / 2048 <= 8000
    np.testing.assert_array_equal(cut[:, below], a[:, below])


def test_rust_dumps():
    """The synthetic and windowed cases again (the Rust runner also covers the real clips)."""
    import pytest

    if not (DUMPS / "cases.json").exists():
        pytest.skip(f"{DUMPS} is absent: run cargo test --test logmel_parity first")
    failures, rows, doc = check_cases(DUMPS, verbose=False, kinds=("synthetic", "windowed", "aisfx"))
    assert rows and not failures, "\n".join(failures)
    # The Rust constructor gives the manifest keys this file's AISFX_FRONT_END states (as
    # float32: cases.json has them through serde_json::Value, in their f64 expansion).
    def as_f32(cfg):
        return {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in cfg.items()}

    assert as_f32(doc["configs"]["aisfx"]) == as_f32(AISFX_FRONT_END)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
