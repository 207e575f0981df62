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
