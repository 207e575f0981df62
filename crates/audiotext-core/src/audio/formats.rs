//! The audio files the decoder reads, by extension: the one list that folder listings (the
//! extension's `audio_files`, `audio_embed_files`) and the trainer's dataset lookup share.

/// Extensions (lowercase) with the MIME type a browser plays each as, in order of preference
/// when one recording exists in several formats (the trainer's AudioCaps lookup).
pub const AUDIO_FORMATS: [(&str, &str); 11] = [
    ("wav", "audio/wav"),
    ("flac", "audio/flac"),
    ("mp3", "audio/mpeg"),
    ("ogg", "audio/ogg"),
    ("oga", "audio/ogg"),
    ("m4a", "audio/mp4"),
    ("aac", "audio/aac"),
    ("mp4", "audio/mp4"),
    ("mka", "audio/x-matroska"),
    ("mkv", "audio/x-matroska"),
    ("wave", "audio/wav"),
];

/// The extensions of [`AUDIO_FORMATS`], in its order.
pub const AUDIO_EXTENSIONS: [&str; 11] = {
    let mut extensions = [""; 11];
    let mut i = 0;
    while i < AUDIO_FORMATS.len() {
        extensions[i] = AUDIO_FORMATS[i].0;
        i += 1;
    }
    extensions
};

/// Whether a file with this extension (any case, without the dot) is one the decoder reads.
pub fn is_audio_extension(extension: &str) -> bool {
    AUDIO_EXTENSIONS
        .iter()
        .any(|e| e.eq_ignore_ascii_case(extension))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_follow_the_formats_and_ignore_case() {
        assert_eq!(AUDIO_EXTENSIONS[0], "wav");
        assert_eq!(AUDIO_EXTENSIONS[10], "wave");
        assert!(is_audio_extension("FLAC") && is_audio_extension("mkv"));
        assert!(!is_audio_extension("txt") && !is_audio_extension(""));
    }
}
