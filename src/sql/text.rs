//! `text_embed([model,] text)`.

use rusqlite::functions::Context;

use super::{args, Env, Output};

/// Embeds one text. A constant text (a query) is embedded once per statement: SQLite keeps the
/// vector as auxiliary data on that argument.
pub fn embed(env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let (model, text_index) = args::model_name(ctx, 1)?;
    let Some(text) = args::text(ctx, text_index, "text")? else {
        return Ok(Output::Null);
    };
    if let Ok(Some(cached)) = ctx.get_aux::<(String, Vec<f32>)>(text_index as i32) {
        if cached.0 == model {
            return Ok(Output::Vector(cached.1.clone()));
        }
    }
    let bundle = env.registry.get(model)?;
    let encoder = bundle.text_encoder().map_err(|e| e.to_string())?;
    let vector = encoder
        .embed(&[text])
        .map_err(|e| e.to_string())?
        .pop()
        .unwrap_or_default();
    let _ = ctx.set_aux(text_index as i32, (model.to_string(), vector.clone()));
    Ok(Output::Vector(vector))
}
