//! Captioned audio datasets on disk: the Clotho v2 layout and the same layout for any folder.
//!
//! - Clotho v2 (Drossos et al. 2020): `<root>/clotho_captions_<split>.csv` with the header
//!   `file_name,caption_1,...,caption_5`, audio in `<root>/<split>/` (`development`,
//!   `validation`, `evaluation`).
//! - Generic: `<root>/captions.csv` (same columns) and audio in `<root>/audio/`; an optional
//!   `<root>/labels.csv` with `file_name,class[,fold]` adds class labels (for stratified splits
//!   and class-aware metrics).
//!
//! CSV follows RFC 4180 (quoted fields may hold commas, quotes and newlines). A clip may have
//! fewer than five captions (empty cells are skipped) but not none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// File names inside a generic dataset folder.
pub const GENERIC_CAPTIONS_FILE: &str = "captions.csv";
pub const GENERIC_AUDIO_DIR: &str = "audio";
pub const GENERIC_LABELS_FILE: &str = "labels.csv";

/// How a dataset folder is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `captions.csv` + `audio/` (+ optional `labels.csv`).
    Generic,
    /// `clotho_captions_<split>.csv` + `<split>/`.
    Clotho { split: String },
}

impl Layout {
    /// A short description for logs and manifests, e.g. `clotho:development`.
    pub fn describe(&self) -> String {
        match self {
            Layout::Generic => "generic".into(),
            Layout::Clotho { split } => format!("clotho:{split}"),
        }
    }
}

/// One audio file and its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// The name as written in the captions file (relative to the audio folder).
    pub file_name: String,
    pub path: PathBuf,
    pub captions: Vec<String>,
    /// Class label from `labels.csv`, when the dataset has one.
    pub label: Option<String>,
    /// The recording the clip was cut from: clips of one recording must stay on one side of a
    /// split. See [`recording_id`].
    pub recording: String,
}

/// A dataset: its clips in the order of the captions file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    pub clips: Vec<Clip>,
}

impl Dataset {
    /// Reads the captions (and labels) of a dataset folder; checks that every audio file exists.
    pub fn open(root: &Path, layout: &Layout) -> Result<Dataset> {
        if !root.is_dir() {
            bail!("dataset folder {} does not exist", root.display());
        }
        let (captions_path, audio_dir) = match layout {
            Layout::Generic => (
                root.join(GENERIC_CAPTIONS_FILE),
                root.join(GENERIC_AUDIO_DIR),
            ),
            Layout::Clotho { split } => (
                root.join(format!("clotho_captions_{split}.csv")),
                root.join(split),
            ),
        };
        if !captions_path.is_file() {
            let hint = match layout {
                Layout::Generic if root.join("clotho_captions_development.csv").is_file() => {
                    "; this looks like a Clotho folder: pass --layout clotho"
                }
                Layout::Generic => "; a generic dataset folder holds captions.csv (file_name,caption_1..caption_5) and audio/",
                Layout::Clotho { .. } => "; a Clotho folder holds clotho_captions_<split>.csv and <split>/ (pass the split with --split)",
            };
            bail!("{} not found{hint}", captions_path.display());
        }
        let rows = read_captions(&captions_path)?;
        let labels = match layout {
            Layout::Generic if root.join(GENERIC_LABELS_FILE).is_file() => {
                Some(read_labels(&root.join(GENERIC_LABELS_FILE))?)
            }
            _ => None,
        };
        let mut clips = Vec::with_capacity(rows.len());
        let mut missing = Vec::new();
        for (file_name, captions) in rows {
            let path = audio_dir.join(&file_name);
            if !path.is_file() {
                missing.push(file_name.clone());
            }
            let label = labels.as_ref().and_then(|l| l.get(&file_name).cloned());
            let recording = recording_id(&file_name);
            clips.push(Clip {
                file_name,
                path,
                captions,
                label,
                recording,
            });
        }
        if !missing.is_empty() {
            let shown: Vec<_> = missing.iter().take(5).cloned().collect();
            bail!(
                "{} of {} clips listed in {} are missing from {} (first: {})",
                missing.len(),
                clips.len(),
                captions_path.display(),
                audio_dir.display(),
                shown.join(", ")
            );
        }
        if clips.is_empty() {
            bail!("{} lists no clips", captions_path.display());
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            layout: layout.clone(),
            clips,
        })
    }

    /// Whether every clip has a class label.
    pub fn has_labels(&self) -> bool {
        self.clips.iter().all(|c| c.label.is_some())
    }

    /// Number of captions over all clips.
    pub fn caption_count(&self) -> usize {
        self.clips.iter().map(|c| c.captions.len()).sum()
    }
}

