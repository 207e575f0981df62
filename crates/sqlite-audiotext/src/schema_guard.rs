//! File readers never run on behalf of a database's schema.
//!
//! A database file can come from anyone. Its schema holds SQL that SQLite runs for the person
//! who opens it: CHECK constraints, DEFAULTs, generated columns, index expressions, triggers and
//! views. `SQLITE_DIRECTONLY` is meant to keep a function out of all of them, but SQLite 3.40
//! does not apply it to CHECK constraints (a CHECK is resolved without the "from DDL" mark that
//! triggers and views get), and a function that is not deterministic is allowed in a CHECK. So
//! every function that opens a file named by its arguments (or loads a library) first reads
//! the schemas of the connection's databases, `temp` excepted, and refuses to run while any
//! schema object's SQL calls a file reader. `temp` objects can only be made by the connection's
//! own SQL, so they are the user's, not a stranger's.
//!
//! The scan tokenizes SQL as SQLite does (comments, the four quoting styles, case-insensitive
//! names), so neither `"AUDIO_INFO" /* */ (x)` nor a comment hides a call, and a column that
//! merely happens to be named `audio_info` is not one.

use rusqlite::Connection;

/// Functions that open files named in their arguments (or load a library): a call is the name
/// followed by `(`.
pub const FILE_READING_FUNCTIONS: &[&str] = &["audio_embed", "audio_info", "audiotext_runtime"];

/// Table-valued functions that open files: with hidden columns they can be used without
/// parentheses (`FROM audio_embed_files WHERE source = ...`), so any mention counts.
pub const FILE_READING_TABLES: &[&str] = &["audio_embed_files"];

/// Refuses when a schema object of a non-temp database can call a file reader. `function` is
/// the caller's name, for the message.
pub fn refuse_if_schema_calls_file_readers(db: &Connection, function: &str) -> Result<(), String> {
    let schemas: Vec<String> = db
        .prepare("SELECT name FROM pragma_database_list WHERE name <> 'temp'")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(|e| refusal_unchecked(function, &e))?;
    for schema in schemas {
        let query = format!(
            "SELECT type, name, sql FROM \"{}\".sqlite_schema WHERE sql IS NOT NULL",
            schema.replace('"', "\"\"")
        );
        let mut statement = db
            .prepare(&query)
            .map_err(|e| refusal_unchecked(function, &e))?;
        let mut rows = statement
            .query([])
            .map_err(|e| refusal_unchecked(function, &e))?;
        while let Some(row) = rows.next().map_err(|e| refusal_unchecked(function, &e))? {
            let sql: String = row.get(2).unwrap_or_default();
            if let Some(called) = file_reader_called_in(&sql) {
                let kind: String = row.get(0).unwrap_or_default();
                let name: String = row.get(1).unwrap_or_default();
                return Err(format!(
                    "refused: the {kind} '{name}' of database '{schema}' calls {called}() in its schema, so SQL stored in the database file could make this extension read files; file-reading functions do not run while such a schema is open. Fix: if you wrote that {kind}, drop it and call {called}() from your own statements (or from TEMP views and triggers); if the database came from someone else, open it without loading audiotext (see README, Threat model)"
                ));
            }
        }
    }
    Ok(())
}

fn refusal_unchecked(function: &str, e: &rusqlite::Error) -> String {
    format!(
        "refused: could not read the database schemas to check that no schema calls {function}() ({e}); retry when the database is readable"
    )
}

/// The first file reader that `sql` calls (or, for a table-valued one, names), if any.
pub fn file_reader_called_in(sql: &str) -> Option<&'static str> {
    let tokens = tokenize(sql);
    for (i, token) in tokens.iter().enumerate() {
        let Token::Name(name) = token else { continue };
        if let Some(table) = FILE_READING_TABLES
            .iter()
            .find(|t| t.eq_ignore_ascii_case(name))
        {
            return Some(table);
        }
        let called = matches!(tokens.get(i + 1), Some(Token::Punct('(')));
        if let Some(function) = FILE_READING_FUNCTIONS
            .iter()
            .find(|f| called && f.eq_ignore_ascii_case(name))
        {
            return Some(function);
        }
    }
    None
}

