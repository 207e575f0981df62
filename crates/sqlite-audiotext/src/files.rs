//! Listing the audio files a directory or glob pattern names, in a stable (sorted) order.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use audiotext_core::audio::formats::is_audio_extension;

/// A directory gives every audio file below it (recursively, by extension); a pattern with
/// `*`, `?` or `**` gives the files it matches, whatever their extension; a plain file gives
/// itself; a JSON array of paths (what `json_group_array(path)` makes) gives those files,
/// whatever their extension, each once. Sorted by path, so results come in a stable order.
///
/// Symbolic links are followed, to files and to folders. A folder reached again (a link loop
/// such as `sub/up -> ..`, or two links to one folder) is walked once, and a file reached by
/// several paths (links, hard links) is listed once, under its first path in sorted order;
/// both are recognised by device and inode. Pipes, sockets and devices are listed like files,
/// so that their rows say what they are (the decoder refuses them before reading).
pub fn list(spec: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(spec);
    let mut walker = Walker::default();
    let mut files = Vec::new();
    let metadata = std::fs::metadata(path);
    if metadata.is_err() && spec.trim_start().starts_with('[') {
        return json_path_list(spec);
    }
    if metadata.as_ref().is_ok_and(|m| m.is_dir()) {
        walker.walk(path, &mut |p| {
            let wanted = has_audio_extension(p);
            if wanted {
                files.push(p.to_path_buf());
            }
            wanted
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
                "no such folder: {} (from the pattern {spec}); check the path",
                base_dir.display()
            ));
        }
        walker.walk(base_dir, &mut |p| {
            let relative = p.strip_prefix(base_dir).unwrap_or(p).to_string_lossy();
            let wanted = glob_match(&pattern, &relative);
            if wanted {
                files.push(p.to_path_buf());
            }
            wanted
        })?;
    } else if metadata.is_ok() {
        files.push(path.to_path_buf());
    } else {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "unknown".into());
        return Err(format!(
            "no such file or folder: {spec} (a relative path is taken from the process's working directory, {cwd})"
        ));
    }
    files.sort();
    Ok(files)
}

/// `["a.wav", "b/c.flac"]`: the paths sorted, each file once (by device and inode, as a
/// walk does). A path that does not exist, or is not a regular file, is listed anyway, so that
/// its row says what is wrong with it.
fn json_path_list(spec: &str) -> Result<Vec<PathBuf>, String> {
    let entries: Vec<String> = serde_json::from_str(spec).map_err(|e| {
        format!(
            "{} looks like a JSON array of paths but is not one ({e}); pass a folder, a glob \
             pattern, or a JSON array of strings such as '[\"a.wav\", \"b.flac\"]'",
            shorten(spec)
        )
    })?;
    let mut paths = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        if entry.is_empty() || entry.contains('\0') {
            return Err(format!(
                "element {index} of the JSON array of paths is {}: every element must name a file",
                if entry.is_empty() {
                    "empty"
                } else {
                    "a string with a NUL character"
                }
            ));
        }
        paths.push(PathBuf::from(entry));
    }
    paths.sort();
    paths.dedup();
    let mut seen = HashSet::new();
    paths.retain(|p| match std::fs::metadata(p) {
        Ok(m) => seen.insert((m.dev(), m.ino())),
        Err(_) => true,
    });
    Ok(paths)
}

/// The start of a long argument, for a message.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

fn has_audio_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(is_audio_extension)
}

/// A depth-first walk in sorted order that visits each folder and each file once.
#[derive(Default)]
struct Walker {
    /// (device, inode) of the folders walked and of the files visited.
    seen: HashSet<(u64, u64)>,
}

impl Walker {
    /// `visit` says whether it listed the path; a file counts as seen once listed.
    fn walk(&mut self, dir: &Path, visit: &mut dyn FnMut(&Path) -> bool) -> Result<(), String> {
        let metadata =
            std::fs::metadata(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        if !self.seen.insert((metadata.dev(), metadata.ino())) {
            return Ok(());
        }
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => self.walk(&path, visit)?,
                Ok(m) => {
                    let key = (m.dev(), m.ino());
                    if !self.seen.contains(&key) && visit(&path) {
                        self.seen.insert(key);
                    }
                }
                // A dangling link: listed, so that its row says the target is missing.
                Err(_) => {
                    visit(&path);
                }
            }
        }
        Ok(())
    }
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
        // A loop and a second link to a folder: each file once, under its first path.
        std::os::unix::fs::symlink("..", dir.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("sub", dir.join("z-again")).unwrap();
        std::os::unix::fs::symlink("b.wav", dir.join("c-link.wav")).unwrap();
        assert_eq!(list(dir.to_str().unwrap()).unwrap().len(), 3);
        assert!(list("/no/such/place")
            .unwrap_err()
            .contains("no such file or folder"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_arrays_list_their_paths_sorted_and_once() {
        let dir = std::env::temp_dir().join(format!("audiotext-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["b.wav", "a.txt"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        std::os::unix::fs::symlink("b.wav", dir.join("c-link.wav")).unwrap();
        let at = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let spec = serde_json::to_string(&[
            at("b.wav"),
            at("a.txt"),
            at("b.wav"),
            at("c-link.wav"),
            at("missing.wav"),
        ])
        .unwrap();
        // Any extension; duplicates and a second path to one file once; a missing file kept.
        let names: Vec<String> = list(&spec)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.txt", "b.wav", "missing.wav"]);
        assert_eq!(list("[]").unwrap(), Vec::<PathBuf>::new());
        assert!(list("[1, 2]")
            .unwrap_err()
            .contains("looks like a JSON array of paths but is not one"));
        assert!(list("[\"a.wav\", \"\"]")
            .unwrap_err()
            .contains("element 1 of the JSON array of paths is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
