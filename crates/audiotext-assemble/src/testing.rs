//! Support for the tests of the library and of `audiotext-train` (public so that the binary's
//! tests can use it too; nothing in the extension calls it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// An empty folder under the system's temporary folder, removed with everything in it on drop.
/// Names carry the process id and a counter, so parallel tests never share one.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(fresh_dir(tag))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An empty folder that is kept (for fixtures written once per test run).
pub fn fresh_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("audiotext-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create a temporary folder");
    dir
}

/// The Python that writes test fixtures: the project's virtual environment's, else `python3`
/// from the PATH; `None` when there is none.
pub fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(".venv/bin/python");
    if venv.is_file() {
        return Some(venv);
    }
    let found = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| PathBuf::from("python3"))
}

/// Runs tests/python/helpers/make_checkpoints.py with `flags`, then a fresh folder, then `args`,
/// and returns the folder it wrote; `None` (with a message naming the test) when there is no
/// Python. Panics with the script's error output when it fails.
pub fn make_checkpoints(flags: &[&str], args: &[String]) -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("tests/python/helpers/make_checkpoints.py");
    let Some(python) = python() else {
        eprintln!(
            "skipped: no python3 to write the test checkpoints with ({} {})",
            script.display(),
            flags.join(" ")
        );
        return None;
    };
    let dir = fresh_dir("checkpoints");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .args(flags)
        .arg(&dir)
        .args(args)
        .output()
        .expect("cannot start python");
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(dir)
}
