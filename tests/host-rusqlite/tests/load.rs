//! The extension inside an application that links its own SQLite.

use std::path::PathBuf;

use rusqlite::{Connection, LoadExtensionGuard};

fn extension() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("dist/audiotext0").canonicalize().unwrap_or(root.join("dist/audiotext0"))
}

fn open() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    unsafe {
        let _guard = LoadExtensionGuard::new(&conn).unwrap();
        conn.load_extension(extension(), None::<&str>).expect("load dist/audiotext0.so (run scripts/build.sh first)");
    }
    conn
}

#[test]
fn loads_into_bundled_sqlite_and_reports_versions() {
    let conn = open();
    let (ours, vec): (String, String) =
        conn.query_row("SELECT audiotext_version(), vec_version()", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert!(ours.starts_with('v'), "{ours}");
    assert!(vec.starts_with("v0.1"), "{vec}");
    let sqlite: String = conn.query_row("SELECT sqlite_version()", [], |r| r.get(0)).unwrap();
    assert_ne!(sqlite, "3.40.1", "this host must use its own bundled SQLite, not Debian's");
}

#[test]
fn vec0_knn_over_text_embed_finds_the_paraphrase() {
    let conn = open();
    conn.execute_batch(
        "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO docs(body) VALUES ('a dog barks in the yard'), ('heavy rain on the window'),
                                       ('a jet plane taking off'), ('people talking in a cafe');
         CREATE VIRTUAL TABLE idx USING vec0(embedding float[384] distance_metric=cosine);
         INSERT INTO idx(rowid, embedding) SELECT id, text_embed(body) FROM docs;",
    )
    .unwrap();
    let nearest: String = conn
        .query_row(
            "SELECT d.body FROM idx JOIN docs d ON d.id = idx.rowid
              WHERE idx.embedding MATCH text_embed('a downpour') AND k = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(nearest, "heavy rain on the window");
}

#[test]
fn errors_are_sql_errors_and_the_connection_survives() {
    let conn = open();
    let err = conn.query_row("SELECT text_embed('nope', 'x')", [], |r| r.get::<_, Vec<u8>>(0)).unwrap_err();
    assert!(err.to_string().contains("no model named 'nope'"), "{err}");
    let one: i64 = conn.query_row("SELECT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(one, 1);
}

#[test]
fn shared_across_threads_and_connections() {
    // Each thread opens its own connection; all share one process-wide model.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let conn = open();
                let blob: Vec<u8> =
                    conn.query_row("SELECT text_embed(?1)", [format!("sentence number {i}")], |r| r.get(0)).unwrap();
                blob.len()
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), 384 * 4);
    }
}

