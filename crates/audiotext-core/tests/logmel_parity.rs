//! Log-mel parity with librosa, run from Rust: this test writes the inputs (with
//! tests/python/helpers/make_audio.py), computes our samples and log-mels through the public API
//! (decode_mono / log_mel_windows / MelExtractor), dumps them as .npy under
//! target/logmel-parity/ with cases.json, then runs
//! `.venv/bin/python tests/python/audio/test_logmel.py target/logmel-parity`, which computes
//! librosa's on the same samples and compares (the tolerance is stated and argued there).
//! Resampled inputs are compared on our resampled signal only: resamplers differ, the log-mel
//! must not.
//!
//! Skips (with a message) when the venv or librosa is missing; real clips are used when
//! ../shared/data/esc50-dev/audio exists. Also times our front-end on those clips (decode +
//! resample + log-mel), which the Python side compares with librosa's.
//!
//! The aiSFX front-end (`FrontEnd::aisfx`, with and without gain and low-pass) runs through the
//! same synthetic and windowed comparisons, and in `aisfx` cases against a literal statement of
//! aiSFX's own librosa code: a generated sound at several levels (peak normalisation), with
//! `input_gain_db`, with `lowpass_hz`, and all zeros. Each config's filterbank is dumped too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use audiotext_core::audio::decode::AudioSource;
use audiotext_core::audio::{decode_mono, FrontEnd, LogMelWindows, MelExtractor, Windowing};
use rayon::prelude::*;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes a little-endian float32 .npy of the given shape.
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic (6) + version (2) + header length (2) + header, padded to 64 bytes, ending in \n.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    for v in data {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
}

fn configs() -> Vec<(&'static str, FrontEnd)> {
    let panns = FrontEnd::panns_32k();
    let aisfx = FrontEnd::aisfx();
    vec![
        ("aisfx", aisfx.clone()),
        (
            "aisfx_lowpass_8k",
            FrontEnd {
                lowpass_hz: Some(8000.0),
                ..aisfx.clone()
            },
        ),
        (
            "aisfx_gain_-20",
            FrontEnd {
                input_gain_db: Some(-20.0),
                ..aisfx.clone()
            },
        ),
        (
            "aisfx_gain_lowpass",
            FrontEnd {
                input_gain_db: Some(-20.0),
                lowpass_hz: Some(8000.0),
                ..aisfx.clone()
            },
        ),
        (
            // Every optional step on the other code paths: uncentred frames (the scaled copy),
            // several channels, slaney filters and a dB log with a divisor.
            "uncentred_multiscale_db_all_steps",
            FrontEnd {
                center: false,
                multiscale_win_lengths: vec![1024, 333],
                input_gain_db: Some(6.0),
                lowpass_hz: Some(11_000.0),
                mel_scale: "slaney".into(),
                mel_norm: "slaney".into(),
                log: "db".into(),
                log_multiplier: None,
                log_divisor: Some(-20.0),
                ..aisfx.clone()
            },
        ),
        ("panns_reflect", panns.clone()),
        (
            "panns_constant",
            FrontEnd {
                pad_mode: "constant".into(),
                ..panns.clone()
            },
        ),
        (
            "htk_ln_magnitude",
            FrontEnd {
                n_fft: 1280,
                win_length: 1000,
                hop_length: 400,
                pad_mode: "constant".into(),
                power: 1.0,
                n_mels: 40,
                fmin: 0.0,
                fmax: 16000.0,
                mel_scale: "htk".into(),
                mel_norm: "none".into(),
                log: "ln".into(),
                log_floor: 1e-6,
                ..panns.clone()
            },
        ),
        (
            "dcase_44k_ln",
            FrontEnd {
                sample_rate: 44100,
                n_fft: 2048,
                win_length: 1764,
                hop_length: 882,
                n_mels: 64,
                fmin: 0.0,
                fmax: 22050.0,
                log: "ln".into(),
                log_floor: 1e-8,
                ..panns.clone()
            },
        ),
        (
            "uncentred_16k_htk_slaney",
            FrontEnd {
                sample_rate: 16000,
                n_fft: 512,
                win_length: 400,
                hop_length: 160,
                center: false,
                n_mels: 80,
                fmin: 20.0,
                fmax: 8000.0,
                mel_scale: "htk".into(),
                ..panns.clone()
            },
        ),
        (
            // Multiscale: channel 0 is win_length 1024, then 512 and an odd 333 (centred with
            // the extra zero on the right, as librosa's pad_center).
            "panns_multiscale",
            FrontEnd {
                multiscale_win_lengths: vec![512, 333],
                ..panns.clone()
            },
        ),
        (
            "uncentred_multiscale_16k",
            FrontEnd {
                sample_rate: 16000,
                n_fft: 512,
                win_length: 400,
                hop_length: 160,
                center: false,
                n_mels: 40,
                fmin: 0.0,
                fmax: 8000.0,
                log: "ln".into(),
                log_floor: 1e-6,
                multiscale_win_lengths: vec![200, 512],
                ..panns.clone()
            },
        ),
        (
            "hop_over_half_reflect",
            FrontEnd {
                n_fft: 512,
                win_length: 512,
                hop_length: 400,
                n_mels: 32,
                ..panns.clone()
            },
        ),
    ]
}

