//! ONNX Runtime: finding the shared library, loading it once per process, and creating sessions
//! on the best execution provider available (CUDA when the runtime and a GPU allow, else CPU).
//!
//! ONNX Runtime allows one environment per process and `ort` loads the library once, so all of
//! this is process-global. A failed load is not remembered: fixing the cause (copying the
//! library, setting `AUDIOTEXT_ORT_DYLIB`, calling `audiotext_runtime(path)`) and retrying works
//! without restarting the process.

use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::{Error, Result};

/// Environment variables naming the library explicitly, in the order they are read.
pub const DYLIB_ENV_VARS: [&str; 2] = ["AUDIOTEXT_ORT_DYLIB", "ORT_DYLIB_PATH"];
/// Environment variable choosing the execution provider: `auto` (default), `cpu` or `cuda`.
pub const PROVIDER_ENV_VAR: &str = "AUDIOTEXT_PROVIDER";
/// Threads one encoder run may use on the CPU (ONNX Runtime's intra-op threads). Unset: ONNX
/// Runtime's default, one per physical core. A process among several on one machine (a Ray or
/// Spark worker given one CPU) sets it to its share.
pub const THREADS_ENV_VAR: &str = "AUDIOTEXT_THREADS";
const MAX_THREADS: usize = 1024;

/// AUDIOTEXT_THREADS, read when a session is made: None when unset or empty.
fn intra_op_threads() -> Result<Option<usize>> {
    let Some(value) = std::env::var_os(THREADS_ENV_VAR).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) if (1..=MAX_THREADS).contains(&n) => Ok(Some(n)),
        _ => Err(Error::Runtime(format!(
            "{THREADS_ENV_VAR}={} is not a thread count: set a whole number from 1 to {MAX_THREADS}, or unset it for one thread per core",
            value.to_string_lossy()
        ))),
    }
}
/// File name of the library on the dynamic linker's search path and next to the extension.
const DYLIB_NAME: &str = "libonnxruntime.so";
const CUDA_PROVIDER: &str = "CUDAExecutionProvider";
const CPU_PROVIDER: &str = "CPUExecutionProvider";

/// The loaded ONNX Runtime, shared by every connection and thread of the process.
pub struct Runtime {
    environment: Environment,
    /// Absolute path the library was loaded from (or the bare name when the system found it).
    pub path: PathBuf,
    /// How the path was chosen, e.g. `next to the extension`.
    pub found_by: String,
    /// The library's own version string, e.g. `1.31.1`.
    pub version: String,
    /// Execution providers compiled into this ONNX Runtime build.
    pub available_providers: Vec<String>,
}

/// Which provider a session really runs on, and why not CUDA when it does not.
#[derive(Debug, Clone)]
pub struct SessionPlacement {
    pub provider: &'static str,
    /// Why CUDA was not used, when it was not (not compiled in, registration failed, disabled).
    pub cuda_note: Option<String>,
}

static RUNTIME: Mutex<Option<&'static Runtime>> = Mutex::new(None);

/// A place the library may be, and how that place was chosen.
struct Candidate {
    path: PathBuf,
    found_by: String,
}

/// Returns the process's runtime, loading it on first use from the search order:
/// `AUDIOTEXT_ORT_DYLIB`, `ORT_DYLIB_PATH`, the folder of the loaded extension, the system path.
pub fn runtime() -> Result<&'static Runtime> {
    runtime_searching(&[])
}

/// [`runtime`], with the folders `also` searched after the extension's (or the executable's)
/// own and before the system path: the trainer looks in `dist/` above its binary and in the
/// working folder.
pub fn runtime_searching(also: &[PathBuf]) -> Result<&'static Runtime> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(runtime) = *slot {
        return Ok(runtime);
    }
    let runtime = load(&default_candidates(also)?)?;
    *slot = Some(runtime);
    Ok(runtime)
}

