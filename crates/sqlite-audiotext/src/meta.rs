//! `audiotext_version()`, `audiotext_debug()`, `audiotext_runtime(path)`.

use std::fmt::Write;
use std::path::Path;

use rusqlite::functions::Context;

use super::{args, vec::SQLITE_VEC_VERSION, Env, Output};
use audiotext_core::audio::TruncatedAudio;
use audiotext_core::model::runtime::{self, Runtime};

pub fn version(_env: &Env, _ctx: &Context<'_>) -> Result<Output, String> {
    Ok(Output::Text(format!("v{}", env!("CARGO_PKG_VERSION"))))
}

/// Build, runtime and model information, one `key: value` per line. Never fails: what cannot
/// be loaded is reported with the reason.
pub fn debug(env: &Env, _ctx: &Context<'_>) -> Result<Output, String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "audiotext: v{} ({} build)",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let _ = writeln!(out, "sqlite-vec: {SQLITE_VEC_VERSION}");
    if let Some(path) = runtime::extension_path() {
        let _ = writeln!(out, "extension: {}", path.display());
    }
    match runtime::runtime() {
        Ok(rt) => describe_runtime(&mut out, rt),
        Err(e) => {
            let _ = writeln!(out, "onnxruntime: not loaded: {e}");
        }
    }
    let models = env.registry.list();
    if models.is_empty() {
        let _ = writeln!(out, "models: none registered");
    }
    for (name, path, bundle) in models {
        let _ = write!(
            out,
            "model {name}: {} ({}, dim {})",
            path.display(),
            bundle.manifest.name,
            bundle.manifest.embedding_dim
        );
        match bundle.loaded_text_encoder() {
            Some(text) => {
                let embedded = text
                    .texts_embedded
                    .load(std::sync::atomic::Ordering::Relaxed);
                let _ = write!(
                    out,
                    "; text on {} ({embedded} texts embedded)",
                    text.placement.provider
                );
                if let Some(note) = &text.placement.cuda_note {
                    let _ = write!(out, " (cuda: {note})");
                }
            }
            None if bundle.manifest.text.is_some() => {
                let _ = write!(out, "; text not loaded yet");
            }
            None => {}
        }
        match bundle.loaded_audio_encoder() {
            Some(audio) => {
                let _ = write!(out, "; audio on {}", audio.placement.provider);
                if let Some(note) = &audio.placement.cuda_note {
                    let _ = write!(out, " (cuda: {note})");
                }
            }
            None if bundle.manifest.audio.is_some() => {
                let _ = write!(out, "; audio not loaded yet");
            }
            None => {}
        }
        out.push('\n');
    }
    Ok(Output::Text(out.trim_end().to_string()))
}

fn describe_runtime(out: &mut String, rt: &Runtime) {
    let _ = writeln!(
        out,
        "onnxruntime: {} from {} (found {})",
        rt.version,
        rt.path.display(),
        rt.found_by
    );
    let _ = writeln!(
        out,
        "execution providers available: {}",
        rt.available_providers.join(", ")
    );
}

/// Loads ONNX Runtime from an explicit path; returns the version loaded.
pub fn runtime(_env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let Some(path) = args::text(ctx, 0, "path to libonnxruntime.so")? else {
        return Err("argument 1 (path to libonnxruntime.so) must not be NULL".into());
    };
    if path.is_empty() {
        // dlopen("") would hand back the host program itself.
        return Err(
            "argument 1 (path to libonnxruntime.so) is empty: pass the library's path".into(),
        );
    }
    let rt = runtime::runtime_from(Path::new(path)).map_err(|e| e.to_string())?;
    Ok(Output::Text(format!(
        "onnxruntime {} from {}",
        rt.version,
        rt.path.display()
    )))
}

/// Test hook (feature `fault-injection`): `audiotext_fault('panic')` panics inside a function
/// body; `audiotext_fault('audiotext_index.best_index')` (any module, any callback of
/// `vtab::FAULT_POINTS`) makes the next call of that virtual-table callback panic. Tests show
/// each panic becomes an SQL error and the connection survives.
#[cfg(feature = "fault-injection")]
pub fn fault(_env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let kind = args::text(ctx, 0, "fault kind")?;
    match kind.and_then(|k| k.split_once('.')) {
        _ if kind == Some("panic") => panic!("fault injected by audiotext_fault('panic')"),
        Some((_, method)) if super::vtab::FAULT_POINTS.contains(&method) => {
            super::vtab::arm_fault(kind.unwrap_or_default());
            Ok(Output::Null)
        }
        _ => Err(format!(
            "argument 1 (fault kind) must be 'panic' or 'module.callback' (callbacks: {}), got {}",
            super::vtab::FAULT_POINTS.join(", "),
            kind.unwrap_or("NULL")
        )),
    }
}

/// The connection's settings, by name, and what each takes. One today.
const OPTIONS: &[(&str, &str)] = &[(
    "truncated_audio",
    "'error' (the default: a file that declares more audio than it holds is an error) or 'partial' (use the audio before the cut)",
)];

/// `audiotext_option(name)` reads a setting of this connection; `audiotext_option(name, value)`
/// sets it and returns the value it had.
pub fn option(env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let known = || {
        OPTIONS
            .iter()
            .map(|(n, what)| format!("'{n}': {what}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let name = args::text(ctx, 0, "the option's name")?.ok_or_else(|| {
        format!(
            "the option's name (argument 1) is NULL; options: {}",
            known()
        )
    })?;
    let mut options = env.registry.decode_options();
    let before = options.truncated.name();
    match name {
        "truncated_audio" => {
            if ctx.len() == 2 {
                let value = args::text(ctx, 1, "the option's value")?.unwrap_or("NULL");
                options.truncated = TruncatedAudio::parse(value).ok_or_else(|| {
                    format!(
                        "'{value}' is not a value of 'truncated_audio': use {}",
                        OPTIONS[0].1
                    )
                })?;
                env.registry.set_decode_options(options);
            }
        }
        other => return Err(format!("no option named '{other}'; options: {}", known())),
    }
    Ok(Output::Text(before.to_string()))
}
