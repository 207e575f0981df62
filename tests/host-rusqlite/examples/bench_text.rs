//! Text-side benchmark, run in an application with its own SQLite (rusqlite bundled):
//! extension load time, bundle load time (first `text_embed`: manifest check, sha256, session),
//! and `text_embed` latency per query (p50/p90/p99), single-threaded and with threads sharing
//! the process-wide model.
//!
//!     cargo run --release --manifest-path tests/host-rusqlite/Cargo.toml --example bench_text [-- QUERIES]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{Connection, LoadExtensionGuard};

const CAPTIONS: [&str; 8] = [
    "a dog barking in the distance",
    "rain falling on a metal roof during a thunderstorm",
    "a crowd applauding after a speech",
    "footsteps on gravel",
    "an old car engine idling then revving up and driving away",
    "birds singing at dawn in a forest with a stream nearby",
    "glass breaking",
    "a church bell ringing twelve times while traffic passes",
];

fn extension() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist/audiotext0")
}

fn open() -> (Connection, Duration) {
    let conn = Connection::open_in_memory().unwrap();
    let started = Instant::now();
    unsafe {
        let _guard = LoadExtensionGuard::new(&conn).unwrap();
        conn.load_extension(extension(), None::<&str>).unwrap();
    }
    (conn, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn embed_all(conn: &Connection, n: usize, offset: usize) -> Vec<Duration> {
    let mut stmt = conn.prepare("SELECT text_embed(?1)").unwrap();
    (0..n)
        .map(|i| {
            // A distinct text each time: no statement-level caching helps.
            let text = format!("{} #{}", CAPTIONS[i % CAPTIONS.len()], i + offset);
            let started = Instant::now();
            let blob: Vec<u8> = stmt.query_row([text], |r| r.get(0)).unwrap();
            assert_eq!(blob.len(), 384 * 4);
            started.elapsed()
        })
        .collect()
}

fn main() {
    let queries: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(200);
    let (conn, first_load) = open();
    let (_second, second_load) = open();
    let started = Instant::now();
    conn.query_row("SELECT text_embed('warm up')", [], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    let bundle_load = started.elapsed();
    let debug: String = conn.query_row("SELECT audiotext_debug()", [], |r| r.get(0)).unwrap();

    let mut single = embed_all(&conn, queries, 0);
    single.sort();
    let threads = 2;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| std::thread::spawn(move || embed_all(&open().0, queries / threads, 1_000_000 * (t + 1))))
        .collect();
    let mut shared: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let shared_wall = started.elapsed();
    shared.sort();

    println!("{debug}\n");
    println!("extension load (first connection, process start): {:.1} ms", first_load.as_secs_f64() * 1e3);
    println!("extension load (another connection):              {:.2} ms", second_load.as_secs_f64() * 1e3);
    println!("bundle load (first text_embed, incl. ORT + sha256): {:.0} ms", bundle_load.as_secs_f64() * 1e3);
    for (label, times) in [("1 thread", &single), (&*format!("{threads} threads"), &shared)] {
        println!(
            "text_embed latency, {label:>9}, {} queries: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms",
            times.len(),
            percentile(times, 0.5).as_secs_f64() * 1e3,
            percentile(times, 0.9).as_secs_f64() * 1e3,
            percentile(times, 0.99).as_secs_f64() * 1e3
        );
    }
    let single_total: Duration = single.iter().sum();
    println!(
        "throughput: 1 thread {:.0} queries/s, {threads} threads {:.0} queries/s",
        single.len() as f64 / single_total.as_secs_f64(),
        shared.len() as f64 / shared_wall.as_secs_f64()
    );
}