/// Loads the runtime from an explicit path (the `audiotext_runtime(path)` SQL function). When a
/// runtime is already loaded from another file this is an error: a process holds one.
pub fn runtime_from(path: &Path) -> Result<&'static Runtime> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(runtime) = *slot {
        if same_file(&runtime.path, path) {
            return Ok(runtime);
        }
        return Err(Error::Runtime(format!(
            "ONNX Runtime is already loaded from {}; a process can hold only one, so restart it and call audiotext_runtime('{}') before any embedding",
            runtime.path.display(),
            path.display()
        )));
    }
    let runtime = load(&[Candidate {
        path: path.to_path_buf(),
        found_by: "audiotext_runtime()".into(),
    }])?;
    *slot = Some(runtime);
    Ok(runtime)
}

/// The runtime when it is already loaded, without trying to load it.
pub fn loaded_runtime() -> Option<&'static Runtime> {
    *RUNTIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The search order, with `also` after the extension's folder and before the system path. An
/// explicit environment variable wins alone: if it names a file that does not load, falling
/// back to another library would hide the mistake.
fn default_candidates(also: &[PathBuf]) -> Result<Vec<Candidate>> {
    for var in DYLIB_ENV_VARS {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(vec![Candidate {
                path: PathBuf::from(value),
                found_by: format!("${var}"),
            }]);
        }
    }
    let mut candidates = Vec::new();
    if let Some(dir) = extension_dir() {
        candidates.push(Candidate {
            path: dir.join(DYLIB_NAME),
            found_by: "next to the extension".into(),
        });
    }
    candidates.extend(also.iter().map(|dir| Candidate {
        path: dir.join(DYLIB_NAME),
        found_by: format!("in {}", dir.display()),
    }));
    candidates.push(Candidate {
        path: PathBuf::from(DYLIB_NAME),
        found_by: "the system library search path".into(),
    });
    Ok(candidates)
}

/// The folder holding this library (audiotext0.so), found with dladdr on one of our functions.
pub fn extension_dir() -> Option<PathBuf> {
    extension_path().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The path of this library as the dynamic linker loaded it.
pub fn extension_path() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let address = extension_path as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills `info`; dli_fname points into the
    // linker's own tables and stays valid while the library is loaded (we link with nodelete).
    let found = unsafe { libc::dladdr(address, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
    Some(path.canonicalize().unwrap_or(path))
}

fn load(candidates: &[Candidate]) -> Result<&'static Runtime> {
    let mut tried = Vec::new();
    for candidate in candidates {
        match probe(&candidate.path) {
            Ok(version) => {
                let environment = ort::init_from(&candidate.path)
                    .map_err(|e| {
                        Error::Runtime(format!(
                            "cannot load ONNX Runtime from {}: {e}",
                            candidate.path.display()
                        ))
                    })?
                    .with_name("audiotext")
                    .with_telemetry(false)
                    .build()?;
                let available_providers = available_providers();
                let runtime = Runtime {
                    environment,
                    path: candidate.path.clone(),
                    found_by: candidate.found_by.clone(),
                    version,
                    available_providers,
                };
                // One runtime per process, alive until exit (the library is never unloaded).
                return Ok(Box::leak(Box::new(runtime)));
            }
            Err(reason) => tried.push(format!(
                "{} ({}): {reason}",
                candidate.path.display(),
                candidate.found_by
            )),
        }
    }
    Err(Error::Runtime(format!(
        "cannot load the ONNX Runtime library; tried {}. Fix: put {DYLIB_NAME} (ONNX Runtime >= 1.22, e.g. from the `onnxruntime` wheel's capi/ folder) next to audiotext0.so, or set AUDIOTEXT_ORT_DYLIB=/path/to/{DYLIB_NAME}, or run SELECT audiotext_runtime('/path/to/{DYLIB_NAME}')",
        tried.join("; ")
    )))
}

/// Opens the library once to check that it is ONNX Runtime and read its version, so that a
/// wrong file gives a clear message instead of a failure deep inside `ort`.
fn probe(path: &Path) -> std::result::Result<String, String> {
    if path.is_absolute() && !path.exists() {
        return Err("no such file".into());
    }
    // A name with a slash is a path: dlopen would block on a FIFO or map a device, so only a
    // regular file is handed to it. A bare name is searched for by the dynamic linker.
    if path.components().count() > 1 {
        crate::regular_file::open(path)?;
    }
    // SAFETY: loading ONNX Runtime runs only its static initialisers.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    let get_api_base: libloading::Symbol<GetApiBase> =
        unsafe { library.get(b"OrtGetApiBase\0") }
            .map_err(|_| "not an ONNX Runtime library (no OrtGetApiBase symbol)".to_string())?;
    let base = unsafe { get_api_base() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".into());
    }
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) }
        .to_string_lossy()
        .into_owned();
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < ort::MINOR_VERSION {
        return Err(format!(
            "version {version} is too old; this build needs ONNX Runtime >= 1.{}",
            ort::MINOR_VERSION
        ));
    }
    // Keep it loaded: ort opens the same file again and the dynamic linker shares the handle.
    std::mem::forget(library);
    Ok(version)
}

