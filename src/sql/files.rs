//! Listing the audio files a directory or glob pattern names, in a stable (sorted) order.

use std::path::{Path, PathBuf};

/// Extensions the decoder reads (lowercase).
pub const AUDIO_EXTENSIONS: [&str; 11] = [
    "wav", "wave", "flac", "ogg", "oga", "mp3", "m4a", "aac", "mp4", "mka", "mkv",
];

/// A directory gives every audio file below it (recursively, by extension); a pattern with
/// `*`, `?` or `**` gives the files it matches, whatever their extension; a plain file gives
/// itself. Sorted by path, so results come in a stable order.
pub fn list(spec: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(spec);
    let mut files = Vec::new();
    if path.is_dir() {
        walk(path, &mut |p| {
            if has_audio_extension(p) {
                files.push(p.to_path_buf());
            }
        })?;
    } else if spec.contains(['*', '?']) {
        let (base, pattern) = split_pattern(spec);
        let base_dir = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base.as_path()
        };
        if !base_dir.is_dir() {
            return Err(format!(
                "no such folder: {} (from the pattern {spec})",
                base_dir.display()
            ));
        }
        walk(base_dir, &mut |p| {
            let relative = p.strip_prefix(base_dir).unwrap_or(p).to_string_lossy();
            if glob_match(&pattern, &relative) {
                files.push(p.to_path_buf());
            }
        })?;
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        return Err(format!("no such file or folder: {spec}"));
    }
    files.sort();
    Ok(files)
}

fn has_audio_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, visit)?;
        } else if path.is_file() {
            visit(&path);
        }
    }
    Ok(())
}

/// Splits `sounds/dogs/*.wav` into the folder without wildcards (`sounds/dogs`) and the rest.
fn split_pattern(spec: &str) -> (PathBuf, String) {
    let components: Vec<&str> = spec.split('/').collect();
    let first_wild = components
        .iter()
        .position(|c| c.contains(['*', '?']))
        .unwrap_or(components.len());
    let base = components[..first_wild].join("/");
    let base = if base.is_empty() && spec.starts_with('/') {
        "/".to_string()
    } else {
        base
    };
    (PathBuf::from(base), components[first_wild..].join("/"))
}

/// Shell-style matching on `/`-separated paths: `*` and `?` stay within one component, `**`
/// matches any number of components.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    match_components(&pattern, &path)
}

fn match_components(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_components(rest, &path[skip..])),
        Some((first, rest)) => {
            !path.is_empty()
                && match_component(first.as_bytes(), path[0].as_bytes())
                && match_components(rest, &path[1..])
        }
    }
}

fn match_component(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            match_component(&pattern[1..], text)
                || (!text.is_empty() && match_component(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => match_component(&pattern[1..], &text[1..]),
        (Some(a), Some(b)) if a == b => match_component(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(glob_match("*.wav", "a.wav"));
        assert!(!glob_match("*.wav", "dir/a.wav"));
        assert!(glob_match("**/*.wav", "dir/sub/a.wav"));
        assert!(glob_match("**/*.wav", "a.wav"));
        assert!(glob_match("d?g-*.flac", "dog-1.flac"));
        assert!(!glob_match("d?g-*.flac", "dog-1.wav"));
    }

    #[test]
    fn patterns_split_at_the_first_wildcard() {
        assert_eq!(
            split_pattern("sounds/dogs/*.wav"),
            (PathBuf::from("sounds/dogs"), "*.wav".into())
        );
        assert_eq!(
            split_pattern("/data/**/x?.flac"),
            (PathBuf::from("/data"), "**/x?.flac".into())
        );
        assert_eq!(split_pattern("*.mp3"), (PathBuf::new(), "*.mp3".into()));
    }

    #[test]
    fn directories_list_audio_files_sorted() {
        let dir = std::env::temp_dir().join(format!("audiotext-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["b.wav", "a.FLAC", "notes.txt", "sub/c.mp3"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let names: Vec<String> = list(dir.to_str().unwrap())
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.FLAC", "b.wav", "sub/c.mp3"]);
        let pattern = format!("{}/**/*.mp3", dir.display());
        assert_eq!(list(&pattern).unwrap().len(), 1);
        assert!(list("/no/such/place")
            .unwrap_err()
            .contains("no such file or folder"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
