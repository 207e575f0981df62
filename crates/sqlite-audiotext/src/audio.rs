//! `audio_embed([model,] path_or_blob)`, `audio_text_score([model,] audio_embedding, text)`,
//! `audio_info(path_or_blob)`.

use std::path::Path;

use rusqlite::functions::Context;
use rusqlite::types::ValueRef;

use super::interrupt::{InterruptProbe, INTERRUPTED};
use super::{args, Env, Output};
use audiotext_core::audio::{probe, AudioSource};
use audiotext_core::index::kernels::{dot_and_norm_le_bytes, dot_f32};
use audiotext_core::Error;

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
    let decode = env.registry.decode_options();
    match encoder.embed_cancellable(&source, decode, &|| probe.interrupted()) {
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

/// The query side of `audio_text_score`, prepared once per statement when the argument is
/// constant (SQLite keeps it as the argument's auxiliary data): the vector and its norm.
struct ScoreQuery {
    model: String,
    vector: Vec<f32>,
    norm: f32,
}

/// Cosine similarity of an audio embedding and a text (embedded with the same model) or a text
/// embedding BLOB. The per-row work is one pass over the row's BLOB, read in place: the query
/// is parsed, embedded and checked once per statement, and a row is parsed in full only to say
/// what is wrong with it.
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
    let query = match ctx.get_aux::<ScoreQuery>(text_index as i32) {
        Ok(Some(query)) if query.model == model => query,
        _ => match score_query(env, ctx, model, text_index)? {
            None => return Ok(Output::Null),
            Some(query) => ctx
                .set_aux(text_index as i32, query)
                .map_err(|e| e.to_string())?,
        },
    };
    if audio.len() == query.vector.len() * 4 {
        let (dot, squares) = dot_and_norm_le_bytes(audio, &query.vector);
        let score = if squares == 0.0 || query.norm == 0.0 {
            0.0
        } else {
            dot / (squares.sqrt() * query.norm)
        };
        if score.is_finite() && squares.is_finite() {
            return Ok(Output::Real(f64::from(score)));
        }
    }
    // Something is off with this row: parse it in full to say what.
    let audio = args::vector(audio, audio_index, "audio_embedding")?;
    if audio.len() != query.vector.len() {
        return Err(format!(
            "argument {} (audio_embedding) has {} dimensions, while model '{model}' makes {}; pass a vector from audio_embed with that model (or name the model that made it as the first argument)",
            audio_index + 1,
            audio.len(),
            query.vector.len()
        ));
    }
    Ok(Output::Real(f64::from(cosine(&audio, &query.vector))))
}

/// Parses or embeds the query argument and holds it to the model's size; `None` for NULL.
fn score_query(
    env: &Env,
    ctx: &Context<'_>,
    model: &str,
    text_index: usize,
) -> Result<Option<ScoreQuery>, String> {
    let bundle = env.registry.get(model)?;
    let vector = match ctx.get_raw(text_index) {
        ValueRef::Null => return Ok(None),
        ValueRef::Blob(bytes) => args::vector(bytes, text_index, "text_embedding")?,
        ValueRef::Text(_) => {
            let text = args::text(ctx, text_index, "text")?.unwrap_or_default();
            let encoder = bundle.text_encoder().map_err(|e| e.to_string())?;
            encoder
                .embed(&[text])
                .map_err(|e| e.to_string())?
                .pop()
                .unwrap_or_default()
        }
        other => {
            return Err(format!(
                "argument {} (text) must be TEXT or a text_embed BLOB, got {}",
                text_index + 1,
                args::type_name(other)
            ))
        }
    };
    let dim = bundle.manifest.embedding_dim;
    if vector.len() != dim {
        return Err(format!(
            "argument {} (text_embedding) has {} dimensions, while model '{model}' makes {dim}; pass a vector from text_embed with that model (or name the model that made it as the first argument)",
            text_index + 1,
            vector.len()
        ));
    }
    let norm = f64::from(dot_f32(&vector, &vector)).sqrt() as f32;
    Ok(Some(ScoreQuery {
        model: model.to_string(),
        vector,
        norm,
    }))
}

/// Cosine similarity; 0 when either vector is all zeros. Sums in f64, so large finite values
/// do not overflow.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())) as f32
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
