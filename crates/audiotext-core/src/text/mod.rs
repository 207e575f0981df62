//! Text embedding: tokenize with the bundle's `tokenizer.json`, run `text.onnx`.
//!
//! Truncation follows sentence-transformers: at `max_tokens` tokens, special tokens included,
//! whatever `tokenizer.json` itself says (MiniLM's file says 128, its model card 256).
//! The empty string is embedded like any text: it tokenizes to `[CLS] [SEP]` and gives the same
//! vector sentence-transformers gives for it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::model::manifest::TextSection;
use crate::model::runtime::{embeddings_output, Runtime, SessionPlacement};
use crate::{Error, Result};

/// A loaded text encoder. Shared by every connection of the process.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    section: TextSection,
    /// `Session::run` needs `&mut`; one lock around one session (see ARCHITECTURE.md for why
    /// not a pool: ONNX Runtime already uses every core inside one run).
    session: Mutex<Session>,
    pub embedding_dim: usize,
    pub placement: SessionPlacement,
    /// Texts embedded so far (shown by `audiotext_debug`; lets tests see per-statement caching).
    pub texts_embedded: AtomicU64,
}

impl TextEncoder {
    pub fn load(
        bundle_dir: &Path,
        section: &TextSection,
        embedding_dim: usize,
        runtime: &Runtime,
    ) -> Result<Self> {
        let tokenizer = load_tokenizer(&bundle_dir.join(&section.tokenizer), section.max_tokens)?;
        let (session, placement) = runtime.session(&bundle_dir.join(&section.onnx))?;
        for name in [&section.input_ids, &section.attention_mask] {
            if !session
                .inputs()
                .iter()
                .any(|input| input.name() == name.as_str())
            {
                return Err(Error::Bundle(format!(
                    "{} has no input named '{name}' (manifest text section); re-export the bundle",
                    section.onnx
                )));
            }
        }
        Ok(TextEncoder {
            tokenizer,
            section: section.clone(),
            session: Mutex::new(session),
            embedding_dim,
            placement,
            texts_embedded: AtomicU64::new(0),
        })
    }

    /// Token ids of one text, truncated, special tokens added.
    ///
    /// The tokenizer works on the whole text before truncating, at about 100 bytes of memory
    /// per byte of text (50 MB of text took 6 GB). So a long text is tokenized by prefixes cut
    /// at whitespace, growing until one fills `max_tokens`: cut at a word boundary, a prefix
    /// tokenizes to the same first tokens as the whole text. Text past `MAX_BYTES_PER_TOKEN`
    /// bytes per token (only reached by pathological text, such as a single giant word) is
    /// ignored.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let max_tokens = self.section.max_tokens;
        let ceiling = max_tokens.saturating_mul(MAX_BYTES_PER_TOKEN);
        let mut limit = max_tokens.saturating_mul(16);
        loop {
            let (prefix, whole) = prefix_at_whitespace(text, limit.min(ceiling));
            let encoding = self
                .tokenizer
                .encode(prefix, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            if whole || encoding.get_ids().len() >= max_tokens || limit >= ceiling {
                return Ok(encoding.get_ids().to_vec());
            }
            limit = limit.saturating_mul(4);
        }
    }

    /// Embeds a batch of texts as the bundle defines them; each result is L2-normalised and
    /// `embedding_dim` long: `text.onnx`'s output, moved off the manifest's `centre` (if any).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut vectors = self.embed_network(texts)?;
        subtract_centre_from_each(&mut vectors, self.section.centre.as_deref());
        Ok(vectors)
    }

    /// `text.onnx`'s own output, before any centre: what a trainer fits audio to, and what a
    /// centre is computed from.
    pub fn embed_network(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.texts_embedded
            .fetch_add(texts.len() as u64, Ordering::Relaxed);
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        let tokens = ids.iter().map(Vec::len).max().unwrap_or(0);
        let batch = ids.len();
        let mut input_ids = vec![0i64; batch * tokens];
        let mut attention_mask = vec![0i64; batch * tokens];
        for (row, row_ids) in ids.iter().enumerate() {
            for (col, &id) in row_ids.iter().enumerate() {
                input_ids[row * tokens + col] = i64::from(id);
                attention_mask[row * tokens + col] = 1;
            }
        }
        let shape = [batch as i64, tokens as i64];
        let inputs = ort::inputs![
            self.section.input_ids.as_str() => Tensor::from_array((shape, input_ids))?,
            self.section.attention_mask.as_str() => Tensor::from_array((shape, attention_mask))?,
        ];
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(inputs)?;
        embeddings_output(
            &outputs,
            &self.section.onnx,
            &self.section.output,
            batch,
            self.embedding_dim,
        )
    }
}

/// `v - centre`, L2-normalised again (as the text graph normalises: by `max(|x|, 1e-12)`, so a
/// vector that vanishes stays zero rather than becoming NaN).
pub fn subtract_centre(v: &mut [f32], centre: &[f32]) {
    for (x, c) in v.iter_mut().zip(centre) {
        *x -= c;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v.iter_mut() {
        *x /= norm;
    }
}

/// [`subtract_centre`] on every vector, when there is a centre.
pub fn subtract_centre_from_each(vectors: &mut [Vec<f32>], centre: Option<&[f32]>) {
    if let Some(centre) = centre {
        for v in vectors {
            subtract_centre(v, centre);
        }
    }
}

/// How much text `token_ids` looks at, per token of `max_tokens`: words average under ten bytes
/// a token, so this only cuts text made of huge words or runs of whitespace.
const MAX_BYTES_PER_TOKEN: usize = 1024;

/// The text up to about `limit` bytes, cut after a whitespace character when there is one (at a
/// character boundary otherwise), and whether that is the whole text.
fn prefix_at_whitespace(text: &str, limit: usize) -> (&str, bool) {
    if text.len() <= limit {
        return (text, true);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text[..end]
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(end, |(i, _)| i);
    (&text[..if cut == 0 { end } else { cut }], false)
}

/// Loads `tokenizer.json` with our truncation and without its padding (we pad ourselves, to the
/// longest text of a batch rather than to a fixed length).
pub fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| {
        Error::Bundle(format!(
            "cannot load tokenizer {}: {e}; re-export the bundle",
            path.display()
        ))
    })?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::{prefix_at_whitespace, subtract_centre};

    #[test]
    fn a_centred_embedding_is_the_normalised_difference() {
        let mut v = vec![0.6, 0.8, 0.0];
        subtract_centre(&mut v, &[0.3, 0.0, 0.4]);
        let expected = [0.3f32, 0.8, -0.4];
        let norm = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (got, want) in v.iter().zip(expected) {
            assert!((got - want / norm).abs() < 1e-6, "{v:?}");
        }
        // Subtracting the vector itself leaves zeros, not NaN.
        let mut same = vec![0.6, 0.8];
        subtract_centre(&mut same, &[0.6, 0.8]);
        assert_eq!(same, vec![0.0, 0.0]);
    }

    #[test]
    fn prefixes_end_at_whitespace_and_char_boundaries() {
        assert_eq!(prefix_at_whitespace("short", 10), ("short", true));
        assert_eq!(
            prefix_at_whitespace("a dog barks loudly", 12),
            ("a dog barks", false)
        );
        assert_eq!(prefix_at_whitespace("éééééé", 3), ("é", false));
        assert_eq!(prefix_at_whitespace("aaaaaaaa", 4), ("aaaa", false));
    }
}