/// The recording a clip comes from, from its file name.
///
/// ESC-50 names clips `{fold}-{freesound id}-{take}-{class id}.{ext}` (e.g. `1-100032-A-0.wav`):
/// clips sharing the Freesound id come from one recording. Any other name is its own recording
/// (Clotho's clips are one per Freesound recording already).
pub fn recording_id(file_name: &str) -> String {
    let stem = Path::new(file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file_name);
    let parts: Vec<&str> = stem.split('-').collect();
    let is_esc50 = parts.len() == 4
        && parts[0].chars().all(|c| c.is_ascii_digit())
        && !parts[0].is_empty()
        && parts[1].chars().all(|c| c.is_ascii_digit())
        && !parts[1].is_empty()
        && parts[2].chars().all(|c| c.is_ascii_alphabetic())
        && !parts[2].is_empty()
        && parts[3].chars().all(|c| c.is_ascii_digit())
        && !parts[3].is_empty();
    if is_esc50 {
        format!("freesound:{}", parts[1])
    } else {
        format!("file:{stem}")
    }
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))
}

fn column(headers: &csv::StringRecord, name: &str, path: &Path) -> Result<usize> {
    headers
        .iter()
        .position(|h| h.trim().trim_start_matches('\u{feff}') == name)
        .with_context(|| {
            format!(
                "{}: no column {name:?} in the header ({})",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })
}

/// Reads `file_name,caption_1..caption_N` rows; duplicate file names are an error.
pub fn read_captions(path: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let mut reader = csv_reader(path)?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .clone();
    let file_col = column(&headers, "file_name", path)?;
    let caption_cols: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.trim().starts_with("caption_"))
        .map(|(i, _)| i)
        .collect();
    if caption_cols.is_empty() {
        bail!(
            "{}: no caption_1..caption_5 columns in the header",
            path.display()
        );
    }
    let mut rows = Vec::new();
    let mut seen = HashMap::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let record =
            record.with_context(|| format!("{}: line {line} is not valid CSV", path.display()))?;
        let file_name = record.get(file_col).unwrap_or("").trim().to_string();
        if file_name.is_empty() {
            bail!("{}: line {line} has no file_name", path.display());
        }
        let captions: Vec<String> = caption_cols
            .iter()
            .filter_map(|&c| record.get(c))
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if captions.is_empty() {
            bail!(
                "{}: line {line} ({file_name}) has no caption",
                path.display()
            );
        }
        if let Some(first) = seen.insert(file_name.clone(), line) {
            bail!(
                "{}: {file_name} is listed twice (lines {first} and {line})",
                path.display()
            );
        }
        rows.push((file_name, captions));
    }
    Ok(rows)
}

