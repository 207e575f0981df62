//! Captioned audio datasets on disk: Clotho v2, AudioCaps, and Clotho's layout for any folder.
//!
//! - Clotho v2 (Drossos et al. 2020): `<root>/clotho_captions_<split>.csv` with the header
//!   `file_name,caption_1,...,caption_5`, audio in `<root>/<split>/` (`development`,
//!   `validation`, `evaluation`).
//! - Generic: `<root>/captions.csv` (same columns) and audio in `<root>/audio/`; an optional
//!   `<root>/labels.csv` with `file_name,class[,fold]` adds class labels (for stratified splits
//!   and class-aware metrics).
//! - AudioCaps (Kim et al. 2019, <https://github.com/cdjkim/audiocaps>): `<root>/<split>.csv`
//!   (`train`, `val`, `test`) with the header `audiocap_id,youtube_id,start_time,caption`, one
//!   caption per row. Train has one row per clip; val and test have five rows per clip, which
//!   become one clip with five captions. AudioCaps ships no audio (clips are cut from YouTube), so
//!   each download names its files differently; see [`audiocaps_audio_names`] for the names and
//!   folders searched. Clips whose audio was not downloaded (videos get taken down) are
//!   skipped and reported ([`Dataset::skipped`]), since every copy of AudioCaps misses some.
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

/// The AudioCaps splits, and the Clotho names accepted for them (so `--split development`,
/// the trainer's default, means `train`).
pub const AUDIOCAPS_SPLITS: [(&str, &str); 3] = [
    ("train", "development"),
    ("val", "validation"),
    ("test", "evaluation"),
];

/// Extensions of the audio files an AudioCaps folder is searched for, in order of preference
/// when one clip has several: the decoder's formats.
pub use audiotext_core::audio::formats::AUDIO_EXTENSIONS;

/// How a dataset folder is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `captions.csv` + `audio/` (+ optional `labels.csv`).
    Generic,
    /// `clotho_captions_<split>.csv` + `<split>/`.
    Clotho { split: String },
    /// `<split>.csv` (`audiocap_id,youtube_id,start_time,caption`) + audio named by id.
    AudioCaps { split: String },
}

impl Layout {
    /// AudioCaps' split `split`; Clotho's split names stand for AudioCaps' (`development` is
    /// `train`, `validation` is `val`, `evaluation` is `test`).
    pub fn audiocaps(split: &str) -> Layout {
        let split = AUDIOCAPS_SPLITS
            .iter()
            .find(|(_, clotho)| *clotho == split)
            .map_or(split, |(own, _)| own);
        Layout::AudioCaps {
            split: split.to_string(),
        }
    }

    /// A short description for logs and manifests, e.g. `clotho:development`; [`Layout::parse`]
    /// reads it back.
    pub fn describe(&self) -> String {
        match self {
            Layout::Generic => "generic".into(),
            Layout::Clotho { split } => format!("clotho:{split}"),
            Layout::AudioCaps { split } => format!("audiocaps:{split}"),
        }
    }

    /// Reads a description written by [`Layout::describe`].
    pub fn parse(description: &str) -> Result<Layout> {
        match description.split_once(':') {
            None if description == "generic" => Ok(Layout::Generic),
            Some(("clotho", split)) if !split.is_empty() => Ok(Layout::Clotho {
                split: split.to_string(),
            }),
            Some(("audiocaps", split)) if !split.is_empty() => Ok(Layout::audiocaps(split)),
            _ => bail!(
                "unknown dataset layout {description:?} (expected generic, clotho:<split> or audiocaps:<split>)"
            ),
        }
    }

    /// The split, for layouts that have them.
    pub fn split(&self) -> Option<&str> {
        match self {
            Layout::Generic => None,
            Layout::Clotho { split } | Layout::AudioCaps { split } => Some(split),
        }
    }

    /// The same layout on another split (the generic layout has none and stays as it is).
    pub fn with_split(&self, split: &str) -> Layout {
        match self {
            Layout::Generic => Layout::Generic,
            Layout::Clotho { .. } => Layout::Clotho {
                split: split.to_string(),
            },
            Layout::AudioCaps { .. } => Layout::audiocaps(split),
        }
    }