/// A CHECK constraint that calls a file reader must not run it, on this newer SQLite too (it
/// refuses the DIRECTONLY function itself; 3.40.1 does not, and the extension's own schema check
/// refuses there), and not even the user's own calls run while such a schema is open.
#[test]
fn a_check_constraint_cannot_make_the_extension_read_files() {
    // SQLite 3.53 refuses to create it: an attacker edits the schema text instead.
    let path = std::env::temp_dir().join(format!("audiotext-check-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let attacker = Connection::open(&path).unwrap();
    attacker
        .execute_batch(
            "CREATE TABLE t(x TEXT CHECK (length(x) IS NOT NULL));
             PRAGMA writable_schema=ON;
             UPDATE sqlite_schema SET sql = replace(sql, 'length(', 'audio_info(') WHERE name = 't';",
        )
        .unwrap();
    drop(attacker);
    let conn = Connection::open(&path).unwrap();
    unsafe {
        let _guard = LoadExtensionGuard::new(&conn).unwrap();
        conn.load_extension(extension(), None::<&str>).unwrap();
    }
    conn.execute_batch("PRAGMA trusted_schema=OFF").unwrap();
    let err = conn.execute("INSERT INTO t VALUES ('/etc/hostname')", []).unwrap_err().to_string();
    assert!(err.contains("unsafe use of audio_info()") || err.contains("refused: the table 't'"), "{err}");
    let err = conn.query_row("SELECT audio_info('/etc/hostname')", [], |r| r.get::<_, String>(0)).unwrap_err();
    assert!(err.to_string().contains("calls audio_info() in its schema"), "{err}");
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 0);
    drop(conn);
    std::fs::remove_file(&path).unwrap();
}

/// A mono 16-bit WAV of `seconds` of noise with a wandering tone, at 16 kHz.
fn long_wav(path: &std::path::Path, seconds: u32) {
    let rate = 16_000u32;
    let n = rate * seconds;
    let mut data = Vec::with_capacity(n as usize * 2);
    let mut s: u32 = 12345;
    for i in 0..n {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        let t = i as f32 / rate as f32;
        let tone = (t * 2.0 * std::f32::consts::PI * (300.0 + 200.0 * (t * 0.1).sin())).sin();
        let x = (0.2 * noise + 0.3 * tone) * 32767.0;
        data.extend_from_slice(&(x as i16).to_le_bytes());
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

/// sqlite3_interrupt from another thread stops audio_embed partway through a long file on this
/// newer SQLite too (the extension probes with a nested statement, not sqlite3_is_interrupted).
#[test]
fn interrupt_stops_audio_embed_on_a_long_file() {
    let dir = std::env::temp_dir().join(format!("audiotext-host-interrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("long.wav");
    long_wav(&path, 180);
    let path = path.to_str().unwrap().to_string();
    let conn = open();
    let embed = |conn: &Connection| conn.query_row("SELECT audio_embed(?1)", [&path], |r| r.get::<_, Vec<u8>>(0));
    let started = std::time::Instant::now();
    let full = embed(&conn).unwrap();
    let full_time = started.elapsed();

    let handle = conn.get_interrupt_handle();
    let delay = (full_time / 10).min(std::time::Duration::from_millis(500));
    let interrupter = std::thread::spawn(move || {
        std::thread::sleep(delay);
        handle.interrupt();
    });
    let started = std::time::Instant::now();
    let err = embed(&conn).unwrap_err().to_string();
    let took = started.elapsed();
    interrupter.join().unwrap();
    assert!(err.contains("interrupted (sqlite3_interrupt) while embedding"), "{err}");
    assert!(took < full_time / 2, "interrupted after {took:?}, a full call takes {full_time:?}");
    assert_eq!(embed(&conn).unwrap(), full, "the connection works afterwards");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `audiotext_index` on a newer SQLite: `ORDER BY distance LIMIT k` (which SQLite passes to the
/// index from 3.41 on), text queries, and a rollback across connections of one file.
#[test]
fn audiotext_index_takes_limit_and_text_and_obeys_transactions() {
    let dir = std::env::temp_dir().join(format!("audiotext-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("index.db");
    let _ = std::fs::remove_file(&path);
    let open_file = || {
        let conn = Connection::open(&path).unwrap();
        unsafe {
            let _guard = LoadExtensionGuard::new(&conn).unwrap();
            conn.load_extension(extension(), None::<&str>).unwrap();
        }
        conn
    };
    let mut writer = open_file();
    writer
        .execute_batch(
            "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
             INSERT INTO docs(body) VALUES ('a dog barks in the yard'), ('heavy rain on the window'),
                                           ('a jet plane taking off'), ('people talking in a cafe');
             CREATE VIRTUAL TABLE idx USING audiotext_index(embedding float[384]);
             INSERT INTO idx(rowid, embedding) SELECT id, text_embed(body) FROM docs;",
        )
        .unwrap();
    let nearest = |conn: &Connection, sql: &str| -> Vec<i64> {
        let mut statement = conn.prepare(sql).unwrap();
        let rows = statement.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let by_limit = nearest(&writer, "SELECT rowid FROM idx WHERE embedding MATCH text_embed('a downpour') ORDER BY distance LIMIT 2");
    let by_k = nearest(&writer, "SELECT rowid FROM idx WHERE embedding MATCH 'a downpour' AND k = 2");
    assert_eq!(by_limit, by_k);
    assert_eq!(by_k[0], 2, "heavy rain is nearest to a downpour");

    let reader = open_file();
    assert_eq!(nearest(&reader, "SELECT rowid FROM idx WHERE embedding MATCH 'a downpour' AND k = 1"), vec![2]);
    let transaction = writer.transaction().unwrap();
    transaction
        .execute("INSERT INTO idx(rowid, embedding) VALUES (9, text_embed('a downpour'))", [])
        .unwrap();
    assert_eq!(nearest(&transaction, "SELECT rowid FROM idx WHERE embedding MATCH 'a downpour' AND k = 1"), vec![9]);
    // Not committed: the other connection does not see it.
    assert_eq!(nearest(&reader, "SELECT rowid FROM idx WHERE embedding MATCH 'a downpour' AND k = 1"), vec![2]);
    transaction.rollback().unwrap();
    assert_eq!(nearest(&writer, "SELECT rowid FROM idx WHERE embedding MATCH 'a downpour' AND k = 1"), vec![2]);
    writer.execute("INSERT INTO idx(rowid, embedding) VALUES (9, text_embed('a downpour'))", []).unwrap();
    assert_eq!(nearest(&reader, "SELECT rowid FROM idx WHERE embedding MATCH 'a downpour' AND k = 1"), vec![9]);
    drop((writer, reader));
    let _ = std::fs::remove_dir_all(&dir);
}