/// Reads `file_name,class[,...]` rows into a map.
pub fn read_labels(path: &Path) -> Result<HashMap<String, String>> {
    let mut reader = csv_reader(path)?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .clone();
    let file_col = column(&headers, "file_name", path)?;
    let class_col = column(&headers, "class", path)?;
    let mut labels = HashMap::new();
    for (n, record) in reader.records().enumerate() {
        let record = record
            .with_context(|| format!("{}: line {} is not valid CSV", path.display(), n + 2))?;
        let file = record.get(file_col).unwrap_or("").trim();
        let class = record.get(class_col).unwrap_or("").trim();
        if !file.is_empty() && !class.is_empty() {
            labels.insert(file.to_string(), class.to_string());
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("audiotext-data-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_the_generic_layout_with_quoted_captions_and_labels() {
        let dir = TempDir::new("generic");
        std::fs::create_dir_all(dir.0.join("audio")).unwrap();
        for f in ["1-100-A-0.wav", "1-100-B-0.wav", "2-200-A-1.wav"] {
            std::fs::write(dir.0.join("audio").join(f), b"x").unwrap();
        }
        std::fs::write(
            dir.0.join("captions.csv"),
            "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n\
             1-100-A-0.wav,\"A dog barks, twice.\",A dog.,\"He said \"\"woof\"\"\",\"two\nlines\",\n\
             1-100-B-0.wav,a,b,c,d,e\n\
             2-200-A-1.wav,rain,,,,\n",
        )
        .unwrap();
        std::fs::write(dir.0.join("labels.csv"), "file_name,class,fold\n1-100-A-0.wav,dog,1\n1-100-B-0.wav,dog,1\n2-200-A-1.wav,rain,2\n").unwrap();
        let data = Dataset::open(&dir.0, &Layout::Generic).unwrap();
        assert_eq!(data.clips.len(), 3);
        let first = &data.clips[0];
        assert_eq!(
            first.captions,
            [
                "A dog barks, twice.",
                "A dog.",
                "He said \"woof\"",
                "two\nlines"
            ]
        );
        assert_eq!(first.label.as_deref(), Some("dog"));
        assert_eq!(first.path, dir.0.join("audio/1-100-A-0.wav"));
        assert_eq!(data.clips[0].recording, data.clips[1].recording);
        assert_ne!(data.clips[0].recording, data.clips[2].recording);
        assert_eq!(data.clips[2].captions, ["rain"]);
        assert!(data.has_labels());
        assert_eq!(data.caption_count(), 4 + 5 + 1);
    }

    #[test]
    fn reads_the_clotho_layout_and_reports_problems() {
        let dir = TempDir::new("clotho");
        std::fs::create_dir_all(dir.0.join("development")).unwrap();
        std::fs::write(dir.0.join("development/a b.wav"), b"x").unwrap();
        std::fs::write(
            dir.0.join("clotho_captions_development.csv"),
            "\u{feff}file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n\"a b.wav\",one,two,three,four,five\n",
        )
        .unwrap();
        let layout = Layout::Clotho {
            split: "development".into(),
        };
        let data = Dataset::open(&dir.0, &layout).unwrap();
        assert_eq!(data.clips[0].file_name, "a b.wav");
        assert_eq!(data.clips[0].recording, "file:a b");
        assert!(!data.has_labels());
        assert_eq!(layout.describe(), "clotho:development");

        let error = format!("{:#}", Dataset::open(&dir.0, &Layout::Generic).unwrap_err());
        assert!(error.contains("--layout clotho"), "{error}");
        let error = format!(
            "{:#}",
            Dataset::open(
                &dir.0,
                &Layout::Clotho {
                    split: "evaluation".into()
                }
            )
            .unwrap_err()
        );
        assert!(
            error.contains("clotho_captions_evaluation.csv not found"),
            "{error}"
        );

        std::fs::write(
            dir.0.join("clotho_captions_development.csv"),
            "file_name,caption_1\n\"a b.wav\",one\nmissing.wav,two\n",
        )
        .unwrap();
        let error = format!("{:#}", Dataset::open(&dir.0, &layout).unwrap_err());
        assert!(
            error.contains("1 of 2 clips") && error.contains("missing.wav"),
            "{error}"
        );
        std::fs::write(
            dir.0.join("clotho_captions_development.csv"),
            "file_name,caption_1\n\"a b.wav\",one\n\"a b.wav\",two\n",
        )
        .unwrap();
        let error = format!("{:#}", Dataset::open(&dir.0, &layout).unwrap_err());
        assert!(error.contains("listed twice"), "{error}");
        std::fs::write(
            dir.0.join("clotho_captions_development.csv"),
            "name,caption_1\nx,y\n",
        )
        .unwrap();
        let error = format!("{:#}", Dataset::open(&dir.0, &layout).unwrap_err());
        assert!(error.contains("no column \"file_name\""), "{error}");
    }

    #[test]
    fn recording_ids_follow_the_esc50_scheme() {
        assert_eq!(recording_id("1-100032-A-0.wav"), "freesound:100032");
        assert_eq!(recording_id("5-100032-B-0.flac"), "freesound:100032");
        assert_eq!(recording_id("dir/2-1-A-49.flac"), "freesound:1");
        assert_eq!(recording_id("Rain on roof-1.wav"), "file:Rain on roof-1");
        assert_eq!(recording_id("a-b-c-d.wav"), "file:a-b-c-d");
    }
}