#[derive(Debug, PartialEq)]
enum Token {
    /// A bare or quoted identifier, or a string literal (SQLite accepts `'name'` where a name is
    /// expected in some places), unquoted.
    Name(String),
    Punct(char),
}

/// SQLite's lexical rules, as far as finding names is concerned: whitespace and both comment
/// styles separate tokens; `'...'`, `"..."`, `` `...` `` (doubled quote escapes) and `[...]`
/// quote; anything else that is not part of a name is punctuation.
fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if matches!(c, '\'' | '"' | '`') {
            let (text, next) = quoted(&chars, i, c);
            tokens.push(Token::Name(text));
            i = next;
        } else if c == '[' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == ']')
                .map_or(chars.len(), |p| i + 1 + p);
            tokens.push(Token::Name(chars[i + 1..end].iter().collect()));
            i = end + 1;
        } else if is_name_char(c) {
            let start = i;
            while i < chars.len() && (is_name_char(chars[i]) || chars[i] == '$') {
                i += 1;
            }
            tokens.push(Token::Name(chars[start..i].iter().collect()));
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii()
}

/// The text of a quoted token starting at `start`, and the index after it; a doubled quote
/// stands for itself; an unterminated one runs to the end.
fn quoted(chars: &[char], start: usize, quote: char) -> (String, usize) {
    let mut text = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == quote {
            if chars.get(i + 1) == Some(&quote) {
                text.push(quote);
                i += 2;
                continue;
            }
            return (text, i + 1);
        }
        text.push(chars[i]);
        i += 1;
    }
    (text, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_found_however_they_are_written() {
        for sql in [
            "CREATE TABLE t(x CHECK (audio_info(x) IS NOT NULL))",
            "CREATE TABLE t(x CHECK (AUDIO_INFO (x)))",
            "CREATE TABLE t(x CHECK (\"audio_info\"(x)))",
            "CREATE TABLE t(x CHECK ([Audio_Info]/* hidden */(x)))",
            "CREATE TABLE t(x CHECK (`audio_embed`\n--note\n(x)))",
            "CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT audiotext_runtime(new.x); END",
            "CREATE VIEW v AS SELECT * FROM audio_embed_files WHERE source = '/etc'",
            "CREATE VIEW v AS SELECT * FROM main.audio_embed_files('/etc')",
        ] {
            assert!(file_reader_called_in(sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn names_that_are_not_calls_are_not_refused() {
        for sql in [
            "CREATE TABLE clips(path TEXT, audio_info TEXT, embedding BLOB)",
            "CREATE TABLE t(x CHECK (x <> 'audio_info(x)'))",
            "CREATE TABLE t(x) -- audio_embed(x) in a comment",
            "CREATE TABLE t(x /* audio_embed(x) */)",
            "CREATE TABLE t(x CHECK (text_embed(x) IS NOT NULL))",
            "CREATE INDEX i ON t(audio_embedding)",
        ] {
            assert_eq!(file_reader_called_in(sql), None, "{sql}");
        }
    }

    #[test]
    fn quoting_rules_follow_sqlite() {
        assert_eq!(
            tokenize("\"a\"\"b\" [c d] 'e''f' `g`"),
            vec![
                Token::Name("a\"b".into()),
                Token::Name("c d".into()),
                Token::Name("e'f".into()),
                Token::Name("g".into())
            ]
        );
        // Unterminated quotes and comments run to the end without a panic.
        for sql in ["'abc", "\"abc", "[abc", "/* abc", "-- abc", "`"] {
            tokenize(sql);
        }
    }
}

/// xConnect of a table that reads files named in SQL (`audio_embed_files`, `audio_segments`,
/// `audio_segment_files`): marks it DIRECTONLY, so only top-level statements may use it, and
/// returns the connection's handle for this check and the interrupt probe.
pub fn connect_file_reader(
    db: &mut rusqlite::vtab::VTabConnection,
) -> Result<*mut rusqlite::ffi::sqlite3, String> {
    db.config(rusqlite::vtab::VTabConfig::DirectOnly)
        .map_err(|e| e.to_string())?;
    // SAFETY: the connection that owns the table; it outlives the table and its cursors.
    Ok(unsafe { db.handle() })
}