    /// The captions file of this layout in `root`.
    pub fn captions_file(&self, root: &Path) -> PathBuf {
        match self {
            Layout::Generic => root.join(GENERIC_CAPTIONS_FILE),
            Layout::Clotho { split } => root.join(format!("clotho_captions_{split}.csv")),
            Layout::AudioCaps { split } => root.join(format!("{split}.csv")),
        }
    }

    /// The dataset's own validation split, when it has one on disk and `self` is another split:
    /// Clotho's `validation`, AudioCaps' `val`.
    pub fn default_validation(&self, root: &Path) -> Option<Layout> {
        let validation = match self {
            Layout::Generic => return None,
            Layout::Clotho { .. } => self.with_split("validation"),
            Layout::AudioCaps { .. } => self.with_split("val"),
        };
        (validation != *self && validation.captions_file(root).is_file()).then_some(validation)
    }
}

/// One audio file and its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Clotho and generic: the name as written in the captions file (relative to the audio
    /// folder). AudioCaps: the audio file's path relative to the dataset folder, with `/`.
    pub file_name: String,
    pub path: PathBuf,
    pub captions: Vec<String>,
    /// Class label from `labels.csv`, when the dataset has one.
    pub label: Option<String>,
    /// The recording the clip was cut from: clips of one recording must stay on one side of a
    /// split. See [`recording_id`], or `labels.csv`'s `recording` column where it has one.
    pub recording: String,
    /// Where the clip comes from (`labels.csv`'s `source` column: `esc50`, a Debian package...),
    /// for weighting sources against each other and for metrics per source.
    pub source: Option<String>,
    /// `background` for sounds that can sit behind others (speech, music, rain, traffic), which
    /// the trainer may mix under foreground clips (`labels.csv`'s `kind` column).
    pub kind: Option<String>,
}

/// A dataset: its clips in the order of the captions file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    pub clips: Vec<Clip>,
    /// AudioCaps: the clips left out because no audio file was found for them, described by
    /// YouTube id and the audio names searched (always empty for the other layouts, where a
    /// missing file is an error).
    pub skipped: Vec<String>,
}