fn python_ready(python: &Path) -> Result<(), String> {
    if !python.exists() {
        return Err(format!(
            "{} is missing: run scripts/python-env.sh",
            python.display()
        ));
    }
    let ok = Command::new(python)
        .args(["-c", "import librosa, numpy, soundfile"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err("librosa is not installed in .venv: run scripts/python-env.sh".into());
    }
    Ok(())
}

#[test]
#[allow(clippy::while_let_on_iterator)]
fn logmel_matches_librosa() {
    let root = root();
    let python = root.join(".venv/bin/python");
    if let Err(why) = python_ready(&python) {
        eprintln!("SKIPPED logmel_matches_librosa: {why}");
        return;
    }
    let dir = root.join("target/logmel-parity");
    let _ = std::fs::remove_dir_all(&dir);
    let inputs_dir = dir.join("inputs");
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let status = Command::new(&python)
        .arg(root.join("tests/python/helpers/make_audio.py"))
        .arg("parity")
        .arg(&inputs_dir)
        .status()
        .unwrap();
    assert!(status.success(), "make_audio.py parity failed");
    let inputs: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(inputs_dir.join("inputs.json")).unwrap())
            .unwrap();

    let configs = configs();
    let mut cases = Vec::new();
    let mut config_json = serde_json::Map::new();
    let mut filterbanks = serde_json::Map::new();
    for (cname, fe) in &configs {
        config_json.insert(cname.to_string(), serde_json::to_value(fe).unwrap());
        let mel = MelExtractor::new(fe).unwrap();
        let file = format!("out/filterbank__{cname}.npy");
        write_npy(
            &dir.join(&file),
            &[fe.n_mels, fe.n_fft / 2 + 1],
            &mel.filterbank(),
        );
        filterbanks.insert(cname.to_string(), json!(file));
        for input in &inputs {
            let iname = input["name"].as_str().unwrap();
            if iname == "long_44k" {
                continue; // windowed below
            }
            let path = inputs_dir.join(input["file"].as_str().unwrap());
            let samples = decode_mono(&AudioSource::Path(&path), fe.sample_rate).unwrap();
            let lm = mel.compute(&samples);
            let stem = format!("{iname}__{cname}");
            write_npy(
                &out_dir.join(format!("{stem}.samples.npy")),
                &[samples.len()],
                &samples,
            );
            write_npy(
                &out_dir.join(format!("{stem}.logmel.npy")),
                &[lm.frames, lm.n_mels],
                &lm.data,
            );
            cases.push(json!({
                "name": stem, "config": cname, "kind": "synthetic",
                "samples": format!("out/{stem}.samples.npy"), "logmel": format!("out/{stem}.logmel.npy"),
            }));
        }
    }

    // Windowed: each window's log-mel, computed while streaming, against librosa on the slice.
    let long = inputs_dir.join("long_44k.wav");
    let windowings = [
        ("panns_reflect", Windowing::ten_seconds()),
        (
            "htk_ln_magnitude",
            Windowing {
                clip_seconds: 4.0,
                hop_seconds: 3.0,
                min_seconds: 1.0,
                pooling: "mean".into(),
            },
        ),
        (
            "panns_constant",
            Windowing {
                clip_seconds: 2.5,
                hop_seconds: 4.0,
                min_seconds: 0.3,
                pooling: "mean".into(),
            },
        ),
        (
            "panns_multiscale",
            Windowing {
                clip_seconds: 3.0,
                hop_seconds: 2.0,
                min_seconds: 0.5,
                pooling: "mean".into(),
            },
        ),
        // Overlapping blocks, each peak-normalised on its own.
        ("aisfx", Windowing::aisfx_blocks()),
        ("aisfx_gain_lowpass", Windowing::aisfx_blocks()),
    ];
    for (k, (cname, windowing)) in windowings.iter().enumerate() {
        let fe = &configs.iter().find(|(n, _)| n == cname).unwrap().1;
        let samples = decode_mono(&AudioSource::Path(&long), fe.sample_rate).unwrap();
        let stem = format!("long_44k__{cname}__w{k}");
        write_npy(
            &out_dir.join(format!("{stem}.samples.npy")),
            &[samples.len()],
            &samples,
        );
        let mel = Arc::new(MelExtractor::new(fe).unwrap());
        let mut windows = Vec::new();
        let mut bounds = Vec::new();
        let mut stream = LogMelWindows::new(&AudioSource::Path(&long), mel, windowing).unwrap();
        // Not a `for` loop: the stream is asked for each window's bounds.
        while let Some(lm) = stream.next() {
            let lm = lm.unwrap();
            let file = format!("out/{stem}.{}.logmel.npy", windows.len());
            write_npy(&dir.join(&file), &[lm.frames, lm.n_mels], &lm.data);
            windows.push(file);
            let (a, b) = stream.last_bounds().unwrap();
            bounds.push(vec![a, b]);
        }
        assert_eq!(stream.samples(), samples.len() as u64);
        cases.push(json!({
            "name": stem, "config": cname, "kind": "windowed",
            "samples": format!("out/{stem}.samples.npy"), "windowing": windowing,
            "windows": windows, "bounds": bounds,
        }));
    }

    // aiSFX against aiSFX's own computation (test_logmel.py's aisfx_reference), on a generated
    // sound at its level and at two arbitrary ones, and on zeros.
    let realish = decode_mono(
        &AudioSource::Path(&inputs_dir.join("realish_44k.wav")),
        44_100,
    )
    .unwrap();
    let zeros = vec![0f32; 2 * 44_100];
    let scaled = |k: f32| realish.iter().map(|v| v * k).collect::<Vec<f32>>();
    let aisfx_cases: Vec<(&str, &str, Vec<f32>, Value)> = vec![
        ("realish", "aisfx", realish.clone(), json!({})),
        ("realish_x0.00037", "aisfx", scaled(3.7e-4), json!({})),
        ("realish_x250", "aisfx", scaled(250.0), json!({})),
        ("zeros", "aisfx", zeros.clone(), json!({})),
        (
            "realish_lowpass_8k",
            "aisfx_lowpass_8k",
            realish.clone(),
            json!({"lowpass_hz": 8000.0}),
        ),
        (
            "realish_gain_-20",
            "aisfx_gain_-20",
            realish.clone(),
            json!({"input_gain_db": -20.0}),
        ),
        (
            "realish_x250_gain_lowpass",
            "aisfx_gain_lowpass",
            scaled(250.0),
            json!({"input_gain_db": -20.0, "lowpass_hz": 8000.0}),
        ),
        (
            "zeros_gain_lowpass",
            "aisfx_gain_lowpass",
            zeros,
            json!({"input_gain_db": -20.0, "lowpass_hz": 8000.0}),
        ),
    ];
    for (name, cname, samples, reference) in aisfx_cases {
        let fe = &configs.iter().find(|(n, _)| *n == cname).unwrap().1;
        let lm = MelExtractor::new(fe).unwrap().compute(&samples);
        assert!(lm.data.iter().all(|v| v.is_finite()), "{name}");
        let stem = format!("aisfx__{name}");
        write_npy(
            &out_dir.join(format!("{stem}.samples.npy")),
            &[samples.len()],
            &samples,
        );
        write_npy(
            &out_dir.join(format!("{stem}.logmel.npy")),
            &[lm.frames, lm.n_mels],
            &lm.data,
        );
        cases.push(json!({
            "name": stem, "config": cname, "kind": "aisfx", "reference": reference,
            "samples": format!("out/{stem}.samples.npy"), "logmel": format!("out/{stem}.logmel.npy"),
        }));
    }

    // Real clips (ESC-50 dev subset): log-mel with the PANNs front-end, decoding checked on a few.
    let clips_dir = root.join("../shared/data/esc50-dev/audio");
    let mut timing = Value::Null;
    if clips_dir.is_dir() {
        let mut clips: Vec<PathBuf> = std::fs::read_dir(&clips_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "flac" || e == "wav"))
            .collect();
        clips.sort();
        let fe = FrontEnd::panns_32k();
        let mel = MelExtractor::new(&fe).unwrap();
        for (i, clip) in clips.iter().enumerate() {
            let samples = decode_mono(&AudioSource::Path(clip), fe.sample_rate).unwrap();
            let lm = mel.compute(&samples);
            let stem = format!("clip{i:03}");
            write_npy(
                &out_dir.join(format!("{stem}.logmel.npy")),
                &[lm.frames, lm.n_mels],
                &lm.data,
            );
            let mut case = json!({
                "name": stem, "config": "panns_reflect", "kind": "clip",
                "source": clip, "logmel": format!("out/{stem}.logmel.npy"),
            });
            if i < 8 {
                write_npy(
                    &out_dir.join(format!("{stem}.samples.npy")),
                    &[samples.len()],
                    &samples,
                );
                case["samples"] = json!(format!("out/{stem}.samples.npy"));
            }
            cases.push(case);
        }
        // aiSFX on every 20th clip, resampled to 44.1 kHz by us (compared on our samples).
        for (i, clip) in clips.iter().enumerate().step_by(20) {
            let samples = decode_mono(&AudioSource::Path(clip), 44_100).unwrap();
            for (cname, reference) in [
                ("aisfx", json!({})),
                (
                    "aisfx_gain_lowpass",
                    json!({"input_gain_db": -20.0, "lowpass_hz": 8000.0}),
                ),
            ] {
                let fe = &configs.iter().find(|(n, _)| *n == cname).unwrap().1;
                let lm = MelExtractor::new(fe).unwrap().compute(&samples);
                let stem = format!("aisfx__clip{i:03}__{cname}");
                write_npy(
                    &out_dir.join(format!("{stem}.samples.npy")),
                    &[samples.len()],
                    &samples,
                );
                write_npy(
                    &out_dir.join(format!("{stem}.logmel.npy")),
                    &[lm.frames, lm.n_mels],
                    &lm.data,
                );
                cases.push(json!({
                    "name": stem, "config": cname, "kind": "aisfx", "reference": reference,
                    "samples": format!("out/{stem}.samples.npy"),
                    "logmel": format!("out/{stem}.logmel.npy"),
                }));
            }
        }
        // Timing: the whole front-end (decode + resample + log-mel), one thread, then rayon.
        let run = |clip: &PathBuf| {
            let samples = decode_mono(&AudioSource::Path(clip), fe.sample_rate).unwrap();
            mel.compute(&samples).frames
        };
        run(&clips[0]);
        let t = Instant::now();
        let frames: usize = clips.iter().map(run).sum();
        let single = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let frames_par: usize = clips.par_iter().map(run).sum();
        let parallel = t.elapsed().as_secs_f64();
        assert_eq!(frames, frames_par);
        // The log-mel alone, on decoded samples.
        let decoded: Vec<Vec<f32>> = clips
            .iter()
            .map(|c| decode_mono(&AudioSource::Path(c), fe.sample_rate).unwrap())
            .collect();
        let t = Instant::now();
        let _: usize = decoded.iter().map(|s| mel.compute(s).frames).sum();
        let mel_only = t.elapsed().as_secs_f64();
        timing = json!({
            "clips": clips.len(), "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "ours_front_end_seconds_1_thread": single,
            "ours_front_end_seconds_rayon": parallel, "rayon_threads": rayon::current_num_threads(),
            "ours_logmel_only_seconds_1_thread": mel_only,
            "files": clips,
        });
        eprintln!("our front-end on {} clips: {single:.3} s on 1 thread, {parallel:.3} s with rayon; log-mel alone {mel_only:.3} s", clips.len());
    } else {
        eprintln!(
            "real clips skipped: {} is absent (tests on real clips need ../shared/data)",
            clips_dir.display()
        );
    }

    let doc = json!({
        "configs": config_json, "cases": cases, "timing": timing, "filterbanks": filterbanks,
    });
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    let status = Command::new(&python)
        .arg(root.join("tests/python/audio/test_logmel.py"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "log-mel differs from librosa beyond the tolerance: see the table above"
    );
}
