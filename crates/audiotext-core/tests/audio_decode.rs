//! Decoding from files made at test time: WAV written here (8/16/24-bit int, 32-bit float, 1-6
//! channels, 8-192 kHz), flac/ogg/mp3 made by sox and m4a by ffmpeg (skipped with a message when
//! the tool is missing); path and bytes agree; channels are averaged; bad input gives distinct
//! errors and never a panic; a 20-minute file streams through `log_mel_windows` in bounded
//! memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use audiotext_core::audio::decode::{
    probe, AudioSource, DecodeOptions, Decoder, TruncatedAudio, SUPPORTED_FORMATS,
};
use audiotext_core::audio::{
    decode_mono, log_mel_windows, window_bounds, FrontEnd, LogMelWindows, MelExtractor, Windowing,
};

// ---- helpers ------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("audiotext-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fmt {
    U8,
    S16,
    S24,
    F32,
}

impl Fmt {
    fn bytes(self) -> usize {
        match self {
            Fmt::U8 => 1,
            Fmt::S16 => 2,
            Fmt::S24 => 3,
            Fmt::F32 => 4,
        }
    }

    /// The bytes stored for `x`, and the value a decoder must return for them.
    fn encode(self, x: f32, out: &mut Vec<u8>) -> f32 {
        let x = x.clamp(-1.0, 1.0) as f64;
        match self {
            Fmt::U8 => {
                let q = (x * 128.0).round().clamp(-128.0, 127.0) as i32 + 128;
                out.push(q as u8);
                (q as f32) / 128.0 - 1.0
            }
            Fmt::S16 => {
                let q = (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                out.extend_from_slice(&q.to_le_bytes());
                q as f32 / 32768.0
            }
            Fmt::S24 => {
                let q = (x * 8388608.0).round().clamp(-8388608.0, 8388607.0) as i32;
                out.extend_from_slice(&q.to_le_bytes()[..3]);
                q as f32 / 8388608.0
            }
            Fmt::F32 => {
                out.extend_from_slice(&(x as f32).to_le_bytes());
                x as f32
            }
        }
    }
}

/// A WAV file of planar `channels` (PCM or IEEE float; WAVE_FORMAT_EXTENSIBLE above 2
/// channels), and the mono signal a decoder must return: the mean of the decoded channels.
fn wav(channels: &[Vec<f32>], rate: u32, fmt: Fmt) -> (Vec<u8>, Vec<f32>) {
    let n_ch = channels.len();
    let frames = channels[0].len();
    let mut data = Vec::with_capacity(frames * n_ch * fmt.bytes());
    let mut mono = vec![0f32; frames];
    for i in 0..frames {
        let mut sum = 0f32;
        for ch in channels {
            sum += fmt.encode(ch[i], &mut data);
        }
        mono[i] = if n_ch > 1 { sum / n_ch as f32 } else { sum };
    }
    let tag: u16 = if fmt == Fmt::F32 { 3 } else { 1 };
    let block = (n_ch * fmt.bytes()) as u16;
    let mut fmt_chunk = Vec::new();
    let extensible = n_ch > 2;
    fmt_chunk.extend_from_slice(&(if extensible { 0xfffe } else { tag }).to_le_bytes());
    fmt_chunk.extend_from_slice(&(n_ch as u16).to_le_bytes());
    fmt_chunk.extend_from_slice(&rate.to_le_bytes());
    fmt_chunk.extend_from_slice(&(rate * block as u32).to_le_bytes());
    fmt_chunk.extend_from_slice(&block.to_le_bytes());
    fmt_chunk.extend_from_slice(&((fmt.bytes() * 8) as u16).to_le_bytes());
    if extensible {
        fmt_chunk.extend_from_slice(&22u16.to_le_bytes());
        fmt_chunk.extend_from_slice(&((fmt.bytes() * 8) as u16).to_le_bytes());
        fmt_chunk.extend_from_slice(&((1u32 << n_ch) - 1).to_le_bytes());
        fmt_chunk.extend_from_slice(&(tag as u32).to_le_bytes());
        fmt_chunk.extend_from_slice(&[
            0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
        ]);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + fmt_chunk.len() + 8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&(fmt_chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt_chunk);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    (out, mono)
}

fn sine(hz: f64, rate: u32, n: usize, amp: f64) -> Vec<f32> {
    (0..n)
        .map(|i| (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()) as f32)
        .collect()
}

/// Deterministic noise in [-amp, amp).
fn noise(n: usize, amp: f32, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            amp * ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

fn decode_all(source: AudioSource) -> audiotext_core::Result<Vec<f32>> {
    let mut d = Decoder::open(source)?;
    let mut out = Vec::new();
    while let Some(chunk) = d.next_mono_chunk()? {
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn err_of(source: AudioSource) -> String {
    match decode_all(source) {
        Ok(s) => panic!("decoded {} samples, expected an error", s.len()),
        Err(e) => e.to_string(),
    }
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || Command::new(name)
            .arg("-version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

fn zero_crossings(x: &[f32]) -> usize {
    x.windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count()
}

// ---- WAV ----------------------------------------------------------------------------------

#[test]
fn wav_formats_rates_and_channels_decode_exactly() {
    let dir = TempDir::new("wav");
    let rates = [
        8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000,
    ];
    for (k, &rate) in rates.iter().enumerate() {
        for fmt in [Fmt::U8, Fmt::S16, Fmt::S24, Fmt::F32] {
            for n_ch in [1usize, 2, 6] {
                let n = rate as usize / 4 + 17;
                let channels: Vec<Vec<f32>> = (0..n_ch)
                    .map(|c| {
                        let tone = sine(220.0 * (c + 1) as f64, rate, n, 0.4);
                        let hiss = noise(n, 0.1, (k * 10 + c) as u64);
                        tone.iter().zip(&hiss).map(|(a, b)| a + b).collect()
                    })
                    .collect();
                let (bytes, want) = wav(&channels, rate, fmt);
                let path = dir.path(&format!("t_{rate}_{fmt:?}_{n_ch}.wav"));
                std::fs::write(&path, &bytes).unwrap();
                let what = format!("{rate} Hz {fmt:?} x{n_ch}");
                let info = probe(&AudioSource::Path(&path)).unwrap();
                assert_eq!(info.container, "wav", "{what}");
                assert_eq!(info.sample_rate, rate, "{what}");
                assert_eq!(info.channels, n_ch, "{what}");
                assert_eq!(info.frames, Some(n as u64), "{what}");
                assert!((info.duration_seconds.unwrap() - n as f64 / rate as f64).abs() < 1e-9);
                let from_path = decode_all(AudioSource::Path(&path)).unwrap();
                let from_bytes = decode_all(AudioSource::Bytes(&bytes)).unwrap();
                assert_eq!(from_path, want, "{what}");
                assert_eq!(from_bytes, from_path, "{what}: path and bytes differ");
            }
        }
    }
    let (bytes, _) = wav(&[vec![0.0; 10]], 16000, Fmt::S16);
    let info = probe(&AudioSource::Bytes(&bytes)).unwrap();
    assert_eq!(info.codec, "pcm_s16le");
    let json = serde_json::to_value(&info).unwrap();
    for key in [
        "container",
        "codec",
        "sample_rate",
        "channels",
        "duration_seconds",
        "frames",
    ] {
        assert!(json.get(key).is_some(), "{json}");
    }
}

#[test]
fn stereo_mixes_to_the_mean_of_both_channels() {
    let n = 1000;
    let left = vec![0.5f32; n];
    let right = vec![-0.25f32; n];
    let (bytes, _) = wav(&[left, right], 44100, Fmt::S16);
    let mono = decode_all(AudioSource::Bytes(&bytes)).unwrap();
    assert!(mono.iter().all(|&v| v == 0.125), "{:?}", &mono[..4]);
    // Left only: half the amplitude, not the left channel, not silence.
    let (bytes, _) = wav(&[vec![0.5; n], vec![0.0; n]], 44100, Fmt::F32);
    assert!(decode_all(AudioSource::Bytes(&bytes))
        .unwrap()
        .iter()
        .all(|&v| v == 0.25));
    let (bytes, _) = wav(&[vec![0.0; n], vec![0.5; n]], 44100, Fmt::F32);
    assert!(decode_all(AudioSource::Bytes(&bytes))
        .unwrap()
        .iter()
        .all(|&v| v == 0.25));
}

#[test]
fn decode_mono_resamples_any_rate() {
    for &rate in &[8000u32, 22050, 44100, 48000, 96000, 192000, 32000] {
        let n = rate as usize; // one second
        let (bytes, _) = wav(
            &[sine(440.0, rate, n, 0.5), sine(440.0, rate, n, 0.5)],
            rate,
            Fmt::F32,
        );
        let y = decode_mono(&AudioSource::Bytes(&bytes), 32000).unwrap();
        assert_eq!(y.len(), 32000, "{rate} Hz");
        let zc = zero_crossings(&y[8000..24000]);
        assert!(
            (zc as i64 - 440).abs() <= 2,
            "{rate} Hz: {zc} zero crossings in 0.5 s"
        );
    }
}

// ---- encoded formats ----------------------------------------------------------------------

#[test]
fn flac_ogg_mp3_m4a_decode() {
    let have_sox = tool("sox");
    let have_ffmpeg = tool("ffmpeg");
    if !have_sox {
        eprintln!("SKIPPED flac/ogg/mp3: sox is missing (apt-get install sox libsox-fmt-all)");
    }
    if !have_ffmpeg {
        eprintln!("SKIPPED m4a/aac: ffmpeg is missing (apt-get install ffmpeg)");
    }
    let dir = TempDir::new("codecs");
    let rate = 44100;
    let n = 2 * rate as usize;
    let tone = sine(440.0, rate, n, 0.5);
    let (bytes, want) = wav(&[tone.clone(), tone], rate, Fmt::S16);
    let src = dir.path("src.wav");
    std::fs::write(&src, &bytes).unwrap();
    let mut made: Vec<(&str, &str, &str)> = Vec::new();
    if have_sox {
        made.extend([
            ("flac", "flac", "flac"),
            ("ogg", "ogg", "vorbis"),
            ("mp3", "mp3", "mp3"),
        ]);
    }
    if have_ffmpeg {
        made.extend([("m4a", "mp4", "aac"), ("aac", "aac", "aac")]);
    }
    for (ext, container, codec) in made {
        let dst = dir.path(&format!("t.{ext}"));
        let status = if ext == "m4a" || ext == "aac" {
            Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
                .arg(&src)
                .args(["-c:a", "aac"])
                .arg(&dst)
                .status()
        } else {
            Command::new("sox").arg(&src).arg(&dst).status()
        }
        .unwrap();
        assert!(status.success(), "encoding {ext} failed");
        let info = probe(&AudioSource::Path(&dst)).unwrap();
        assert_eq!(
            (info.container.as_str(), info.codec.as_str()),
            (container, codec),
            "{ext}"
        );
        assert_eq!((info.sample_rate, info.channels), (rate, 2), "{ext}");
        let from_path = decode_all(AudioSource::Path(&dst)).unwrap();
        let blob = std::fs::read(&dst).unwrap();
        let from_bytes = decode_all(AudioSource::Bytes(&blob)).unwrap();
        assert_eq!(from_path, from_bytes, "{ext}: path and bytes differ");
        if ext == "flac" {
            assert_eq!(from_path, want, "flac is lossless");
            continue;
        }
        // Lossy: the length (encoder delay and padding trimmed where the file says how) and the
        // pitch survive.
        let len_err = (from_path.len() as f64 - n as f64).abs() / n as f64;
        assert!(len_err < 0.05, "{ext}: {} samples for {n}", from_path.len());
        let mid = &from_path[rate as usize / 2..rate as usize * 3 / 2];
        let zc = zero_crossings(mid);
        assert!(
            (zc as i64 - 880).abs() <= 4,
            "{ext}: {zc} zero crossings in 1 s of 440 Hz"
        );
        let rms = (mid.iter().map(|v| v * v).sum::<f32>() / mid.len() as f32).sqrt();
        assert!((rms - 0.5 / 2f32.sqrt()).abs() < 0.05, "{ext}: rms {rms}");
    }
}

// ---- errors -------------------------------------------------------------------------------

#[test]
fn bad_inputs_give_distinct_errors() {
    let dir = TempDir::new("errors");
    let (good, _) = wav(&[sine(440.0, 16000, 16000, 0.5)], 16000, Fmt::S16);

    let empty = dir.path("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let e_empty = err_of(AudioSource::Path(&empty));
    assert_eq!(e_empty, format!("{} is empty (0 bytes)", empty.display()));
    assert_eq!(
        err_of(AudioSource::Bytes(b"")),
        "audio blob is empty (0 bytes)"
    );

    let text = dir.path("notes.wav");
    std::fs::write(&text, "these are not sounds\n".repeat(100)).unwrap();
    let e_text = err_of(AudioSource::Path(&text));
    assert_eq!(
        e_text,
        format!(
            "{} is not a supported audio file ({SUPPORTED_FORMATS}): convert it to one of these",
            text.display()
        )
    );
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(std::iter::repeat_n([0xffu8, 0xfb, 0x90, 0x64], 200).flatten());
    assert!(err_of(AudioSource::Bytes(&png)).contains("is not a supported audio file"));

    let missing = dir.path("missing.wav");
    let e_missing = err_of(AudioSource::Path(&missing));
    assert!(
        e_missing.contains("missing.wav") && e_missing.contains("No such file"),
        "{e_missing}"
    );
    let e_dir = err_of(AudioSource::Path(&dir.0));
    assert!(
        e_dir.contains("is a directory, not a regular file"),
        "{e_dir}"
    );

    // Header only: a WAV whose data chunk declares a second of samples, none of them there.
    let e_no_audio = err_of(AudioSource::Bytes(&good[..44]));
    assert!(
        e_no_audio.starts_with(
            "audio blob is truncated: its data chunk declares 32000 bytes of samples, the file holds 0 of them"
        ),
        "{e_no_audio}"
    );
    // Cut inside the header.
    let e_cut = err_of(AudioSource::Bytes(&good[..30]));
    assert!(e_cut.starts_with("audio blob is truncated"), "{e_cut}");
    // Cut inside the data: an error by default, the audio before the cut when asked for.
    let cut_data = AudioSource::Bytes(&good[..44 + 2000]);
    let e_cut_data = err_of(cut_data);
    assert!(
        e_cut_data.contains("the file holds 2000 of them"),
        "{e_cut_data}"
    );
    let partial = DecodeOptions {
        truncated: TruncatedAudio::Partial,
    };
    let mut d = Decoder::open_with(cut_data, partial).unwrap();
    let mut samples = 0;
    while let Some(chunk) = d.next_mono_chunk().unwrap() {
        samples += chunk.len();
    }
    assert_eq!(samples, 1000);
    // A malformed header: zero channels.
    let mut zero_ch = good.clone();
    zero_ch[22] = 0;
    let e_corrupt = err_of(AudioSource::Bytes(&zero_ch));
    assert!(
        e_corrupt.contains("corrupt") || e_corrupt.contains("0 channels"),
        "{e_corrupt}"
    );
    // MPEG frame headers followed by garbage.
    let mut fake_mp3 = Vec::new();
    for i in 0..200u32 {
        fake_mp3.extend_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        fake_mp3.extend((0..413).map(|j| (i * 31 + j * 7) as u8));
    }
    let e_mp3 = err_of(AudioSource::Bytes(&fake_mp3));
    assert!(
        e_mp3.contains("no audio samples") || e_mp3.contains("corrupt"),
        "{e_mp3}"
    );

    let all = [
        &e_empty,
        &e_text,
        &e_missing,
        &e_dir,
        &e_no_audio,
        &e_cut,
        &e_corrupt,
    ];
    for (i, a) in all.iter().enumerate() {
        assert!(!a.ends_with('.'), "{a}");
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

/// Mutated and truncated files of every format: decoding may fail, it must not panic.
#[test]
fn corrupt_files_never_panic() {
    let dir = TempDir::new("fuzz");
    let rate = 22050;
    let tone = sine(330.0, rate, rate as usize, 0.5);
    let (wav_bytes, _) = wav(&[tone.clone(), noise(tone.len(), 0.2, 9)], rate, Fmt::S16);
    let src = dir.path("src.wav");
    std::fs::write(&src, &wav_bytes).unwrap();
    let mut files = vec![("wav", wav_bytes)];
    if tool("sox") {
        for ext in ["flac", "ogg", "mp3"] {
            let dst = dir.path(&format!("src.{ext}"));
            assert!(Command::new("sox")
                .arg(&src)
                .arg(&dst)
                .status()
                .unwrap()
                .success());
            files.push((ext, std::fs::read(&dst).unwrap()));
        }
    } else {
        eprintln!(
            "flac/ogg/mp3 fuzzing skipped: sox is missing (apt-get install sox libsox-fmt-all)"
        );
    }
    if tool("ffmpeg") {
        let dst = dir.path("src.m4a");
        let ok = Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
            .arg(&src)
            .args(["-c:a", "aac"])
            .arg(&dst)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        files.push(("m4a", std::fs::read(&dst).unwrap()));
    }
    let mut state = 0x2545f4914f6cdd1du64;
    let mut rand = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    // AUDIOTEXT_FUZZ_ROUNDS=5000 runs a longer campaign.
    let rounds: usize = std::env::var("AUDIOTEXT_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let (mut ok, mut failed) = (0, 0);
    let mut panics = 0;
    for (ext, bytes) in &files {
        for round in 0..rounds {
            let mut b = bytes.clone();
            match round % 3 {
                0 => b.truncate(rand(b.len())),
                1 => {
                    for _ in 0..1 + rand(20) {
                        let i = rand(b.len());
                        b[i] ^= 1 << rand(8);
                    }
                }
                _ => {
                    let start = rand(b.len().min(400));
                    let len = rand(64).min(b.len() - start);
                    for x in &mut b[start..start + len] {
                        *x = rand(256) as u8;
                    }
                }
            }
            let result = std::panic::catch_unwind(|| decode_mono(&AudioSource::Bytes(&b), 16000));
            match result {
                Err(_) => panic!("{ext} round {round}: a panic escaped the decoder"),
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("audio blob "), "{ext} round {round}: {msg}");
                    panics += msg.contains("decoder failed") as usize;
                    failed += 1;
                }
            }
        }
    }
    eprintln!("mutated files: {ok} decoded, {failed} refused ({panics} decoder panics caught)");
}

/// Regression (issue 12): a 45 KB M4A whose sample-table entry count was mutated made symphonia
/// ask for gigabytes, and under a memory limit the host aborted. Each table's count is now
/// checked against the atom that holds it, before symphonia sees the file.
#[test]
fn m4a_with_a_mutated_sample_table_count_is_refused_before_allocating() {
    if !tool("ffmpeg") {
        eprintln!("SKIPPED: ffmpeg is missing (apt-get install ffmpeg)");
        return;
    }
    let dir = TempDir::new("m4a-tables");
    let rate = 22050;
    let (wav_bytes, _) = wav(&[sine(440.0, rate, rate as usize, 0.5)], rate, Fmt::S16);
    let src = dir.path("tone.wav");
    std::fs::write(&src, &wav_bytes).unwrap();
    let m4a = dir.path("tone.m4a");
    assert!(Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(&src)
        .args(["-c:a", "aac"])
        .arg(&m4a)
        .status()
        .unwrap()
        .success());
    let good = std::fs::read(&m4a).unwrap();
    assert!(Decoder::open(AudioSource::Bytes(&good)).is_ok());
    // stsz: version+flags, sample size (0: a table follows), count; the others: version+flags,
    // count.
    for (table, count_at) in [("stsz", 8), ("stsc", 4), ("stts", 4), ("stco", 4)] {
        let at = good
            .windows(4)
            .position(|w| w == table.as_bytes())
            .unwrap_or_else(|| panic!("ffmpeg's m4a has no {table}"));
        let size = u32::from_be_bytes(good[at - 4..at].try_into().unwrap()) as usize;
        let count_pos = at + 4 + count_at;
        let count = u32::from_be_bytes(good[count_pos..count_pos + 4].try_into().unwrap());
        let entry_len = match table {
            "stsc" => 12,
            "stts" => 8,
            _ => 4,
        };
        let room = (size - 8 - count_at - 4) / entry_len;
        assert_eq!(count as usize, room, "{table}: ffmpeg's table is full");
        let mut bad = good.clone();
        bad[count_pos..count_pos + 4].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
        let want = format!(
            "is corrupt: its sample table ({table}) declares 2147418112 entries but holds room for {room}; re-encode or re-download the file"
        );
        let e = err_of(AudioSource::Bytes(&bad));
        assert_eq!(e, format!("audio blob {want}"));
        let path = dir.path(&format!("bad-{table}.m4a"));
        std::fs::write(&path, &bad).unwrap();
        let e = err_of(AudioSource::Path(&path));
        assert_eq!(e, format!("{} {want}", path.display()));
    }
}

// ---- streaming ----------------------------------------------------------------------------

/// Writes a long mono 16-bit WAV procedurally, without holding it in memory.
fn write_long_wav(path: &Path, rate: u32, frames: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let data_len = (frames * 2) as u32;
    f.write_all(b"RIFF").unwrap();
    f.write_all(&(36 + data_len).to_le_bytes()).unwrap();
    f.write_all(b"WAVEfmt ").unwrap();
    f.write_all(&16u32.to_le_bytes()).unwrap();
    for v in [1u16, 1] {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.write_all(&rate.to_le_bytes()).unwrap();
    f.write_all(&(rate * 2).to_le_bytes()).unwrap();
    f.write_all(&2u16.to_le_bytes()).unwrap();
    f.write_all(&16u16.to_le_bytes()).unwrap();
    f.write_all(b"data").unwrap();
    f.write_all(&data_len.to_le_bytes()).unwrap();
    let mut phase = 0u32;
    for i in 0..frames {
        // A tone whose pitch steps every second, plus a little deterministic hiss.
        let hz = 200 + 50 * ((i / rate as usize) % 20) as u32;
        phase = (phase + hz * 65536 / rate) % 65536;
        let v = (phase as f32 / 65536.0 * std::f32::consts::TAU).sin() * 8000.0
            + ((i * 7919) % 200) as f32;
        f.write_all(&(v as i16).to_le_bytes()).unwrap();
    }
}

#[test]
fn twenty_minutes_stream_in_bounded_memory() {
    let dir = TempDir::new("long");
    let path = dir.path("long.wav");
    let rate = 11025;
    let frames = (20 * 60 + 5) * rate as usize; // 20 min 5 s
    write_long_wav(&path, rate, frames);
    // A light front-end (16 kHz, 512-point frames without overlap): this test is about the
    // stream, not the spectrum.
    let fe = FrontEnd {
        sample_rate: 16000,
        n_fft: 512,
        win_length: 512,
        hop_length: 512,
        n_mels: 32,
        fmax: 8000.0,
        ..FrontEnd::panns_32k()
    };
    let windowing = Windowing::ten_seconds();
    let mut stream = log_mel_windows(&AudioSource::Path(&path), &fe, &windowing).unwrap();
    assert_eq!(stream.info().sample_rate, rate);
    let mut count = 0;
    let mut last_frames = 0;
    for lm in stream.by_ref() {
        let lm = lm.unwrap();
        assert_eq!(lm.n_mels, 32);
        assert!(lm.data.iter().all(|v| v.is_finite()));
        if count < 120 {
            assert_eq!(lm.frames, 1 + 160_000 / 512, "window {count}");
        }
        last_frames = lm.frames;
        count += 1;
    }
    // 120 full windows and the 5 s tail (>= min_seconds).
    assert_eq!(count, 121);
    assert_eq!(last_frames, 1 + 80_000 / 512);
    let total = (frames as u64 * 16000 + rate as u64 / 2) / rate as u64;
    assert_eq!(stream.samples(), total);
    let clip = stream.plan().clip_samples;
    let max = stream.max_buffered_samples();
    assert!(
        max <= clip + 16000,
        "held {max} samples for a {clip}-sample window"
    );
    eprintln!("20 min: {count} windows, at most {max} samples held ({clip} per window)");
}

#[test]
fn streamed_windows_equal_log_mel_of_the_whole_decode() {
    let rate = 44100;
    let n = rate as usize * 35 + 1234;
    let left: Vec<f32> = sine(300.0, rate, n, 0.3)
        .iter()
        .zip(noise(n, 0.1, 1))
        .map(|(a, b)| a + b)
        .collect();
    let right = noise(n, 0.2, 2);
    let (bytes, _) = wav(&[left, right], rate, Fmt::S16);
    let fe = FrontEnd::panns_32k();
    let mel = Arc::new(MelExtractor::new(&fe).unwrap());
    for windowing in [
        Windowing::ten_seconds(),
        Windowing {
            clip_seconds: 4.0,
            hop_seconds: 3.0,
            min_seconds: 2.5,
            pooling: "mean".into(),
        },
        Windowing {
            clip_seconds: 3.0,
            hop_seconds: 7.0,
            min_seconds: 0.0,
            pooling: "mean".into(),
        },
    ] {
        let whole = decode_mono(&AudioSource::Bytes(&bytes), fe.sample_rate).unwrap();
        let bounds = window_bounds(whole.len(), fe.sample_rate, &windowing).unwrap();
        let stream =
            LogMelWindows::new(&AudioSource::Bytes(&bytes), mel.clone(), &windowing).unwrap();
        let streamed: Vec<_> = stream.map(|r| r.unwrap()).collect();
        assert_eq!(streamed.len(), bounds.len(), "{windowing:?}");
        for ((a, b), lm) in bounds.iter().zip(&streamed) {
            assert_eq!(
                lm,
                &mel.compute(&whole[*a..*b]),
                "{windowing:?} window {a}..{b}"
            );
        }
    }
    // A file shorter than one window is one window of its own length.
    let (short, _) = wav(&[sine(440.0, 8000, 4000, 0.5)], 8000, Fmt::S16);
    let windows: Vec<_> =
        log_mel_windows(&AudioSource::Bytes(&short), &fe, &Windowing::ten_seconds())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0].frames, fe.frames(16000));
}
