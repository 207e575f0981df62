//! Compiles sqlite-vec's C source (taken from the `sqlite-vec` crate that cargo fetched) into
//! this library, as a *loadable extension* rather than as part of SQLite's core.
//!
//! Why not just depend on the `sqlite-vec` crate: it compiles with `SQLITE_CORE`, which makes
//! every `sqlite3_*` call a direct symbol reference. Inside a loadable extension those symbols
//! would resolve against whatever libsqlite3 the dynamic linker finds, not the SQLite that
//! loaded us (Python's, an app's bundled one), and crash. Without `SQLITE_CORE` sqlite-vec
//! calls through the `sqlite3_api_routines` pointer that we hand it in `sql::vec::register`.
//!
//! Without the `loadable` feature the crate is linked into an app with its own SQLite: then
//! sqlite-vec is compiled *with* `SQLITE_CORE` and calls that SQLite directly.

use std::path::PathBuf;
use std::process::Command;

/// The sqlite-vec release whose source we compile; keep in step with Cargo.toml.
const SQLITE_VEC_VERSION: &str = "0.1.6";

fn main() {
    let source_dir = sqlite_vec_source_dir();
    let c_file = source_dir.join("sqlite-vec.c");
    println!("cargo:rerun-if-changed={}", c_file.display());
    println!("cargo:rerun-if-changed=build.rs");
    // SQLite unloads an extension when the last connection that loaded it closes; ONNX Runtime
    // and our process-wide caches must outlive that, so the library is never unloaded.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=src/vtab_in.c");
    let loadable = std::env::var_os("CARGO_FEATURE_LOADABLE").is_some();
    let mut build = cc::Build::new();
    if !loadable {
        build.define("SQLITE_CORE", None);
    }
    build
        .file(&c_file)
        // Our own calls into SQLite that rusqlite's bindings lack (see the file).
        .file("src/vtab_in.c")
        // sqlite-vec ships the sqlite3.h / sqlite3ext.h it was written against.
        .include(&source_dir)
        .define("SQLITE_VEC_STATIC", None)
        .opt_level(3)
        .warnings(false)
        .compile("sqlite_vec_ext");
}

/// Finds the fetched `sqlite-vec` package through `cargo metadata`, so no copy of its source
/// lives in this repository.
fn sqlite_vec_source_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(PathBuf::from(&manifest_dir).join("Cargo.toml"))
        .output()
        .expect("running `cargo metadata` to locate sqlite-vec's source");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"]
        .as_array()
        .expect("metadata has packages");
    let package = packages
        .iter()
        .find(|p| p["name"] == "sqlite-vec" && p["version"] == SQLITE_VEC_VERSION)
        .unwrap_or_else(|| {
            panic!("sqlite-vec {SQLITE_VEC_VERSION} is not in the dependency graph")
        });
    let manifest_path = PathBuf::from(package["manifest_path"].as_str().expect("manifest_path"));
    manifest_path
        .parent()
        .expect("package folder")
        .to_path_buf()
}
