//! The arguments of `CREATE VIRTUAL TABLE t USING audiotext_index(...)`, in vec0's words:
//!
//! ```sql
//! CREATE VIRTUAL TABLE clip_index USING audiotext_index(
//!     embedding float[384] distance_metric=cosine,   -- the vector column (cosine is the only metric)
//!     model=default,                                 -- embeds TEXT queries (MATCH 'dog barking')
//!     quantizer=int8,                                -- int8 | binary: the first pass's codes
//!     rescore=200,                                   -- candidates rescored exactly in float32
//!     library text partition key,                    -- a filter that picks whole chunks
//!     duration float, licence text, looped boolean,  -- metadata: filters inside the search
//!     +path text                                     -- auxiliary: returned, never filtered
//! );
//! ```

use audiotext_core::index::Quantizer;

/// Largest vector the index takes: the same bound as a model's `embedding_dim`.
pub const MAX_DIMENSIONS: usize = 65536;
/// Most candidates a query may rescore: each costs a read of its float32 vector.
pub const MAX_RESCORE: usize = 100_000;

/// vec0's limits.
pub const MAX_METADATA: usize = 16;
pub const MAX_PARTITION_KEYS: usize = 4;
pub const MAX_AUXILIARY: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub struct IndexOptions {
    /// The vector column's name, as declared.
    pub column: String,
    pub dimensions: usize,
    pub model: String,
    pub quantizer: Quantizer,
    pub rescore: usize,
    /// The other columns, in declaration order (after the vector column in the table).
    pub columns: Vec<Column>,
}

/// A column besides the vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
    pub role: ColumnRole,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColumnKind {
    Integer,
    Float,
    Text,
    Boolean,
    /// Auxiliary columns only.
    Blob,
}

impl ColumnKind {
    pub fn sql(self) -> &'static str {
        match self {
            ColumnKind::Integer | ColumnKind::Boolean => "INTEGER",
            ColumnKind::Float => "REAL",
            ColumnKind::Text => "TEXT",
            ColumnKind::Blob => "BLOB",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnKind::Integer => "integer",
            ColumnKind::Float => "float",
            ColumnKind::Text => "text",
            ColumnKind::Boolean => "boolean",
            ColumnKind::Blob => "blob",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColumnRole {
    /// Filters a KNN query inside the search.
    Metadata,
    /// A metadata column whose value also picks the chunk a row is stored in, so a filter on it
    /// skips whole chunks.
    PartitionKey,
    /// `+name`: stored and returned, never filtered.
    Auxiliary,
}

impl Column {
    pub fn filters(&self) -> bool {
        self.role != ColumnRole::Auxiliary
    }
}

const USAGE: &str = "declare it as audiotext_index(embedding float[384]) with optional model=NAME, quantizer=int8|binary, rescore=N, metadata columns (`library text`, `duration float`, `count integer`, `looped boolean`, `library text partition key`) and auxiliary ones (`+path text`)";

impl IndexOptions {
    pub fn parse(args: &[&str]) -> Result<IndexOptions, String> {
        let mut column = None;
        let mut model = None;
        let mut quantizer = None;
        let mut rescore = None;
        let mut columns = Vec::new();
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
                None if is_vector_column(arg) => {
                    set(&mut column, "the vector column", vector_column(arg)?)?
                }
                None => columns.push(other_column(arg)?),
            }
        }
        let (column, dimensions) =
            column.ok_or_else(|| format!("no vector column was declared; {USAGE}"))?;
        check_columns(&column, &columns)?;
        let quantizer = quantizer.unwrap_or(Quantizer::Int8);
        Ok(IndexOptions {
            column,
            dimensions,
            model: model.unwrap_or_else(|| "default".into()),
            quantizer,
            rescore: rescore.unwrap_or_else(|| quantizer.default_rescore()),
            columns,
        })
    }
}

/// Whether `arg` declares the vector (its type is `float[N]` or `f32[N]`).
fn is_vector_column(arg: &str) -> bool {
    let kind = arg.split_whitespace().nth(1).unwrap_or_default();
    let lower = kind.to_ascii_lowercase();
    lower.contains('[') || lower.starts_with("float[") || lower.starts_with("f32[")
}