fn available_providers() -> Vec<String> {
    let mut providers = Vec::new();
    if ep::CUDA::is_available().unwrap_or(false) {
        providers.push(CUDA_PROVIDER.to_string());
    }
    providers.push(CPU_PROVIDER.to_string());
    providers
}

impl Runtime {
    /// Creates a session for an ONNX file, on CUDA when possible. CUDA registration failures
    /// are caught and recorded rather than silently falling back.
    pub fn session(&self, onnx_path: &Path) -> Result<(Session, SessionPlacement)> {
        let preference = std::env::var(PROVIDER_ENV_VAR)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let want_cuda = preference != "cpu";
        let cuda_compiled = self.available_providers.iter().any(|p| p == CUDA_PROVIDER);
        let mut builder = Session::builder(&self.environment)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort::Error::from)?;
        if let Some(threads) = intra_op_threads()? {
            builder = builder
                .with_intra_threads(threads)
                .map_err(ort::Error::from)?;
        }
        let mut placement = SessionPlacement {
            provider: CPU_PROVIDER,
            cuda_note: None,
        };
        if !want_cuda {
            placement.cuda_note = Some(format!("disabled by {PROVIDER_ENV_VAR}=cpu"));
        } else if !cuda_compiled {
            placement.cuda_note = Some("this ONNX Runtime build has no CUDA provider (install with AUDIOTEXT_CUDA=1 for onnxruntime-gpu)".into());
        } else {
            match ep::CUDA::default()
                .build()
                .error_on_failure()
                .register(&mut builder)
            {
                Ok(()) => placement.provider = CUDA_PROVIDER,
                Err(e) => {
                    placement.cuda_note = Some(format!("CUDA provider failed to register: {e}"))
                }
            }
        }
        if preference == "cuda" && placement.provider != CUDA_PROVIDER {
            return Err(Error::Runtime(format!(
                "{PROVIDER_ENV_VAR}=cuda but CUDA is unavailable: {}",
                placement.cuda_note.clone().unwrap_or_default()
            )));
        }
        let session = builder.commit_from_file(onnx_path).map_err(|e| {
            Error::Bundle(format!(
                "onnx runtime cannot load {}: {e}; re-export the bundle",
                onnx_path.display()
            ))
        })?;
        Ok((session, placement))
    }
}

/// Reads the `[batch, embedding_dim]` float output named `output` of an encoder run, one
/// embedding per row; a missing output or another shape is a bundle error naming `onnx_file`.
pub fn embeddings_output(
    outputs: &ort::session::SessionOutputs<'_>,
    onnx_file: &str,
    output: &str,
    batch: usize,
    embedding_dim: usize,
) -> Result<Vec<Vec<f32>>> {
    let value = outputs.get(output).ok_or_else(|| {
        Error::Bundle(format!(
            "{onnx_file} has no output named '{output}'; re-export the bundle"
        ))
    })?;
    let (shape, data) = value.try_extract_tensor::<f32>()?;
    if shape.len() != 2 || shape[0] as usize != batch || shape[1] as usize != embedding_dim {
        return Err(Error::Bundle(format!(
            "{onnx_file} returned shape {:?}, while the manifest promises [{batch}, {embedding_dim}]; re-export the bundle",
            shape.to_vec()
        )));
    }
    Ok(data.chunks(embedding_dim).map(<[f32]>::to_vec).collect())
}