impl Dataset {
    /// Reads the captions (and labels) of a dataset folder; checks that every audio file exists
    /// (AudioCaps: skips the clips without audio, with a warning on stderr).
    pub fn open(root: &Path, layout: &Layout) -> Result<Dataset> {
        if !root.is_dir() {
            bail!("dataset folder {} does not exist", root.display());
        }
        let (captions_path, audio_dir) = match layout {
            Layout::AudioCaps { split } => {
                let dataset = open_audiocaps(root, split)?;
                if !dataset.skipped.is_empty() {
                    eprintln!("warning: {}", dataset.skipped_summary());
                }
                return Ok(dataset);
            }
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
            bail!(
                "{} not found{}",
                captions_path.display(),
                missing_captions_hint(root, layout)
            );
        }
        let rows = read_captions(&captions_path)?;
        let labels = match layout {
            Layout::Generic if root.join(GENERIC_LABELS_FILE).is_file() => {
                Some(read_label_rows(&root.join(GENERIC_LABELS_FILE))?)
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
            let row = labels.as_ref().and_then(|l| l.get(&file_name));
            let recording = row
                .and_then(|r| r.recording.clone())
                .unwrap_or_else(|| recording_id(&file_name));
            clips.push(Clip {
                file_name,
                path,
                captions,
                label: row.map(|r| r.class.clone()),
                recording,
                source: row.and_then(|r| r.source.clone()),
                kind: row.and_then(|r| r.kind.clone()),
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
            skipped: Vec::new(),
        })
    }

    /// One line on the clips skipped for want of audio: how many, the first few, and where
    /// they were looked for.
    pub fn skipped_summary(&self) -> String {
        let shown: Vec<&str> = self.skipped.iter().take(5).map(String::as_str).collect();
        format!(
            "{} of {} {} clips have no audio file in {} and are skipped (first: {})",
            self.skipped.len(),
            self.skipped.len() + self.clips.len(),
            self.layout.describe(),
            self.root.display(),
            shown.join("; ")
        )
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

/// What to say when a layout's captions file is missing from `root`.
fn missing_captions_hint(root: &Path, layout: &Layout) -> &'static str {
    match layout {
        Layout::Generic if root.join("clotho_captions_development.csv").is_file() => {
            "; this looks like a Clotho folder: pass --layout clotho"
        }
        Layout::Generic if root.join("train.csv").is_file() || root.join("test.csv").is_file() => {
            "; this looks like an AudioCaps folder: pass --layout audiocaps"
        }
        Layout::Generic => "; a generic dataset folder holds captions.csv (file_name,caption_1..caption_5) and audio/",
        Layout::Clotho { .. } => "; a Clotho folder holds clotho_captions_<split>.csv and <split>/ (pass the split with --split)",
        Layout::AudioCaps { .. } => "; an AudioCaps folder holds train.csv, val.csv and test.csv (audiocap_id,youtube_id,start_time,caption) and the audio (pass the split with --split: train, val or test)",
    }
}

/// The audio folders searched for an AudioCaps split, in order: `audio/<split>/`, `audio/`,
/// `<split>/`.
pub fn audiocaps_audio_dirs(root: &Path, split: &str) -> Vec<PathBuf> {
    vec![
        root.join(GENERIC_AUDIO_DIR).join(split),
        root.join(GENERIC_AUDIO_DIR),
        root.join(split),
    ]
}

/// The file stems an AudioCaps clip's audio may have, in order of preference:
///
/// 1. `<audiocap_id>` for each of the clip's rows (what scripts that download row by row write,
///    e.g. `audiocaps-download`; for val and test any one of the five ids will do);
/// 2. `<youtube_id>_<start_time>` with the start in whole seconds (`--0w1YA1Hm4_30`);
/// 3. `Y<youtube_id>` and `<youtube_id>` (AudioSet's naming, used by several re-distributions).
///
/// Any extension of [`AUDIO_EXTENSIONS`] is accepted, searched in the folders of
/// [`audiocaps_audio_dirs`].
pub fn audiocaps_audio_names(
    audiocap_ids: &[String],
    youtube_id: &str,
    start_time: &str,
) -> Vec<String> {
    let mut names: Vec<String> = audiocap_ids.to_vec();
    names.push(format!("{youtube_id}_{start_time}"));
    names.push(format!("Y{youtube_id}"));
    names.push(youtube_id.to_string());
    names
}

/// AudioCaps start times are whole seconds, sometimes written `30.0`: `30` either way.
fn normalise_start_time(start_time: &str) -> String {
    match start_time.parse::<f64>() {
        Ok(t) if t.fract() == 0.0 && t >= 0.0 => format!("{}", t as u64),
        _ => start_time.to_string(),
    }
}

/// The audio files in AudioCaps' candidate folders, by stem: the first folder (then the first
/// extension of [`AUDIO_EXTENSIONS`]) wins. Values are paths relative to `root`.
fn index_audio_files(root: &Path, dirs: &[PathBuf]) -> Result<HashMap<String, String>> {
    let mut index: HashMap<String, (usize, usize, String)> = HashMap::new();
    for (dir_rank, dir) in dirs.iter().enumerate() {
        if !dir.is_dir() {
            continue;
        }
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            let (Some(stem), Some(extension)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|e| e.to_str()),
            ) else {
                continue;
            };
            let extension = extension.to_ascii_lowercase();
            let Some(extension_rank) = AUDIO_EXTENSIONS.iter().position(|e| *e == extension) else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let rank = (dir_rank, extension_rank, relative);
            match index.get(stem) {
                Some(existing) if (existing.0, existing.1) <= (rank.0, rank.1) => {}
                _ => {
                    index.insert(stem.to_string(), rank);
                }
            }
        }
    }
    Ok(index
        .into_iter()
        .map(|(stem, (_, _, relative))| (stem, relative))
        .collect())
}

/// One AudioCaps clip as the CSV describes it: a YouTube segment and its rows.
struct AudioCapsSegment {
    youtube_id: String,
    start_time: String,
    audiocap_ids: Vec<String>,
    captions: Vec<String>,
}

/// Reads `<split>.csv` of AudioCaps into segments (rows grouped by YouTube id and start time),
/// in the order of their first row.
fn read_audiocaps_csv(path: &Path) -> Result<Vec<AudioCapsSegment>> {
    let mut reader = csv_reader(path)?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .clone();
    let id_col = column(&headers, "audiocap_id", path)?;
    let youtube_col = column(&headers, "youtube_id", path)?;
    let start_col = column(&headers, "start_time", path)?;
    let caption_col = column(&headers, "caption", path)?;
    let mut segments: Vec<AudioCapsSegment> = Vec::new();
    let mut segment_of: HashMap<(String, String), usize> = HashMap::new();
    let mut line_of_id: HashMap<String, usize> = HashMap::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let record =
            record.with_context(|| format!("{}: line {line} is not valid CSV", path.display()))?;
        let field = |c: usize| record.get(c).unwrap_or("").trim().to_string();
        let (audiocap_id, youtube_id, start_time, caption) = (
            field(id_col),
            field(youtube_col),
            normalise_start_time(&field(start_col)),
            field(caption_col),
        );
        if audiocap_id.is_empty() || youtube_id.is_empty() || start_time.is_empty() {
            bail!(
                "{}: line {line} lacks its audiocap_id, youtube_id or start_time",
                path.display()
            );
        }
        if caption.is_empty() {
            bail!(
                "{}: line {line} (audiocap_id {audiocap_id}) has no caption",
                path.display()
            );
        }
        if let Some(first) = line_of_id.insert(audiocap_id.clone(), line) {
            bail!(
                "{}: audiocap_id {audiocap_id} is listed twice (lines {first} and {line})",
                path.display()
            );
        }
        let key = (youtube_id.clone(), start_time.clone());
        let index = *segment_of.entry(key).or_insert_with(|| {
            segments.push(AudioCapsSegment {
                youtube_id,
                start_time,
                audiocap_ids: Vec::new(),
                captions: Vec::new(),
            });
            segments.len() - 1
        });
        segments[index].audiocap_ids.push(audiocap_id);
        segments[index].captions.push(caption);
    }
    Ok(segments)
}