/// `name type [partition key]` or `+name type`.
fn other_column(arg: &str) -> Result<Column, String> {
    let (auxiliary, rest) = match arg.strip_prefix('+') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, arg),
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (Some(name), Some(kind)) = (words.first(), words.get(1)) else {
        return Err(format!("'{arg}' is not a column declaration; {USAGE}"));
    };
    let name = column_name(unquote(name))?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "integer" | "int" => ColumnKind::Integer,
        "float" | "real" | "double" => ColumnKind::Float,
        "text" => ColumnKind::Text,
        "boolean" | "bool" => ColumnKind::Boolean,
        "blob" if auxiliary => ColumnKind::Blob,
        other => {
            let allowed = if auxiliary {
                "integer, float, text, boolean or blob"
            } else {
                "integer, float, text or boolean"
            };
            return Err(format!("column {name} has type '{other}'; use {allowed}"));
        }
    };
    let tail: Vec<String> = words[2..].iter().map(|w| w.to_ascii_lowercase()).collect();
    let role = match (auxiliary, tail.iter().map(String::as_str).collect::<Vec<_>>().as_slice()) {
        (true, []) => ColumnRole::Auxiliary,
        (false, []) => ColumnRole::Metadata,
        (false, ["partition", "key"]) => match kind {
            ColumnKind::Integer | ColumnKind::Text => ColumnRole::PartitionKey,
            _ => return Err(format!("partition key {name} must be integer or text")),
        },
        (true, ["partition", "key"]) => {
            return Err(format!("+{name} is auxiliary (stored, never filtered) and cannot be a partition key; drop the + or the partition key"))
        }
        _ => return Err(format!("'{}' after column {name}'s type is not understood; {USAGE}", words[2..].join(" "))),
    };
    Ok(Column { name, kind, role })
}

/// Letters, digits and _, and not a name the index uses itself.
fn column_name(name: &str) -> Result<String, String> {
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
    Ok(name.to_string())
}

/// Names are unique (as SQLite compares them, ignoring case); vec0's limits hold.
fn check_columns(vector: &str, columns: &[Column]) -> Result<(), String> {
    let mut seen = vec![vector.to_ascii_lowercase()];
    for column in columns {
        let lower = column.name.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Err(format!("column {} is declared twice", column.name));
        }
        seen.push(lower);
    }
    let count = |role| columns.iter().filter(|c| c.role == role).count();
    for (role, limit, what) in [
        (ColumnRole::Metadata, MAX_METADATA, "metadata columns"),
        (
            ColumnRole::PartitionKey,
            MAX_PARTITION_KEYS,
            "partition keys",
        ),
        (ColumnRole::Auxiliary, MAX_AUXILIARY, "auxiliary columns"),
    ] {
        if count(role) > limit {
            return Err(format!(
                "{} {what} are declared; at most {limit} are allowed",
                count(role)
            ));
        }
    }
    Ok(())
}

impl IndexOptions {
    /// The declared table's `distance` column (`k` follows it).
    pub fn distance_column(&self) -> std::os::raw::c_int {
        1 + self.columns.len() as std::os::raw::c_int
    }

    /// Which of `columns` a column number of the declared table is, if it is one of them.
    pub fn declared_column(&self, column: std::os::raw::c_int) -> Option<usize> {
        let i = usize::try_from(column - 1).ok()?;
        (i < self.columns.len()).then_some(i)
    }

    /// The number among the filterable columns (metadata and partition keys) of `columns[c]`.
    pub fn filterable_index(&self, c: usize) -> usize {
        self.columns[..c].iter().filter(|c| c.filters()).count()
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
    let name = column_name(unquote(name))?;
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
    Ok((name, dimensions))
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
        let o = IndexOptions::parse(&[
            "embedding float[4]",
            "library text partition key",
            "duration float",
            "looped bool",
            "+path text",
        ])
        .unwrap();
        let roles: Vec<(&str, ColumnKind, ColumnRole)> = o
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind, c.role))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("library", ColumnKind::Text, ColumnRole::PartitionKey),
                ("duration", ColumnKind::Float, ColumnRole::Metadata),
                ("looped", ColumnKind::Boolean, ColumnRole::Metadata),
                ("path", ColumnKind::Text, ColumnRole::Auxiliary),
            ]
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
            (
                vec!["embedding float[4]", "library varchar"],
                "integer, float, text or boolean",
            ),
            (
                vec!["embedding float[4]", "d float partition key"],
                "integer or text",
            ),
            (
                vec!["embedding float[4]", "+p text partition key"],
                "auxiliary",
            ),
            (
                vec!["embedding float[4]", "a text", "A integer"],
                "declared twice",
            ),
            (
                vec!["embedding float[4]", "embedding text"],
                "declared twice",
            ),
            (
                vec!["embedding float[4]", "a text primary key"],
                "not understood",
            ),
        ] {
            let error = IndexOptions::parse(&args).unwrap_err();
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }
}
