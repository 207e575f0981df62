//! The extension linked into an app with its own SQLite (rusqlite's `bundled`), as a Rust
//! dependency without its `loadable` feature: `sqlite_audiotext::register(&conn)` and the raw
//! `sqlite3_audiotext_auto_init` for `sqlite3_auto_extension`. No library of ours is loaded from
//! disk; ONNX Runtime and the default model are named the documented ways.

use std::path::PathBuf;

use rusqlite::{ffi, Connection};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// ONNX Runtime (set-up's copy in dist/) and the default bundle, registered on `conn`.
fn point_at_runtime_and_models(conn: &Connection) {
    let runtime = root().join("dist/libonnxruntime.so");
    assert!(runtime.is_file(), "{} is missing: run scripts/build.sh first", runtime.display());
    let _: String = conn
        .query_row("SELECT audiotext_runtime(?1)", [runtime.to_str().unwrap()], |r| r.get(0))
        .unwrap();
    conn.execute(
        "INSERT OR REPLACE INTO temp.audiotext_models(name, path) VALUES ('default', ?1)",
        [root().join("models/default").to_str().unwrap()],
    )
    .unwrap();
}

fn loaded_libraries() -> String {
    std::fs::read_to_string("/proc/self/maps").unwrap_or_default()
}

/// A mono 16-bit WAV at 16 kHz: a rising tone over a little noise.
fn tone_wav(path: &std::path::Path, seconds: f32) {
    let rate = 16_000u32;
    let n = (rate as f32 * seconds) as u32;
    let mut data = Vec::with_capacity(n as usize * 2);
    let mut s: u32 = 7;
    for i in 0..n {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        let t = i as f32 / rate as f32;
        let x = 0.4 * (t * std::f32::consts::TAU * (400.0 + 300.0 * t)).sin() + 0.05 * noise;
        data.extend_from_slice(&((x * 32767.0) as i16).to_le_bytes());
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    for v in [16u32, 1 | (1 << 16), rate, rate * 2, 2 | (16 << 16)] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn register_gives_every_function_on_the_apps_own_sqlite() {
    let conn = Connection::open_in_memory().unwrap();
    sqlite_audiotext::register(&conn).unwrap();
    point_at_runtime_and_models(&conn);
    let sqlite: String = conn.query_row("SELECT sqlite_version()", [], |r| r.get(0)).unwrap();
    assert_ne!(sqlite, "3.40.1", "this app must use its own bundled SQLite, not Debian's");
    let (ours, vec): (String, String) = conn
        .query_row("SELECT audiotext_version(), vec_version()", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert!(ours.starts_with('v') && vec.starts_with("v0.1"), "{ours} {vec}");

    // Text and audio embeddings, and a score between them: all finite, 384 dims.
    let text: Vec<u8> = conn.query_row("SELECT text_embed('a rising whistle')", [], |r| r.get(0)).unwrap();
    assert_eq!(text.len(), 384 * 4);
    let wav = std::env::temp_dir().join(format!("audiotext-register-{}.wav", std::process::id()));
    tone_wav(&wav, 3.0);
    let (audio, score): (Vec<u8>, f64) = conn
        .query_row(
            "SELECT audio_embed(?1), audio_text_score(audio_embed(?1), 'a rising whistle')",
            [wav.to_str().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    std::fs::remove_file(&wav).unwrap();
    assert_eq!(audio.len(), 384 * 4);
    assert!(score.is_finite() && score.abs() <= 1.0, "{score}");

    // sqlite-vec, compiled with SQLITE_CORE here, and our own index.
    conn.execute_batch(
        "CREATE VIRTUAL TABLE v USING vec0(embedding float[384] distance_metric=cosine);
         INSERT INTO v(rowid, embedding) VALUES (1, text_embed('heavy rain on the window')),
                                               (2, text_embed('a dog barks in the yard'));
         CREATE VIRTUAL TABLE idx USING audiotext_index(embedding float[384]);
         INSERT INTO idx(rowid, embedding) SELECT rowid, embedding FROM v;",
    )
    .unwrap();
    for table in ["v", "idx"] {
        let nearest: i64 = conn
            .query_row(
                &format!("SELECT rowid FROM {table} WHERE embedding MATCH text_embed('a downpour') AND k = 1"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(nearest, 1, "{table}");
    }
    // Errors stay SQL errors.
    let err = conn.query_row("SELECT text_embed('nope', 'x')", [], |r| r.get::<_, Vec<u8>>(0)).unwrap_err();
    assert!(err.to_string().contains("no model named 'nope'"), "{err}");

    let maps = loaded_libraries();
    assert!(!maps.contains("audiotext0") && !maps.contains("libsqlite_audiotext"), "a library of ours was loaded");
}

#[test]
fn auto_extension_registers_each_new_connection() {
    type Init = unsafe extern "C" fn(*mut ffi::sqlite3, *mut *mut std::os::raw::c_char, *const ffi::sqlite3_api_routines) -> i32;
    let init: Init = sqlite_audiotext::sqlite3_audiotext_auto_init;
    // SAFETY: SQLite calls the entry point with the three arguments of an extension's init.
    let rc = unsafe { ffi::sqlite3_auto_extension(Some(init)) };
    assert_eq!(rc, ffi::SQLITE_OK);
    for _ in 0..2 {
        let conn = Connection::open_in_memory().unwrap();
        let (ours, vec): (String, String) = conn
            .query_row("SELECT audiotext_version(), vec_version()", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert!(ours.starts_with('v') && vec.starts_with("v0.1"), "{ours} {vec}");
        let models: i64 = conn.query_row("SELECT count(*) FROM temp.audiotext_models WHERE 0", [], |r| r.get(0)).unwrap();
        assert_eq!(models, 0);
    }
    unsafe { ffi::sqlite3_cancel_auto_extension(Some(init)) };
}