/// Reads an AudioCaps split: groups its rows by audio file, skips the clips without audio.
fn open_audiocaps(root: &Path, split: &str) -> Result<Dataset> {
    let layout = Layout::AudioCaps {
        split: split.to_string(),
    };
    let captions_path = layout.captions_file(root);
    if !captions_path.is_file() {
        bail!(
            "{} not found{}",
            captions_path.display(),
            missing_captions_hint(root, &layout)
        );
    }
    let segments = read_audiocaps_csv(&captions_path)?;
    if segments.is_empty() {
        bail!("{} lists no clips", captions_path.display());
    }
    let dirs = audiocaps_audio_dirs(root, split);
    let index = index_audio_files(root, &dirs)?;
    let mut clips: Vec<Clip> = Vec::new();
    // Segments that resolve to one file (a video named by its id alone, listed with two start
    // times) share one clip: one audio file is one clip, whatever the CSV says.
    let mut clip_of_file: HashMap<String, usize> = HashMap::new();
    let mut skipped = Vec::new();
    for segment in segments {
        let names = audiocaps_audio_names(
            &segment.audiocap_ids,
            &segment.youtube_id,
            &segment.start_time,
        );
        let Some(file_name) = names.iter().find_map(|name| index.get(name)) else {
            skipped.push(format!(
                "{} at {} s (audiocap_id {})",
                segment.youtube_id,
                segment.start_time,
                segment.audiocap_ids.join("/")
            ));
            continue;
        };
        match clip_of_file.get(file_name) {
            Some(&i) => clips[i].captions.extend(segment.captions),
            None => {
                clip_of_file.insert(file_name.clone(), clips.len());
                clips.push(Clip {
                    file_name: file_name.clone(),
                    path: root.join(file_name),
                    captions: segment.captions,
                    label: None,
                    recording: format!("youtube:{}", segment.youtube_id),
                    source: None,
                    kind: None,
                });
            }
        }
    }
    if clips.is_empty() {
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "none of the {} clips listed in {} has an audio file: searched {} for <audiocap_id>, <youtube_id>_<start_time>, Y<youtube_id> or <youtube_id> with one of the extensions {}",
            skipped.len(),
            captions_path.display(),
            searched.join(", "),
            AUDIO_EXTENSIONS.join(", ")
        );
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        layout,
        clips,
        skipped,
    })
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

