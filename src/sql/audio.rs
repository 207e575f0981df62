//! `audio_embed([model,] path_or_blob)`, `audio_text_score([model,] audio_embedding, text)`,
//! `audio_info(path_or_blob)`.

use std::path::Path;

use rusqlite::functions::Context;
use rusqlite::types::ValueRef;

use super::interrupt::{InterruptProbe, INTERRUPTED};
use super::{args, Env, Output};
use crate::audio::{probe, AudioSource};
use crate::Error;

/// The audio argument: TEXT is a file path, BLOB is the encoded file's bytes.
fn audio_source<'a>(ctx: &'a Context<'_>, index: usize) -> Result<Option<AudioSource<'a>>, String> {
    match ctx.get_raw(index) {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => {
            let path = std::str::from_utf8(bytes).map_err(|_| args::not_utf8(index, "path"))?;
            if path.is_empty() {
                return Err(format!(
                    "argument {} (path) is empty: pass the path of an audio file, or its bytes as a BLOB",
                    index + 1
                ));
            }
            if let Some(at) = path.find('\0') {
                return Err(format!(
                    "argument {} (path) contains a NUL character at byte {at}, which no file name can hold: check how the path was built",
                    index + 1
                ));
            }
            Ok(Some(AudioSource::Path(Path::new(path))))
        }
        ValueRef::Blob(bytes) => Ok(Some(AudioSource::Bytes(bytes))),
        other => Err(format!(
            "argument {} (audio) must be TEXT (a file path) or BLOB (the file's bytes), got {}",
            index + 1,
            args::type_name(other)
        )),
    }
}

pub fn embed(env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let (model, audio_index) = args::model_name(ctx, 1)?;
    let Some(source) = audio_source(ctx, audio_index)? else {
        return Ok(Output::Null);
    };
    let encoder = env
        .registry
        .get(model)?
        .audio_encoder()
        .map_err(|e| e.to_string())?;
    // SAFETY: the connection running this call, probed only during it.
    let probe = unsafe { InterruptProbe::for_function(ctx) };
    match encoder.embed_cancellable(&source, &|| probe.interrupted()) {
        Ok(embedded) => Ok(Output::Vector(embedded.embedding)),
        Err(Error::Interrupted {
            seconds_done,
            seconds_total,
        }) => Err(format!(
            "{INTERRUPTED} while embedding {} after {seconds_done:.0} of {} s of audio; the statement was stopped as usual",
            match source {
                AudioSource::Path(path) => format!("'{}'", path.display()),
                AudioSource::Bytes(bytes) => format!("an audio blob of {} bytes", bytes.len()),
            },
            seconds_total.map_or("?".to_string(), |t| format!("{t:.0}"))
        )),
        Err(e) => Err(e.to_string()),
    }
}

pub fn info(_env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let Some(source) = audio_source(ctx, 0)? else {
        return Ok(Output::Null);
    };
    let info = probe(&source).map_err(|e| e.to_string())?;
    Ok(Output::Text(
        serde_json::to_string(&info).map_err(|e| e.to_string())?,
    ))
}

/// Cosine similarity of an audio embedding and a text (embedded with the same model, once per
/// statement when constant) or a text embedding BLOB.
pub fn text_score(env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let (model, audio_index) = args::model_name(ctx, 2)?;
    let text_index = audio_index + 1;
    let audio = match ctx.get_raw(audio_index) {
        ValueRef::Null => return Ok(Output::Null),
        ValueRef::Blob(bytes) => bytes,
        other => {
            return Err(format!(
                "argument {} (audio_embedding) must be a BLOB from audio_embed, got {}",
                audio_index + 1,
                args::type_name(other)
            ))
        }
    };
    let query = match ctx.get_raw(text_index) {
        ValueRef::Null => return Ok(Output::Null),
        ValueRef::Blob(bytes) => args::vector(bytes, text_index, "text_embedding")?,
        ValueRef::Text(_) => match ctx.get_aux::<(String, Vec<f32>)>(text_index as i32) {
            Ok(Some(cached)) if cached.0 == model => cached.1.clone(),
            _ => {
                let text = args::text(ctx, text_index, "text")?.unwrap_or_default();
                let encoder = env
                    .registry
                    .get(model)?
                    .text_encoder()
                    .map_err(|e| e.to_string())?;
                let vector = encoder
                    .embed(&[text])
                    .map_err(|e| e.to_string())?
                    .pop()
                    .unwrap_or_default();
                let _ = ctx.set_aux(text_index as i32, (model.to_string(), vector.clone()));
                vector
            }
        },
        other => {
            return Err(format!(
                "argument {} (text) must be TEXT or a text_embed BLOB, got {}",
                text_index + 1,
                args::type_name(other)
            ))
        }
    };
    let audio = args::vector(audio, audio_index, "audio_embedding")?;
    // Each vector is held to the model's size, so the message blames the one that is off.
    let dim = env.registry.get(model)?.manifest.embedding_dim;
    for (vector, index, role) in [
        (&audio, audio_index, "audio_embedding"),
        (&query, text_index, "text_embedding"),
    ] {
        if vector.len() != dim {
            return Err(format!(
                "argument {} ({role}) has {} dimensions, while model '{model}' makes {dim}; pass a vector from audio_embed or text_embed with that model (or name the model that made it as the first argument)",
                index + 1,
                vector.len()
            ));
        }
    }
    Ok(Output::Real(f64::from(cosine(&audio, &query))))
}

/// Cosine similarity; 0 when either vector is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// `audiotext_finite(vector)`: the vector itself if every element is finite, else an error
/// naming the first that is not. vec0 stores NaN without complaint (and ranks it first), so
/// vectors from outside the extension go through this on their way in.
pub fn finite_vector(_env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    match ctx.get_raw(0) {
        ValueRef::Null => Ok(Output::Null),
        ValueRef::Blob(bytes) => Ok(Output::Vector(args::vector(bytes, 0, "vector")?)),
        other => Err(format!(
            "argument 1 (vector) must be a float32 vector BLOB, got {}; JSON text can be converted with vec_f32('[...]')",
            args::type_name(other)
        )),
    }
}
