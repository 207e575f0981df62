//! `text_embed([model,] text)`, and `audiotext_fts_query(text)` for hybrid search with FTS5.

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

/// Most words a query keeps for FTS5.
const MAX_QUERY_WORDS: usize = 64;

/// `audiotext_fts_query('a dog barking!')` is `"a" OR "dog" OR "barking"`: free text as an FTS5
/// query that matches any of its words, each quoted so that no word is read as FTS5 syntax
/// (`AND`, `NEAR`, `-`, `*`, quotes). Text with no word gives `""`, which matches no row (FTS5
/// calls MATCH NULL a syntax error). NULL stays NULL. The word side of the README's hybrid
/// search; bm25 ranks the matches.
pub fn fts_query(_env: &Env, ctx: &Context<'_>) -> Result<Output, String> {
    let Some(text) = args::text(ctx, 0, "text")? else {
        return Ok(Output::Null);
    };
    Ok(Output::Text(
        fts_words(text).unwrap_or_else(|| "\"\"".into()),
    ))
}

/// The words of `text` (runs of letters and digits), quoted and joined with OR.
fn fts_words(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_QUERY_WORDS)
        .map(|w| format!("\"{w}\""))
        .collect();
    (!words.is_empty()).then(|| words.join(" OR "))
}

#[cfg(test)]
mod tests {
    use super::fts_words;

    #[test]
    fn free_text_becomes_quoted_words_joined_with_or() {
        assert_eq!(
            fts_words("a dog, barking!").as_deref(),
            Some("\"a\" OR \"dog\" OR \"barking\"")
        );
        assert_eq!(
            fts_words("NEAR(\"x\" -y*)").as_deref(),
            Some("\"NEAR\" OR \"x\" OR \"y\"")
        );
        assert_eq!(
            fts_words("Straße 12").as_deref(),
            Some("\"Straße\" OR \"12\"")
        );
        assert_eq!(fts_words(" ,;- "), None);
        assert_eq!(
            fts_words(&"w ".repeat(100)).map(|q| q.matches("OR").count()),
            Some(63)
        );
    }
}
