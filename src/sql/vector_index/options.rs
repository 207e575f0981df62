//! The arguments of `CREATE VIRTUAL TABLE t USING audiotext_index(...)`, in vec0's words:
//!
//! ```sql
//! CREATE VIRTUAL TABLE clip_index USING audiotext_index(
//!     embedding float[384] distance_metric=cosine,   -- the vector column (cosine is the only metric)
//!     model=default,                                 -- embeds TEXT queries (MATCH 'dog barking')
//!     quantizer=int8,                                -- int8 | binary: the first pass's codes
//!     rescore=200                                    -- candidates rescored exactly in float32
//! );
//! ```

use crate::index::Quantizer;

/// Largest vector the index takes: the same bound as a model's `embedding_dim`.
pub const MAX_DIMENSIONS: usize = 65536;
/// Most candidates a query may rescore: each costs a read of its float32 vector.
pub const MAX_RESCORE: usize = 100_000;

#[derive(Clone, Debug, PartialEq)]
pub struct IndexOptions {
    /// The vector column's name, as declared.
    pub column: String,
    pub dimensions: usize,
    pub model: String,
    pub quantizer: Quantizer,
    pub rescore: usize,
}

const USAGE: &str = "declare it as audiotext_index(embedding float[384]) with optional model=NAME, quantizer=int8|binary, rescore=N";

impl IndexOptions {
    pub fn parse(args: &[&str]) -> Result<IndexOptions, String> {
        let mut column = None;
        let mut model = None;
        let mut quantizer = None;
        let mut rescore = None;
        for arg in args.iter().map(|a| a.trim()) {
            match option(arg) {
                Some((key, value)) => {
                    match key.to_ascii_lowercase().as_str() {
                        "model" => set(&mut model, key, unquote(value).to_string())?,
                        "quantizer" => {
                            let q = Quantizer::parse(unquote(value)).ok_or_else(|| {
                            format!("quantizer={value} is not known; use int8 (the default) or binary")
                        })?;
                            set(&mut quantizer, key, q)?
                        }
                        "rescore" => {
                            let n: usize = unquote(value).parse().ok().filter(|n| (1..=MAX_RESCORE).contains(n)).ok_or_else(|| {
                            format!("rescore={value} must be a whole number from 1 to {MAX_RESCORE}: how many candidates each query rescores exactly")
                        })?;
                            set(&mut rescore, key, n)?
                        }
                        _ => return Err(format!("unknown option '{key}'; {USAGE}")),
                    }
                }
                None => set(&mut column, "column", vector_column(arg)?)?,
            }
        }
        let (column, dimensions) =
            column.ok_or_else(|| format!("no vector column was declared; {USAGE}"))?;
        let quantizer = quantizer.unwrap_or(Quantizer::Int8);
        Ok(IndexOptions {
            column,
            dimensions,
            model: model.unwrap_or_else(|| "default".into()),
            quantizer,
            rescore: rescore.unwrap_or_else(|| quantizer.default_rescore()),
        })
    }
}

/// `key=value`, unless the `=` belongs to a column declaration's `distance_metric=`.
fn option(arg: &str) -> Option<(&str, &str)> {
    let (key, value) = arg.split_once('=')?;
    let key = key.trim();
    (!key.contains(char::is_whitespace)).then_some((key, value.trim()))
}

fn set<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{key} is given twice; {USAGE}"));
    }
    Ok(())
}

fn unquote(value: &str) -> &str {
    for quote in ['\'', '"'] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

/// `embedding float[384]`, optionally followed by `distance_metric=cosine`.
fn vector_column(arg: &str) -> Result<(String, usize), String> {
    let mut words = arg.split_whitespace();
    let (Some(name), Some(kind)) = (words.next(), words.next()) else {
        return Err(format!("'{arg}' is not a vector column; {USAGE}"));
    };
    let name = unquote(name);
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(format!(
            "column name '{name}' must be letters, digits and _; {USAGE}"
        ));
    }
    if ["rowid", "distance", "k"]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(format!("column name '{name}' is taken by the index itself (rowid, distance, k); choose another"));
    }
    let lower = kind.to_ascii_lowercase();
    let dimensions = lower
        .strip_prefix("float[")
        .or_else(|| lower.strip_prefix("f32["))
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=MAX_DIMENSIONS).contains(n))
        .ok_or_else(|| {
            format!("column type '{kind}' must be float[N] with N from 1 to {MAX_DIMENSIONS} (float32 vectors, as audio_embed returns); {USAGE}")
        })?;
    for extra in words {
        match extra.split_once('=') {
            Some((key, metric)) if key.eq_ignore_ascii_case("distance_metric") => {
                if !unquote(metric).eq_ignore_ascii_case("cosine") {
                    return Err(format!("distance_metric={metric} is not supported: audiotext_index ranks by cosine distance, as the embeddings are compared; drop the option or write distance_metric=cosine"));
                }
            }
            _ => {
                return Err(format!(
                    "'{extra}' after the column type is not understood; {USAGE}"
                ))
            }
        }
    }
    Ok((name.to_string(), dimensions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vec0_style_declarations() {
        let o = IndexOptions::parse(&["embedding float[384]"]).unwrap();
        assert_eq!(
            (
                o.column.as_str(),
                o.dimensions,
                o.model.as_str(),
                o.quantizer,
                o.rescore
            ),
            ("embedding", 384, "default", Quantizer::Int8, 200)
        );
        let o = IndexOptions::parse(&[
            " v F32[8] distance_metric=cosine",
            "model='clap'",
            "quantizer=binary",
            "rescore=50",
        ])
        .unwrap();
        assert_eq!(
            (
                o.column.as_str(),
                o.dimensions,
                o.model.as_str(),
                o.quantizer,
                o.rescore
            ),
            ("v", 8, "clap", Quantizer::Binary, 50)
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for (args, needle) in [
            (vec![], "no vector column"),
            (vec!["embedding float[0]"], "float[N]"),
            (vec!["embedding int8[4]"], "float[N]"),
            (vec!["embedding float[4] distance_metric=l2"], "cosine"),
            (vec!["embedding float[4]", "quantizer=pq"], "int8"),
            (vec!["embedding float[4]", "rescore=0"], "rescore"),
            (vec!["embedding float[4]", "colour=red"], "unknown option"),
            (vec!["embedding float[4]", "e2 float[4]"], "twice"),
            (vec!["distance float[4]"], "taken"),
        ] {
            let error = IndexOptions::parse(&args).unwrap_err();
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }
}