/// Class-level queries (`class,query` CSV, a header line first): each query with the index of
/// its class in `classes` (sorted, as the labels' classes are). Held-out phrasings for
/// validation, or a user's own queries for a labelled library (`eval --queries`).
pub fn read_class_queries(path: &Path, classes: &[String]) -> Result<Vec<(usize, String)>> {
    let mut reader = csv_reader(path)?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .clone();
    let (class_col, query_col) = (
        column(&headers, "class", path)?,
        column(&headers, "query", path)?,
    );
    let mut out = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let record =
            record.with_context(|| format!("{}: line {line} is not valid CSV", path.display()))?;
        let class = record.get(class_col).unwrap_or("").trim();
        let query = record.get(query_col).unwrap_or("").trim();
        let Ok(index) = classes.binary_search_by(|c| c.as_str().cmp(class)) else {
            bail!(
                "{}: line {line}: class {class:?} is not one of the labels' {} classes ({}, ...)",
                path.display(),
                classes.len(),
                classes
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if query.is_empty() {
            bail!("{}: line {line}: the query is empty", path.display());
        }
        out.push((index, query.to_string()));
    }
    if out.is_empty() {
        bail!(
            "{} holds no queries: write lines `class,query` under the header",
            path.display()
        );
    }
    Ok(out)
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

/// One row of a generic dataset's `labels.csv`: the class, and the optional columns
/// `recording` (the group a split keeps together, for names [`recording_id`] cannot read),
/// `source` and `kind` (see [`Clip`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    pub class: String,
    pub recording: Option<String>,
    pub source: Option<String>,
    pub kind: Option<String>,
}

/// Reads `file_name,class[,recording][,source][,kind][,...]` rows into a map.
pub fn read_label_rows(path: &Path) -> Result<HashMap<String, LabelRow>> {
    let mut reader = csv_reader(path)?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .clone();
    let file_col = column(&headers, "file_name", path)?;
    let class_col = column(&headers, "class", path)?;
    let optional = |name: &str| column(&headers, name, path).ok();
    let (recording_col, source_col, kind_col) =
        (optional("recording"), optional("source"), optional("kind"));
    let mut labels = HashMap::new();
    for (n, record) in reader.records().enumerate() {
        let record = record
            .with_context(|| format!("{}: line {} is not valid CSV", path.display(), n + 2))?;
        let cell = |col: Option<usize>| {
            col.and_then(|c| record.get(c))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let (Some(file), Some(class)) = (cell(Some(file_col)), cell(Some(class_col))) else {
            continue;
        };
        labels.insert(
            file,
            LabelRow {
                class,
                recording: cell(recording_col),
                source: cell(source_col),
                kind: cell(kind_col),
            },
        );
    }
    Ok(labels)
}

/// Reads `file_name,class[,...]` rows into a map (the classes of [`read_label_rows`]).
pub fn read_labels(path: &Path) -> Result<HashMap<String, String>> {
    Ok(read_label_rows(path)?
        .into_iter()
        .map(|(file, row)| (file, row.class))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDir;

    #[test]
    fn labels_may_name_the_recording_source_and_kind() {
        let dir = TempDir::new("generic-groups");
        std::fs::create_dir_all(dir.0.join("audio")).unwrap();
        for f in ["rain-p0.wav", "rain-p1.wav", "dog.wav"] {
            std::fs::write(dir.0.join("audio").join(f), b"x").unwrap();
        }
        std::fs::write(
            dir.0.join("captions.csv"),
            "file_name,caption_1\nrain-p0.wav,rain\nrain-p1.wav,rain\ndog.wav,a dog\n",
        )
        .unwrap();
        std::fs::write(
            dir.0.join("labels.csv"),
            "file_name,class,recording,source,concept,kind\n\
             rain-p0.wav,rain,pkg:rain.ogg,pkg,rain,background\n\
             rain-p1.wav,rain,pkg:rain.ogg,pkg,rain,background\n\
             dog.wav,dog,,esc50,dog,event\n",
        )
        .unwrap();
        let data = Dataset::open(&dir.0, &Layout::Generic).unwrap();
        // Pieces of one file are one recording; an empty cell falls back to the file name.
        assert_eq!(data.clips[0].recording, "pkg:rain.ogg");
        assert_eq!(data.clips[1].recording, "pkg:rain.ogg");
        assert_eq!(data.clips[2].recording, "file:dog");
        assert_eq!(data.clips[0].kind.as_deref(), Some("background"));
        assert_eq!(data.clips[2].source.as_deref(), Some("esc50"));
        assert_eq!(data.clips[2].label.as_deref(), Some("dog"));
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

    /// A valid 16-bit mono WAV of `samples` zeros at 16 kHz.
    fn tiny_wav(samples: usize) -> Vec<u8> {
        let data_len = (samples * 2) as u32;
        let mut wav = b"RIFF".to_vec();
        wav.extend_from_slice(&(36 + data_len).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
        wav.extend_from_slice(&1u16.to_le_bytes()); // mono
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.extend_from_slice(&32_000u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&data_len.to_le_bytes());
        wav.resize(wav.len() + samples * 2, 0);
        wav
    }

    fn write_audio(dir: &Path, relative: &str) {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, tiny_wav(160)).unwrap();
    }

    #[test]
    fn reads_audiocaps_splits_grouping_rows_by_clip_and_skipping_missing_audio() {
        let dir = TempDir::new("audiocaps");
        std::fs::write(
            dir.0.join("train.csv"),
            "audiocap_id,youtube_id,start_time,caption\n\
             91139,r1nicOVtvkQ,130,\"A woman talks, then a dog barks\"\n\
             58146,UDGBjjwyaqE,20,\"Water trickles \"\"softly\"\"\"\n\
             11542,gone1234567,0,A car passes\n\
             502,-0RWZT-miFs,30.0,Rain on a roof\n",
        )
        .unwrap();
        // Three namings in three folders; the missing clip has no file anywhere.
        write_audio(&dir.0, "audio/train/91139.wav");
        write_audio(&dir.0, "audio/UDGBjjwyaqE_20.flac");
        write_audio(&dir.0, "train/Y-0RWZT-miFs.mp3");
        write_audio(&dir.0, "audio/train/unrelated.wav");
        std::fs::write(dir.0.join("audio/train/notes.txt"), "not audio").unwrap();

        let train = Dataset::open(&dir.0, &Layout::audiocaps("development")).unwrap();
        assert_eq!(train.layout.describe(), "audiocaps:train");
        let names: Vec<&str> = train.clips.iter().map(|c| c.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "audio/train/91139.wav",
                "audio/UDGBjjwyaqE_20.flac",
                "train/Y-0RWZT-miFs.mp3"
            ]
        );
        assert_eq!(train.clips[0].path, dir.0.join("audio/train/91139.wav"));
        assert_eq!(train.clips[0].captions, ["A woman talks, then a dog barks"]);
        assert_eq!(train.clips[1].captions, ["Water trickles \"softly\""]);
        assert_eq!(train.clips[0].recording, "youtube:r1nicOVtvkQ");
        assert_eq!(train.skipped.len(), 1);
        assert!(
            train.skipped[0].contains("gone1234567"),
            "{:?}",
            train.skipped
        );
        let summary = train.skipped_summary();
        assert!(
            summary.starts_with("1 of 4 audiocaps:train clips") && summary.contains("gone1234567"),
            "{summary}"
        );

        // Val: five rows per clip become one clip with five captions, whichever row's id names
        // the file; two start times of one video are two clips of one recording.
        let mut val = String::from("audiocap_id,youtube_id,start_time,caption\n");
        for (i, (video, start)) in [("vidA", 10), ("vidB", 0), ("vidA", 40)].iter().enumerate() {
            for k in 0..5 {
                let id = 100 + 10 * i + k;
                val.push_str(&format!(
                    "{id},{video},{start},\"caption {k}, of {video}@{start}\"\n"
                ));
            }
        }
        std::fs::write(dir.0.join("val.csv"), val).unwrap();
        write_audio(&dir.0, "audio/val/103.ogg");
        write_audio(&dir.0, "audio/val/vidB_0.wav");
        write_audio(&dir.0, "audio/val/124.wav");
        let val = Dataset::open(&dir.0, &Layout::audiocaps("val")).unwrap();
        assert!(val.skipped.is_empty());
        assert_eq!(val.clips.len(), 3);
        assert_eq!(val.clips[0].file_name, "audio/val/103.ogg");
        assert_eq!(val.clips[0].captions.len(), 5);
        assert_eq!(val.clips[0].captions[4], "caption 4, of vidA@10");
        assert_eq!(val.clips[1].file_name, "audio/val/vidB_0.wav");
        assert_eq!(val.caption_count(), 15);
        assert_eq!(val.clips[0].recording, val.clips[2].recording);
        assert_ne!(val.clips[0].recording, val.clips[1].recording);
        assert_eq!(
            Layout::audiocaps("train").default_validation(&dir.0),
            Some(Layout::audiocaps("val"))
        );
        assert_eq!(Layout::audiocaps("val").default_validation(&dir.0), None);

        // A folder named by YouTube id alone: two segments of one video share the file.
        std::fs::remove_dir_all(dir.0.join("audio/val")).unwrap();
        write_audio(&dir.0, "audio/vidA.wav");
        let val = Dataset::open(&dir.0, &Layout::audiocaps("validation")).unwrap();
        assert_eq!(val.clips.len(), 1);
        assert_eq!(val.clips[0].captions.len(), 10);
        assert_eq!(val.skipped.len(), 1);

        // No audio at all is an error that says where it looked; so is a wrong folder.
        let error = format!(
            "{:#}",
            Dataset::open(&dir.0, &Layout::audiocaps("test")).unwrap_err()
        );
        assert!(
            error.contains("test.csv not found") && error.contains("train, val or test"),
            "{error}"
        );
        std::fs::write(
            dir.0.join("test.csv"),
            "audiocap_id,youtube_id,start_time,caption\n1,x,0,a\n2,x,0,b\n",
        )
        .unwrap();
        let error = format!(
            "{:#}",
            Dataset::open(&dir.0, &Layout::audiocaps("test")).unwrap_err()
        );
        assert!(
            error.contains("none of the 1 clips") && error.contains("<youtube_id>_<start_time>"),
            "{error}"
        );
        std::fs::write(
            dir.0.join("test.csv"),
            "audiocap_id,youtube_id,start_time,caption\n1,x,0,a\n1,y,0,b\n",
        )
        .unwrap();
        let error = format!(
            "{:#}",
            Dataset::open(&dir.0, &Layout::audiocaps("test")).unwrap_err()
        );
        assert!(error.contains("listed twice (lines 2 and 3)"), "{error}");
        let error = format!("{:#}", Dataset::open(&dir.0, &Layout::Generic).unwrap_err());
        assert!(error.contains("--layout audiocaps"), "{error}");
    }

    #[test]
    fn layouts_read_back_their_descriptions() {
        for layout in [
            Layout::Generic,
            Layout::Clotho {
                split: "development".into(),
            },
            Layout::audiocaps("test"),
        ] {
            assert_eq!(Layout::parse(&layout.describe()).unwrap(), layout);
        }
        assert_eq!(
            Layout::parse("audiocaps:evaluation").unwrap(),
            Layout::audiocaps("test")
        );
        assert_eq!(Layout::audiocaps("mine").split(), Some("mine"));
        assert_eq!(
            Layout::Clotho {
                split: "development".into()
            }
            .with_split("evaluation")
            .describe(),
            "clotho:evaluation"
        );
        assert_eq!(Layout::Generic.with_split("x"), Layout::Generic);
        for bad in ["x", "clotho:", "audiocaps", "generic:x"] {
            assert!(Layout::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_class_queries_and_names_the_line_of_a_bad_one() {
        let dir = TempDir::new("class-queries");
        let classes: Vec<String> = ["cat", "dog", "rain"].map(String::from).to_vec();
        let path = dir.0.join("queries.csv");
        // Columns in any order, quoted commas, whitespace trimmed, classes by sorted index.
        std::fs::write(
            &path,
            "query,class\n\"a dog barks, then growls\",dog\n  rain on a tin roof ,rain\na cat purring,cat\n",
        )
        .unwrap();
        assert_eq!(
            read_class_queries(&path, &classes).unwrap(),
            [
                (1, "a dog barks, then growls".to_string()),
                (2, "rain on a tin roof".to_string()),
                (0, "a cat purring".to_string()),
            ]
        );

        let error_of = |text: &str| {
            std::fs::write(&path, text).unwrap();
            format!("{:#}", read_class_queries(&path, &classes).unwrap_err())
        };
        let error = error_of("class,query\ndog,a dog\nunicorn,a unicorn neighing\n");
        assert!(
            error.contains(&path.display().to_string())
                && error.contains("line 3")
                && error.contains("\"unicorn\"")
                && error.contains("3 classes"),
            "{error}"
        );
        let error = error_of("class,query\ndog,a dog\nrain,  \n");
        assert!(
            error.contains(&path.display().to_string())
                && error.contains("line 3: the query is empty"),
            "{error}"
        );
        let error = error_of("class,text\ndog,a dog\n");
        assert!(
            error.contains(&path.display().to_string()) && error.contains("no column \"query\""),
            "{error}"
        );
        let error = error_of("class,query\n");
        assert!(error.contains("holds no queries"), "{error}");
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
