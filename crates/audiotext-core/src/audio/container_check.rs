//! Container headers checked against the file's size before symphonia reads them (pure: bytes
//! in, verdict out; `decode` supplies the bytes).
//!
//! symphonia trusts the counts and lengths a container declares and allocates them up front:
//! an MP4 sample table `Vec::with_capacity(entry_count)` (stsz, stsc, stts, stco, co64), a
//! packet buffer of a sample's declared size, a tag's `vec![0; len]`. A 45 KB file with one
//! mutated count asks for gigabytes, and an allocation failure aborts the host process. Every
//! count or length checked here is one that reaches such an allocation: it must fit in the
//! bytes that hold it (a table of N entries of k bytes needs N * k bytes of its atom, a chunk or
//! a tag frame must fit in its parent), and a packet must fit in the file. So no input of S
//! bytes makes the decoder allocate much more than S at once.
//!
//! What each check guards (symphonia 0.5.5):
//! - MP4: every atom fits in its parent and in the file (`hdlr`, `ilst` data and other atoms
//!   are read whole by their size), except a top-level `mdat` cut short (a truncated file
//!   decodes up to the cut); the sample tables `stsz`, `stsc`, `stts`, `ctts`, `stss`, `stco`,
//!   `co64`, `elst`, `trun`, `sidx` hold their declared entries; sample sizes (`stsz`, `trun`,
//!   `tfhd`, `trex` defaults) fit in the file, since each packet is read into a buffer of that
//!   size; the `esds` descriptors fit in their parents (the decoder config is read whole by its
//!   declared size) and a `dfLa` metadata block fits in its atom.
//! - WAV (RIFF): every chunk before `data` fits in the file (`LIST`/`INFO` values are read
//!   whole by their declared length), and every `INFO` entry fits in its `LIST`.
//! - FLAC: every metadata block fits in the file; a `PICTURE` block's MIME type, description
//!   and data and a `VORBIS_COMMENT` block's strings fit in their block.
//! - ID3v2 (before MP3 or ADTS): the tag fits in the file, and every frame in the tag.
//! - Ogg (pages are bounded by their format: 255 segments of 255 bytes): the strings of a
//!   Vorbis or Opus comment header, and FLAC-in-Ogg's metadata blocks, fit in their packet.
//! - Matroska/WebM: every element fits in its parent (binary elements and blocks are read
//!   whole by their size), except a Segment or Cluster of unknown size or cut short; the frame
//!   sizes of a laced block fit in the block.
//! - ALAC (in MP4): the frame length, which sizes the decoder's buffers, is at most
//!   `MAX_FRAME_SAMPLES`.
//!
//! - Vorbis (in Ogg or Matroska; `vorbis_setup`, on the decoder's headers before it is made):
//!   the codebooks' entries and lookup tables (entries x dimensions) together stay under a
//!   fixed bound, since a length-ordered codebook declares 2^24 entries in a few bits.

/// Why a container is refused. Both are shown with the file's name by `decode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A header element runs past the end of the file: the file was cut short.
    Truncated,
    /// A declared count or length does not fit in the bytes that hold it; the text says which
    /// (e.g. "its sample table (stsz) declares 100000000 entries but holds room for 12").
    Corrupt(String),
}

pub type Check = Result<(), Refusal>;

/// Reads up to `len` bytes at `offset` (fewer at the end of the file).
pub type ReadAt<'a> = dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>> + 'a;

fn corrupt(what: String) -> Check {
    Err(Refusal::Corrupt(what))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn fourcc(t: &[u8]) -> String {
    t.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Checks the headers of a file of `file_len` bytes whose container `decode::sniff` recognised
/// (`mp4`, `wav`, `flac`, `mp3`, `aac`; others pass). `read_at` may fail: the error is returned
/// as is.
pub fn check(container: &str, file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
    match container {
        "mp4" => mp4_top_level(file_len, read_at),
        "wav" => riff(file_len, read_at),
        "flac" => flac(file_len, read_at),
        "mp3" | "aac" => id3v2(file_len, read_at),
        "ogg" => ogg(file_len, read_at),
        "mkv" => {
            let mut walk = Ebml { read_at, file_len };
            walk.elements(0, file_len, 0)
        }
        _ => Ok(Ok(())),
    }
}

// ---- Truncation: more audio declared than held ----------------------------------------------

/// What a container says about its length, read from its headers and, for Ogg, its tail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeclaredLength {
    /// The audio data runs past the end of the file, as its headers declare it: e.g. "its
    /// data chunk declares 96000 bytes of samples, the file holds 16 of them".
    pub shortfall: Option<String>,
    /// Whether symphonia's frame count is one the file declares (WAV's data chunk, FLAC's
    /// STREAMINFO, an MP4's sample tables, an MP3's Xing/Info or VBRI header), so that
    /// decoding fewer frames means the file lost some. Otherwise the count is an estimate
    /// (an MP3 without such a header) or read from the file's own last page (Ogg).
    pub frames_are_declared: bool,
    /// The header's length field holds no length: a WAV written to a pipe, whose data chunk
    /// says 0 or 0xFFFFFFFF bytes. symphonia's frame count is then meaningless.
    pub length_unknown: bool,
}

/// How much audio the container of a file of `file_len` bytes declares against what it holds
/// (for `check`'s containers; `decode` decides what a shortfall means).
pub fn declared_length(
    container: &str,
    file_len: u64,
    read_at: &mut ReadAt,
) -> std::io::Result<DeclaredLength> {
    Ok(match container {
        "wav" => {
            let data = riff_data_shortfall(file_len, read_at)?;
            DeclaredLength {
                frames_are_declared: !data.length_unknown,
                ..data
            }
        }
        "mp4" => DeclaredLength {
            shortfall: mp4_mdat_shortfall(file_len, read_at)?,
            frames_are_declared: true,
            length_unknown: false,
        },
        "ogg" => DeclaredLength {
            shortfall: ogg_tail_shortfall(file_len, read_at)?,
            frames_are_declared: false,
            length_unknown: false,
        },
        "flac" => DeclaredLength {
            shortfall: None,
            frames_are_declared: true,
            length_unknown: false,
        },
        "mp3" => DeclaredLength {
            shortfall: None,
            frames_are_declared: mp3_declares_frames(read_at)?,
            length_unknown: false,
        },
        _ => DeclaredLength::default(),
    })
}

/// The `data` chunk's declared size against the bytes after its header. A size of 0 or
/// 0xFFFFFFFF is what streaming writers leave when they never come back to fill it in: no
/// length is declared.
fn riff_data_shortfall(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<DeclaredLength> {
    let mut pos = 12u64;
    let mut found = DeclaredLength::default();
    while pos + 8 <= file_len {
        let head = read_at(pos, 8)?;
        let (Some(id), Some(len)) = (head.get(..4), le32(&head, 4)) else {
            break;
        };
        let len = u64::from(len);
        if id == b"data" {
            let held = file_len - pos - 8;
            found.length_unknown = len == 0 || len == u64::from(u32::MAX);
            if !found.length_unknown && len > held {
                found.shortfall = Some(format!(
                    "its data chunk declares {len} bytes of samples, the file holds {held} of them"
                ));
            }
            break;
        }
        pos += 8 + len + (len & 1);
    }
    Ok(found)
}

/// A top-level `mdat` (the samples) that runs past the end of the file.
fn mp4_mdat_shortfall(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Option<String>> {
    let mut pos = 0u64;
    while pos < file_len {
        let head = read_at(pos, 16)?;
        let Some(h) = atom_header(&head) else {
            return Ok(None);
        };
        let left = file_len - pos;
        let Some(size) = h.size.filter(|&n| n >= h.header_len) else {
            return Ok(None);
        };
        if size > left {
            return Ok((&h.atype == b"mdat").then(|| {
                format!(
                    "its mdat atom declares {} bytes of samples, the file holds {} of them",
                    size - h.header_len,
                    left.saturating_sub(h.header_len)
                )
            }));
        }
        pos += size;
    }
    Ok(None)
}

/// The largest Ogg page: a 27-byte header, 255 lacing values, 255 segments of 255 bytes.
const MAX_OGG_PAGE: u64 = 27 + 255 + 255 * 255;

/// The Ogg CRC-32 (polynomial 0x04C11DB7, not reflected, no final xor).
fn ogg_crc(bytes: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in bytes {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The length of the Ogg page at the start of `b` if its header is there whole.
fn ogg_page_len(b: &[u8]) -> Option<usize> {
    if b.len() < 27 || &b[..4] != b"OggS" || b[4] != 0 {
        return None;
    }
    let n_segments = usize::from(b[26]);
    let table = b.get(27..27 + n_segments)?;
    Some(27 + n_segments + table.iter().map(|&l| usize::from(l)).sum::<usize>())
}

/// Whether the page at the start of `b` is whole and its checksum holds.
fn ogg_page_is_sound(b: &[u8]) -> bool {
    let Some(len) = ogg_page_len(b).filter(|&n| n <= b.len()) else {
        return false;
    };
    let mut page = b[..len].to_vec();
    let stored = le32(&page, 22).expect("27 bytes");
    page[22..26].fill(0);
    ogg_crc(&page) == stored
}

/// The last page cut short: within the last two pages' worth of bytes, the first page whose
/// checksum holds starts a chain of pages that must end exactly at the end of the file. The
/// checksum tells a real page from "OggS" inside compressed data.
fn ogg_tail_shortfall(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Option<String>> {
    let start = file_len.saturating_sub(2 * MAX_OGG_PAGE);
    let tail = read_at(start, (file_len - start) as usize)?;
    let Some(first) = (0..tail.len().saturating_sub(3))
        .filter(|&i| &tail[i..i + 4] == b"OggS")
        .find(|&i| ogg_page_is_sound(&tail[i..]))
    else {
        return Ok(None);
    };
    let mut pos = first;
    while pos < tail.len() {
        let Some(len) = ogg_page_len(&tail[pos..]) else {
            // Not a page (or a header cut inside itself): leave it to the demuxer, which
            // resynchronises or ends.
            return Ok(None);
        };
        if pos + len > tail.len() {
            return Ok(Some(format!(
                "its last Ogg page declares {len} bytes, the file holds {} of them",
                tail.len() - pos
            )));
        }
        pos += len;
    }
    Ok(None)
}

/// ID3v2 tags read in front of the audio at most: more than a few in a row is not a tagger's
/// doing, and each costs a read.
const MAX_STACKED_ID3_TAGS: usize = 8;

/// The bytes of the ID3v2 tag whose first 10 bytes are `head`: the header, a syncsafe size,
/// and a 10-byte footer when its flag is set.
fn id3v2_tag_len(head: &[u8]) -> u64 {
    let footer = if head[5] & 0x10 != 0 { 10 } else { 0 };
    10 + syncsafe(&head[6..10]) + footer
}

/// Where the ID3v2 tags at the start of a file (none, one, or several in a row) end.
pub fn id3v2_end(read_at: &mut ReadAt) -> std::io::Result<u64> {
    let mut at = 0u64;
    for _ in 0..MAX_STACKED_ID3_TAGS {
        let head = read_at(at, 10)?;
        if head.len() < 10 || &head[..3] != b"ID3" {
            break;
        }
        at = at.saturating_add(id3v2_tag_len(&head));
    }
    Ok(at)
}

/// Whether the first MPEG frame (after any ID3v2 tags) is a Xing/Info header with a frame
/// count or a VBRI header: the only MP3s whose length is declared rather than estimated.
fn mp3_declares_frames(read_at: &mut ReadAt) -> std::io::Result<bool> {
    let at = id3v2_end(read_at)?;
    // The Xing tag follows the side information (at most 32 bytes); VBRI sits at 36.
    let frame = read_at(at, 4 + 32 + 12)?;
    let xing = (4..frame.len().saturating_sub(7)).find(|&i| {
        (&frame[i..i + 4] == b"Xing" || &frame[i..i + 4] == b"Info") && frame[i + 7] & 0x01 != 0
    });
    let vbri = frame.get(36..40) == Some(b"VBRI".as_slice());
    Ok(xing.is_some() || vbri)
}

// ---- MP4 ----------------------------------------------------------------------------------

/// An atom's header: its type, header length and total length (`None`: to the end of its
/// parent).
struct AtomHeader {
    atype: [u8; 4],
    header_len: u64,
    size: Option<u64>,
}

/// Parses an atom header from the start of `b`; `None` when `b` is too short.
fn atom_header(b: &[u8]) -> Option<AtomHeader> {
    let size32 = be32(b, 0)?;
    let atype: [u8; 4] = b.get(4..8)?.try_into().ok()?;
    Some(match size32 {
        0 => AtomHeader {
            atype,
            header_len: 8,
            size: None,
        },
        1 => AtomHeader {
            atype,
            header_len: 16,
            size: Some(be64(b, 8)?),
        },
        n => AtomHeader {
            atype,
            header_len: 8,
            size: Some(u64::from(n)),
        },
    })
}

/// Top-level atoms are walked through `read_at` (an `mdat` is never read); `moov` and `moof`,
/// which hold the tables, are read whole (they fit in the file: checked first) and walked in
/// memory.
fn mp4_top_level(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
    let mut pos = 0u64;
    while pos < file_len {
        let head = read_at(pos, 16)?;
        let Some(h) = atom_header(&head) else {
            // Fewer than a header's bytes left: symphonia reports the end of the file.
            return Ok(Ok(()));
        };
        let left = file_len - pos;
        let size = h.size.unwrap_or(left);
        if size < h.header_len {
            return Ok(corrupt(format!(
                "its {} atom declares {size} bytes, less than its own header",
                fourcc(&h.atype)
            )));
        }
        if size > left {
            if &h.atype == b"mdat" {
                // Cut inside the audio data: the samples before the cut decode.
                return Ok(Ok(()));
            }
            return Ok(Err(Refusal::Truncated));
        }
        if matches!(&h.atype, b"moov" | b"moof") {
            let body = read_at(pos + h.header_len, (size - h.header_len) as usize)?;
            if (body.len() as u64) < size - h.header_len {
                return Ok(Err(Refusal::Truncated));
            }
            if let Err(e) = mp4_children(&body, file_len) {
                return Ok(Err(e));
            }
        }
        pos += size;
    }
    Ok(Ok(()))
}

/// Atoms whose payload is a sequence of atoms, and how many bytes precede them.
fn mp4_container_skip(atype: &[u8; 4], payload: &[u8], in_ilst: bool) -> Option<usize> {
    match atype {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"edts" | b"dinf" | b"udta" | b"ilst"
        | b"moof" | b"traf" | b"mvex" | b"mfra" | b"wave" => Some(0),
        // ISO `meta` is a full atom (version and flags first); QuickTime's is not.
        b"meta" => Some(if payload.get(4..8) == Some(b"hdlr") {
            0
        } else {
            4
        }),
        // An `ilst` item (`©nam`, `----`, ...) holds `data`, `mean` and `name` atoms.
        _ if in_ilst => Some(0),
        _ => None,
    }
}

/// How deep the walks descend into nested atoms or elements. Real files nest about 10 deep;
/// symphonia reads each structure at its fixed depth, and a file of nested containers must not
/// overflow the stack here.
const MAX_DEPTH: usize = 32;

/// Walks the atoms in `b` (a parent's payload).
fn mp4_children(b: &[u8], file_len: u64) -> Check {
    mp4_walk(b, file_len, false, 0)
}

fn mp4_walk(b: &[u8], file_len: u64, in_ilst: bool, depth: usize) -> Check {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut pos = 0usize;
    while pos + 8 <= b.len() {
        let h = atom_header(&b[pos..]).ok_or(Refusal::Truncated)?;
        let left = (b.len() - pos) as u64;
        let size = h.size.unwrap_or(left);
        let name = fourcc(&h.atype);
        if size < h.header_len || size > left {
            return corrupt(format!(
                "its {name} atom declares {size} bytes, while its parent holds {left}"
            ));
        }
        let payload = &b[pos + h.header_len as usize..pos + size as usize];
        if let Some(skip) = mp4_container_skip(&h.atype, payload, in_ilst) {
            let inner = payload.get(skip..).unwrap_or(&[]);
            mp4_walk(inner, file_len, &h.atype == b"ilst", depth + 1)?;
        } else {
            mp4_leaf(&h.atype, payload, file_len, depth)?;
        }
        pos += size as usize;
    }
    Ok(())
}

/// A table of `count` entries of `entry_len` bytes starting at `at` in `payload`.
fn mp4_table(name: &str, payload: &[u8], at: usize, count: u64, entry_len: u64) -> Check {
    let room = (payload.len().saturating_sub(at) as u64) / entry_len;
    if count > room {
        return corrupt(format!(
            "its {} ({name}) declares {count} entries but holds room for {room}",
            table_role(name)
        ));
    }
    Ok(())
}

fn table_role(name: &str) -> &'static str {
    match name {
        "stsz" | "stsc" | "stts" | "ctts" | "stss" | "stco" | "co64" => "sample table",
        "trun" => "fragment's sample table",
        "elst" => "edit list",
        "sidx" => "segment index",
        _ => "table",
    }
}

fn sample_size_fits(name: &str, size: u64, file_len: u64) -> Check {
    if size > file_len {
        return corrupt(format!(
            "its sample table ({name}) declares a sample of {size} bytes, larger than the whole file ({file_len} bytes)"
        ));
    }
    Ok(())
}

/// Full atoms start with a version byte and 3 bytes of flags.
fn mp4_leaf(atype: &[u8; 4], p: &[u8], file_len: u64, depth: usize) -> Check {
    let name = fourcc(atype);
    let short = || corrupt(format!("its {name} atom is too short for its own fields"));
    let version = p.first().copied().unwrap_or(0);
    let flags = be32(p, 0).unwrap_or(0) & 0x00ff_ffff;
    match atype {
        b"stsz" => {
            let (Some(sample_size), Some(count)) = (be32(p, 4), be32(p, 8)) else {
                return short();
            };
            if sample_size != 0 {
                return sample_size_fits(&name, u64::from(sample_size), file_len);
            }
            mp4_table(&name, p, 12, u64::from(count), 4)?;
            for i in 0..count as usize {
                let size = be32(p, 12 + 4 * i).expect("checked room");
                sample_size_fits(&name, u64::from(size), file_len)?;
            }
            Ok(())
        }
        b"stsc" => counted(&name, p, 12),
        b"stts" | b"ctts" => counted(&name, p, 8),
        b"stss" | b"stco" => counted(&name, p, 4),
        b"co64" => counted(&name, p, 8),
        b"elst" => counted(&name, p, if version == 1 { 20 } else { 12 }),
        b"sidx" => {
            // version, flags, reference_ID, timescale, then 2 x 32 or 2 x 64 bits of time,
            // 16 reserved bits and the reference count.
            let at = if version == 0 { 20 } else { 28 };
            let Some(b) = p.get(at..at + 4) else {
                return short();
            };
            let count = u64::from(u16::from_be_bytes([b[2], b[3]]));
            mp4_table(&name, p, at + 4, count, 12)
        }
        b"trun" => {
            let Some(count) = be32(p, 4) else {
                return short();
            };
            let mut at = 8;
            at += 4 * usize::from(flags & 0x1 != 0); // data offset
            at += 4 * usize::from(flags & 0x4 != 0); // first sample flags
            let per_sample: [(u32, usize); 4] = [(0x100, 4), (0x200, 4), (0x400, 4), (0x800, 4)];
            let entry_len: usize = per_sample
                .iter()
                .filter(|(bit, _)| flags & bit != 0)
                .map(|(_, n)| n)
                .sum();
            if entry_len == 0 {
                return Ok(());
            }
            mp4_table(&name, p, at, u64::from(count), entry_len as u64)?;
            if flags & 0x200 != 0 {
                let size_at = at + 4 * usize::from(flags & 0x100 != 0);
                for i in 0..count as usize {
                    let size = be32(p, size_at + entry_len * i).expect("checked room");
                    sample_size_fits(&name, u64::from(size), file_len)?;
                }
            }
            Ok(())
        }
        b"tfhd" => {
            // track_ID, then optional fields in flag order; default sample size is 0x10.
            if flags & 0x10 == 0 {
                return Ok(());
            }
            let at = 8
                + 8 * usize::from(flags & 0x1 != 0)
                + 4 * usize::from(flags & 0x2 != 0)
                + 4 * usize::from(flags & 0x8 != 0);
            match be32(p, at) {
                Some(size) => sample_size_fits(&name, u64::from(size), file_len),
                None => short(),
            }
        }
        b"trex" => match be32(p, 16) {
            Some(size) => sample_size_fits(&name, u64::from(size), file_len),
            None => short(),
        },
        b"alac" => {
            // The ALAC magic cookie: frame length (samples per channel per frame) and channels
            // size the decoder's buffers, whatever the file's size.
            // (Channels, at most 255, are bounded.)
            let Some(frame_length) = be32(p, 4) else {
                return Ok(());
            };
            if frame_length > MAX_FRAME_SAMPLES {
                return corrupt(format!(
                    "its ALAC configuration declares frames of {frame_length} samples (at most {MAX_FRAME_SAMPLES})"
                ));
            }
            Ok(())
        }
        b"stsd" => mp4_stsd(p, file_len, depth),
        b"esds" => esds(p.get(4..).unwrap_or(&[]), 0),
        b"dfLa" => {
            // FLAC metadata blocks after version and flags.
            flac_blocks(p.get(4..).unwrap_or(&[]))
        }
        _ => Ok(()),
    }
}

/// A full atom whose entry count follows its version and flags.
fn counted(name: &str, p: &[u8], entry_len: u64) -> Check {
    match be32(p, 4) {
        Some(count) => mp4_table(name, p, 8, u64::from(count), entry_len),
        None => corrupt(format!("its {name} atom is too short for its own fields")),
    }
}

/// The sample entries symphonia reads as audio (`stsd.rs`).
const AUDIO_SAMPLE_ENTRIES: [&[u8; 4]; 16] = [
    b"mp4a", b"alac", b"fLaC", b"Opus", b".mp3", b"lpcm", b"wave", b"alaw", b"ulaw", b"raw ",
    b"twos", b"sowt", b"in24", b"in32", b"fl32", b"fl64",
];

/// The sample descriptions: each audio sample entry's fixed fields (by its sound description
/// version), then child atoms (`esds`, `wave`, `dfLa`, `alac`, `dOps`).
fn mp4_stsd(p: &[u8], file_len: u64, depth: usize) -> Check {
    let Some(count) = be32(p, 4) else {
        return corrupt("its stsd atom is too short for its own fields".into());
    };
    let mut pos = 8usize;
    for _ in 0..count {
        if pos + 8 > p.len() {
            break;
        }
        let h = atom_header(&p[pos..]).ok_or(Refusal::Truncated)?;
        let left = (p.len() - pos) as u64;
        let size = h.size.unwrap_or(left);
        if size < h.header_len || size > left {
            return corrupt(format!(
                "its sample description ({}) declares {size} bytes, while its stsd atom holds {left}",
                fourcc(&h.atype)
            ));
        }
        let entry = &p[pos + h.header_len as usize..pos + size as usize];
        pos += size as usize;
        if !AUDIO_SAMPLE_ENTRIES.contains(&&h.atype) {
            // Video and other entries have other fixed fields; symphonia skips them.
            continue;
        }
        // SampleEntry (8) + sound description version at 8; v0 fields end at 28, v1 adds 16,
        // v2 is 64 bytes long.
        let fixed = match entry.get(8..10).map(|v| u16::from_be_bytes([v[0], v[1]])) {
            Some(0) => 28,
            Some(1) => 44,
            Some(2) => 64,
            _ => entry.len(),
        };
        if let Some(children) = entry.get(fixed..) {
            mp4_walk(children, file_len, false, depth + 2)?;
        }
    }
    Ok(())
}

/// MPEG-4 descriptors in an `esds` atom (after version and flags): each fits in its parent.
/// ES_Descriptor (3) and DecoderConfigDescriptor (4) hold further descriptors after their own
/// fields; the others are read whole by their declared size.
fn esds(mut b: &[u8], depth: usize) -> Check {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    while b.len() > 2 {
        let tag = b[0];
        let mut size = 0u64;
        let mut n = 1;
        for _ in 0..4 {
            let Some(&v) = b.get(n) else {
                return Err(Refusal::Truncated);
            };
            n += 1;
            size = (size << 7) | u64::from(v & 0x7f);
            if v & 0x80 == 0 {
                break;
            }
        }
        let left = (b.len() - n) as u64;
        if size > left {
            return corrupt(format!(
                "its esds atom has a descriptor (tag {tag}) of {size} bytes, while {left} remain"
            ));
        }
        let body = &b[n..n + size as usize];
        match tag {
            3 => {
                let Some(&flags) = body.get(2) else {
                    return Ok(());
                };
                let mut at = 3;
                if flags & 0x80 != 0 {
                    at += 2;
                }
                if flags & 0x40 != 0 {
                    at += 1 + usize::from(body.get(at).copied().unwrap_or(0));
                }
                if flags & 0x20 != 0 {
                    at += 2;
                }
                esds(body.get(at..).unwrap_or(&[]), depth + 1)?;
            }
            4 => esds(body.get(13..).unwrap_or(&[]), depth + 1)?,
            _ => {}
        }
        b = &b[n + size as usize..];
    }
    Ok(())
}

/// The longest codec frame accepted, in samples per channel (ALAC's default is 4096).
pub const MAX_FRAME_SAMPLES: u32 = 1 << 20;

// ---- Ogg ----------------------------------------------------------------------------------

/// The header packets of the first logical stream (at most `OGG_HEADER_PACKETS`): a Vorbis or
/// Opus comment header's strings, and FLAC-in-Ogg's metadata blocks, must fit in their packet
/// (symphonia allocates each comment's declared length before reading it).
const OGG_HEADER_PACKETS: usize = 3;

fn ogg(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
    let mut pos = 0u64;
    let mut serial = None;
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    while pos < file_len && packets.len() < OGG_HEADER_PACKETS {
        let head = read_at(pos, 27)?;
        if head.len() < 27 || &head[..4] != b"OggS" {
            break; // symphonia resynchronises or ends; nothing to allocate from here
        }
        let page_serial = le32(&head, 14).expect("27 bytes");
        let n_segments = usize::from(head[26]);
        let table = read_at(pos + 27, n_segments)?;
        let body_len: u64 = table.iter().map(|&l| u64::from(l)).sum();
        let body = read_at(pos + 27 + n_segments as u64, body_len as usize)?;
        pos += 27 + n_segments as u64 + body_len;
        if *serial.get_or_insert(page_serial) != page_serial {
            continue;
        }
        let mut at = 0usize;
        for &len in &table {
            let end = (at + usize::from(len)).min(body.len());
            current.extend_from_slice(&body[at.min(end)..end]);
            at = end;
            if len < 255 {
                packets.push(std::mem::take(&mut current));
                if packets.len() == OGG_HEADER_PACKETS {
                    break;
                }
            }
        }
    }
    Ok(ogg_headers(&packets))
}

fn ogg_headers(packets: &[Vec<u8>]) -> Check {
    let Some(first) = packets.first() else {
        return Ok(());
    };
    if first.starts_with(b"\x7fFLAC") {
        // Each later header packet is one metadata block.
        for p in &packets[1..] {
            flac_blocks(p)?;
        }
        return Ok(());
    }
    for p in &packets[1..] {
        let comment = if let Some(rest) = p.strip_prefix(b"\x03vorbis") {
            rest
        } else if let Some(rest) = p.strip_prefix(b"OpusTags") {
            rest
        } else {
            continue;
        };
        flac_block(4, comment)?;
    }
    Ok(())
}

// ---- Vorbis setup header ------------------------------------------------------------------

/// The most codebook entries, and the most lookup values (entries x dimensions), of all of a
/// Vorbis stream's codebooks together: symphonia allocates both per codebook (a byte and an
/// f32 each), and a length-ordered codebook declares 2^24 entries in a few bits. libvorbis's
/// books hold a few thousand.
pub const MAX_VORBIS_CODEBOOK_VALUES: u64 = 1 << 22;

/// Vorbis bit-packing: least significant bit first.
struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..n {
            let byte = *self.b.get(self.pos / 8)?;
            v |= u32::from((byte >> (self.pos % 8)) & 1) << i;
            self.pos += 1;
        }
        Some(v)
    }
    fn skip(&mut self, n: u64) -> Option<()> {
        let end = (self.pos as u64).checked_add(n)?;
        if end > self.b.len() as u64 * 8 {
            return None;
        }
        self.pos = end as usize;
        Some(())
    }
}

fn ilog(x: u32) -> u32 {
    32 - x.leading_zeros()
}

/// The largest r with r^dimensions <= entries (Vorbis I, 9.2.3).
fn lookup1_values(entries: u32, dimensions: u32) -> u64 {
    if dimensions == 0 {
        return 0;
    }
    let mut r = (f64::from(entries).powf(1.0 / f64::from(dimensions))) as u64;
    let fits = |r: u64| {
        (0..dimensions)
            .try_fold(1u64, |acc, _| {
                acc.checked_mul(r).filter(|&p| p <= u64::from(entries))
            })
            .is_some()
    };
    while r > 0 && !fits(r) {
        r -= 1;
    }
    while fits(r + 1) {
        r += 1;
    }
    r
}

/// A Vorbis decoder's headers as symphonia hands them to it (`extra_data`: the identification
/// header, 30 bytes, then the setup header): the codebooks' entries and lookup tables together
/// stay under `MAX_VORBIS_CODEBOOK_VALUES`. Parsing stops at the end of the codebooks or at
/// the first malformed field (the decoder reports those).
pub fn vorbis_setup(extra_data: &[u8]) -> Check {
    let Some(setup) = extra_data
        .get(30..)
        .and_then(|s| s.strip_prefix(b"\x05vorbis"))
    else {
        return Ok(());
    };
    let mut bits = Bits { b: setup, pos: 0 };
    let Some(count) = bits.read(8) else {
        return Ok(());
    };
    let (mut entries_total, mut values_total) = (0u64, 0u64);
    for _ in 0..=count {
        let Some((entries, values)) = vorbis_codebook(&mut bits) else {
            return Ok(());
        };
        entries_total += u64::from(entries);
        values_total += values;
        if entries_total > MAX_VORBIS_CODEBOOK_VALUES || values_total > MAX_VORBIS_CODEBOOK_VALUES {
            return corrupt(format!(
                "its Vorbis codebooks declare {entries_total} entries and {values_total} lookup values (at most {MAX_VORBIS_CODEBOOK_VALUES} of each)"
            ));
        }
    }
    Ok(())
}

/// One codebook: its entries and the size of its lookup table (Vorbis I, 3.2.1); `None` when
/// malformed or cut.
fn vorbis_codebook(bits: &mut Bits) -> Option<(u32, u64)> {
    if bits.read(24)? != 0x564342 {
        return None;
    }
    let dimensions = bits.read(16)?;
    let entries = bits.read(24)?;
    if entries > MAX_VORBIS_CODEBOOK_VALUES as u32 {
        // Refused by the caller before any of its lengths are read.
        return Some((entries, 0));
    }
    if bits.read(1)? == 0 {
        if bits.read(1)? == 1 {
            for _ in 0..entries {
                if bits.read(1)? == 1 {
                    bits.skip(5)?;
                }
            }
        } else {
            bits.skip(5 * u64::from(entries))?;
        }
    } else {
        bits.skip(5)?;
        let mut current = 0u32;
        while current < entries {
            current = current.checked_add(bits.read(ilog(entries - current))?)?;
        }
        if current > entries {
            return None;
        }
    }
    let lookup_type = bits.read(4)?;
    let values = match lookup_type {
        0 => return Some((entries, 0)),
        1 => lookup1_values(entries, dimensions),
        2 => u64::from(entries) * u64::from(dimensions),
        _ => return None,
    };
    bits.skip(64)?; // minimum and delta
    let value_bits = bits.read(4)? + 1;
    bits.skip(1)?; // sequence_p
    bits.skip(values.checked_mul(u64::from(value_bits))?)?;
    // Both lookup types unpack to entries x dimensions values.
    Some((entries, u64::from(entries) * u64::from(dimensions)))
}

// ---- Matroska / WebM ----------------------------------------------------------------------

/// Matroska master elements (they hold elements); anything else is read whole by its size.
fn ebml_is_master(id: u32) -> bool {
    matches!(
        id,
        0x1A45DFA3 // EBML
        | 0x18538067 // Segment
        | 0x114D9B74 // SeekHead
        | 0x4DBB // Seek
        | 0x1549A966 // Info
        | 0x1654AE6B // Tracks
        | 0xAE // TrackEntry
        | 0xE1 // Audio
        | 0xE0 // Video
        | 0x6D80 // ContentEncodings
        | 0x6240 // ContentEncoding
        | 0x1C53BB6B // Cues
        | 0xBB // CuePoint
        | 0xB7 // CueTrackPositions
        | 0x1254C367 // Tags
        | 0x7373 // Tag
        | 0x63C0 // Targets
        | 0x67C8 // SimpleTag
        | 0x1043A770 // Chapters
        | 0x45B9 // EditionEntry
        | 0xB6 // ChapterAtom
        | 0x80 // ChapterDisplay
        | 0x1941A469 // Attachments
        | 0x61A7 // AttachedFile
        | 0x1F43B675 // Cluster
        | 0xA0 // BlockGroup
    )
}

/// A variable-length integer at the start of `b`: (value without the length marker, length,
/// all value bits set). `None` when `b` is too short or the first byte is 0.
fn ebml_vint(b: &[u8]) -> Option<(u64, usize, bool)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return None;
    }
    let mut value = u64::from(first) & (0xff >> len);
    for &x in &b[1..len] {
        value = (value << 8) | u64::from(x);
    }
    let all_ones = value == (1u64 << (7 * len)) - 1;
    Some((value, len, all_ones))
}

struct Ebml<'a, 'b> {
    read_at: &'a mut ReadAt<'b>,
    file_len: u64,
}

impl Ebml<'_, '_> {
    /// The elements in `[start, end)`, `depth` levels below the file.
    fn elements(&mut self, start: u64, end: u64, depth: usize) -> std::io::Result<Check> {
        if depth > MAX_DEPTH {
            return Ok(Ok(()));
        }
        let top = depth == 0;
        let mut pos = start;
        while pos < end {
            let head = (self.read_at)(pos, 12)?;
            let Some((_, id_len, _)) = ebml_vint(&head).filter(|&(_, len, _)| len <= 4) else {
                return Ok(Ok(())); // not an element ID: symphonia reports it
            };
            let id = head[..id_len]
                .iter()
                .fold(0u32, |a, &x| (a << 8) | u32::from(x));
            let Some((size, size_len, unknown)) = ebml_vint(&head[id_len..]) else {
                return Ok(Ok(()));
            };
            let data = pos + (id_len + size_len) as u64;
            if data > end {
                return Ok(Err(Refusal::Truncated));
            }
            let left = end - data;
            let master = ebml_is_master(id);
            // Segment and Cluster may have an unknown size (live streams) or run past a cut.
            let open_ended = matches!(id, 0x18538067 | 0x1F43B675);
            let size = if unknown && master {
                left
            } else if size > left {
                if open_ended || (top && end == self.file_len && master) {
                    left
                } else if end == self.file_len {
                    return Ok(Err(Refusal::Truncated));
                } else {
                    return Ok(corrupt(format!(
                        "its Matroska element 0x{id:X} declares {size} bytes, while its parent holds {left}"
                    )));
                }
            } else {
                size
            };
            if master {
                if let Err(e) = self.elements(data, data + size, depth + 1)? {
                    return Ok(Err(e));
                }
            } else if id == 0xA3 || id == 0xA1 {
                // SimpleBlock, Block: laced frame sizes must fit in the block.
                let head = (self.read_at)(data, size.min(4096) as usize)?;
                if let Err(e) = ebml_lacing(&head, size) {
                    return Ok(Err(e));
                }
            }
            pos = data + size;
        }
        Ok(Ok(()))
    }
}

/// A block's lacing header (`head`: its first bytes; `size`: its whole length).
fn ebml_lacing(head: &[u8], size: u64) -> Check {
    let Some((_, track_len, _)) = ebml_vint(head) else {
        return Ok(());
    };
    let Some(&flags) = head.get(track_len + 2) else {
        return Ok(());
    };
    let mut at = track_len + 3;
    let lacing = (flags >> 1) & 3;
    if lacing == 0 || lacing == 2 {
        return Ok(()); // none, or fixed: sizes divide the block
    }
    let Some(&n) = head.get(at) else {
        return Ok(());
    };
    at += 1;
    let frames = usize::from(n) + 1;
    let mut total = 0u64;
    let mut previous = 0i64;
    for i in 0..frames - 1 {
        let frame = if lacing == 1 {
            // Xiph: sums of bytes, 255 continues.
            let mut sum = 0u64;
            loop {
                let Some(&b) = head.get(at) else {
                    return Ok(());
                };
                at += 1;
                sum += u64::from(b);
                if b != 255 {
                    break;
                }
            }
            sum
        } else {
            // EBML: the first size, then signed differences.
            let Some((v, len, _)) = ebml_vint(&head[at.min(head.len())..]) else {
                return Ok(());
            };
            at += len;
            let value = if i == 0 {
                v as i64
            } else {
                let bias = (1i64 << (7 * len - 1)) - 1;
                previous.saturating_add(v as i64 - bias)
            };
            previous = value;
            if value < 0 {
                return corrupt(format!(
                    "its Matroska block has a laced frame of {value} bytes"
                ));
            }
            value as u64
        };
        total = total.saturating_add(frame);
        if total > size {
            return corrupt(format!(
                "its Matroska block laces frames of {total} bytes into a block of {size}"
            ));
        }
    }
    Ok(())
}

// ---- RIFF / WAVE --------------------------------------------------------------------------

/// Chunks up to `data` (the samples, which may run past a cut) must fit in the file.
fn riff(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
    let mut pos = 12u64;
    while pos + 8 <= file_len {
        let head = read_at(pos, 8)?;
        let (Some(id), Some(len)) = (head.get(..4), le32(&head, 4)) else {
            return Ok(Ok(()));
        };
        if id == b"data" {
            return Ok(Ok(()));
        }
        let len = u64::from(len);
        if len > file_len - pos - 8 {
            return Ok(Err(Refusal::Truncated));
        }
        if id == b"LIST" {
            let body = read_at(pos + 8, len as usize)?;
            if let Err(e) = riff_list(&body) {
                return Ok(Err(e));
            }
        }
        // Chunks are padded to an even length.
        pos += 8 + len + (len & 1);
    }
    Ok(Ok(()))
}

/// The fields that make an RF64 file read as RIFF: the magic, the RIFF size and the `data`
/// chunk's size, whose 0xFFFFFFFF placeholders stand for the 64-bit sizes of the `ds64` chunk
/// that must come first. Audio data of 4 GiB or more does not fit in RIFF's field and is
/// refused, with the reason, rather than read in part.
pub fn rf64_as_riff(
    file_len: u64,
    read_at: &mut ReadAt,
) -> std::io::Result<Result<Vec<(u64, [u8; 4])>, String>> {
    let ds64 = read_at(12, 8 + 16)?;
    if ds64.get(..4) != Some(b"ds64".as_slice()) || ds64.len() < 24 {
        return Ok(Err(
            "is corrupt: an RF64 file must start with a ds64 chunk; re-encode it".into(),
        ));
    }
    let riff_size = le64(&ds64, 8);
    let data_size = le64(&ds64, 16);
    let as_u32 = |n: u64| u32::try_from(n).ok().filter(|&n| n != u32::MAX);
    let Some(data32) = as_u32(data_size) else {
        return Ok(Err(format!(
            "holds {data_size} bytes of audio in RF64, more than the 4 GiB this decoder reads: split it into shorter files (e.g. ffmpeg -f segment)"
        )));
    };
    let mut patches = vec![(0, *b"RIFF")];
    patches.push((4, as_u32(riff_size).unwrap_or(u32::MAX - 1).to_le_bytes()));
    let mut pos = 12u64;
    while pos + 8 <= file_len {
        let head = read_at(pos, 8)?;
        let (Some(id), Some(len)) = (head.get(..4), le32(&head, 4)) else {
            break;
        };
        if id == b"data" {
            patches.push((pos + 4, data32.to_le_bytes()));
            return Ok(Ok(patches));
        }
        let len = u64::from(len);
        pos += 8 + len + (len & 1);
    }
    Ok(Err(
        "is truncated: the RF64 data ends inside its header (the file is cut short, copy it again)"
            .into(),
    ))
}

/// A little-endian u64 at `at` (0 when `b` is too short).
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// A `LIST` chunk's body: a form type, then sub-chunks that fit in it.
fn riff_list(b: &[u8]) -> Check {
    let mut pos = 4usize;
    while pos + 8 <= b.len() {
        let id = fourcc(&b[pos..pos + 4]);
        let len = le32(b, pos + 4).expect("8 bytes") as usize;
        let left = b.len() - pos - 8;
        if len > left {
            return corrupt(format!(
                "its LIST chunk has an entry ({id}) of {len} bytes, while {left} remain"
            ));
        }
        pos += 8 + len + (len & 1);
    }
    Ok(())
}

// ---- FLAC ---------------------------------------------------------------------------------

/// The metadata blocks after `fLaC`, read one by one.
fn flac(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
    // Some taggers put an ID3v2 tag in front of the `fLaC` marker.
    let mut pos = id3v2_end(read_at)?.saturating_add(4);
    loop {
        let head = read_at(pos, 4)?;
        if head.len() < 4 {
            return Ok(Ok(()));
        }
        let last = head[0] & 0x80 != 0;
        let kind = head[0] & 0x7f;
        let len = u64::from(u32::from_be_bytes([0, head[1], head[2], head[3]]));
        if len > file_len - pos - 4 {
            return Ok(Err(Refusal::Truncated));
        }
        if kind == 4 || kind == 6 {
            let body = read_at(pos + 4, len as usize)?;
            if let Err(e) = flac_block(kind, &body) {
                return Ok(Err(e));
            }
        }
        pos += 4 + len;
        if last {
            return Ok(Ok(()));
        }
    }
}

/// FLAC metadata blocks in memory (an MP4 `dfLa` atom), each checked like a file's.
fn flac_blocks(mut b: &[u8]) -> Check {
    while b.len() >= 4 {
        let kind = b[0] & 0x7f;
        let len = u32::from_be_bytes([0, b[1], b[2], b[3]]) as usize;
        if len > b.len() - 4 {
            return corrupt(format!(
                "its FLAC metadata block declares {len} bytes, while {} remain",
                b.len() - 4
            ));
        }
        flac_block(kind, &b[4..4 + len])?;
        if b[0] & 0x80 != 0 {
            break;
        }
        b = &b[4 + len..];
    }
    Ok(())
}

/// Lengths inside a VORBIS_COMMENT (4) or PICTURE (6) block (Vorbis and Opus comment headers
/// have the VORBIS_COMMENT layout).
fn flac_block(kind: u8, b: &[u8]) -> Check {
    let mut lengths = Lengths {
        b,
        pos: 0,
        block: "",
    };
    match kind {
        4 => {
            lengths.block = "comment (VORBIS_COMMENT)";
            lengths.skip_le()?; // vendor
            let count = lengths.le()?;
            for _ in 0..count {
                lengths.skip_le()?;
            }
            Ok(())
        }
        6 => {
            lengths.block = "picture (PICTURE)";
            lengths.be()?; // picture type
            lengths.skip_be()?; // MIME type
            lengths.skip_be()?; // description
            for _ in 0..4 {
                lengths.be()?; // width, height, depth, colours
            }
            lengths.skip_be()?; // picture data
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Length-prefixed fields, each checked against what remains of its block.
struct Lengths<'a> {
    b: &'a [u8],
    pos: usize,
    block: &'static str,
}

impl Lengths<'_> {
    fn fail(&self, len: u64) -> Refusal {
        Refusal::Corrupt(format!(
            "its {} metadata declares a field of {len} bytes, while {} remain",
            self.block,
            self.b.len().saturating_sub(self.pos)
        ))
    }
    fn le(&mut self) -> Result<u32, Refusal> {
        let v = le32(self.b, self.pos).ok_or_else(|| self.fail(4))?;
        self.pos += 4;
        Ok(v)
    }
    fn be(&mut self) -> Result<u32, Refusal> {
        let v = be32(self.b, self.pos).ok_or_else(|| self.fail(4))?;
        self.pos += 4;
        Ok(v)
    }
    fn skip(&mut self, len: u32) -> Check {
        if len as usize > self.b.len() - self.pos {
            return Err(self.fail(u64::from(len)));
        }
        self.pos += len as usize;
        Ok(())
    }
    fn skip_le(&mut self) -> Check {
        let len = self.le()?;
        self.skip(len)
    }
    fn skip_be(&mut self) -> Check {
        let len = self.be()?;
        self.skip(len)
    }
}

// ---- ID3v2 --------------------------------------------------------------------------------

fn syncsafe(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 7) | u64::from(x & 0x7f))
}

/// An ID3v2 tag at the start of an MP3 or ADTS file: the tag fits in the file, every frame in
/// the tag.
/// Stacked tags (one tagger's in front of another's) are each checked.
fn id3v2(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
    let mut at = 0u64;
    for _ in 0..MAX_STACKED_ID3_TAGS {
        let head = read_at(at, 10)?;
        if head.len() < 10 || &head[..3] != b"ID3" {
            break;
        }
        let size = syncsafe(&head[6..10]);
        if size > file_len - at - 10 {
            return Ok(Err(Refusal::Truncated));
        }
        let body = read_at(at + 10, size as usize)?;
        if let Err(e) = id3v2_frames(head[3], head[5], &body) {
            return Ok(Err(e));
        }
        at = at.saturating_add(id3v2_tag_len(&head));
    }
    Ok(Ok(()))
}

fn id3v2_frames(major: u8, flags: u8, b: &[u8]) -> Check {
    let mut pos = 0usize;
    if flags & 0x40 != 0 && major >= 3 {
        // Extended header: its size counts itself in v2.4, not in v2.3.
        let ext = match major {
            3 => be32(b, 0).map(|n| n as u64 + 4),
            _ => b.get(..4).map(syncsafe),
        };
        pos = ext.unwrap_or(0).min(b.len() as u64) as usize;
    }
    let (id_len, header_len) = if major == 2 { (3, 6) } else { (4, 10) };
    while pos + header_len <= b.len() {
        let id = &b[pos..pos + id_len];
        if id.iter().all(|&c| c == 0) {
            break; // padding
        }
        let raw = &b[pos + id_len..pos + if major == 2 { 6 } else { 8 }];
        let len = match major {
            2 => u64::from(u32::from_be_bytes([0, raw[0], raw[1], raw[2]])),
            3 => u64::from(be32(raw, 0).expect("4 bytes")),
            _ => syncsafe(raw),
        };
        let left = (b.len() - pos - header_len) as u64;
        if len > left {
            return corrupt(format!(
                "its ID3v2 tag has a frame ({}) of {len} bytes, while {left} remain in the tag",
                fourcc(id)
            ));
        }
        pos += header_len + len as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(container: &str, b: &[u8]) -> Check {
        let mut read_at = |offset: u64, len: usize| {
            let start = (offset as usize).min(b.len());
            let end = start.saturating_add(len).min(b.len());
            Ok(b[start..end].to_vec())
        };
        check(container, b.len() as u64, &mut read_at).unwrap()
    }

    fn atom(t: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(t);
        v.extend_from_slice(payload);
        v
    }

    fn mp4_with_stbl(stbl_children: &[u8]) -> Vec<u8> {
        let stbl = atom(b"stbl", stbl_children);
        let moov = atom(
            b"moov",
            &atom(b"trak", &atom(b"mdia", &atom(b"minf", &stbl))),
        );
        let mut file = atom(b"ftyp", b"M4A \0\0\0\0");
        file.extend(moov);
        file.extend(atom(b"mdat", &[0u8; 64]));
        file
    }

    #[test]
    fn mp4_tables_must_hold_their_entries() {
        let mut stsz = vec![0u8; 4]; // version, flags
        stsz.extend(0u32.to_be_bytes()); // sample sizes vary
        stsz.extend(3u32.to_be_bytes());
        for s in [10u32, 20, 30] {
            stsz.extend(s.to_be_bytes());
        }
        assert_eq!(run("mp4", &mp4_with_stbl(&atom(b"stsz", &stsz))), Ok(()));
        let mut bad = stsz.clone();
        bad[8..12].copy_from_slice(&100_000_000u32.to_be_bytes());
        assert_eq!(
            run("mp4", &mp4_with_stbl(&atom(b"stsz", &bad))),
            Err(Refusal::Corrupt(
                "its sample table (stsz) declares 100000000 entries but holds room for 3".into()
            ))
        );
        let mut huge_sample = stsz.clone();
        huge_sample[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = run("mp4", &mp4_with_stbl(&atom(b"stsz", &huge_sample)));
        assert!(matches!(e, Err(Refusal::Corrupt(m)) if m.contains("larger than the whole file")));
        for (t, entry) in [(b"stsc", 12usize), (b"stts", 8), (b"stco", 4), (b"co64", 8)] {
            let mut p = vec![0u8; 4];
            p.extend(2u32.to_be_bytes());
            p.extend(vec![0u8; entry]); // room for one
            let e = run("mp4", &mp4_with_stbl(&atom(t, &p)));
            let want = format!(
                "its sample table ({}) declares 2 entries but holds room for 1",
                fourcc(t)
            );
            assert_eq!(e, Err(Refusal::Corrupt(want)));
        }
    }

    #[test]
    fn mp4_atoms_must_fit_their_parent_and_the_file() {
        let mut file = mp4_with_stbl(&[]);
        // stbl is the innermost atom: make it claim more than minf holds.
        let at = file.windows(4).position(|w| w == b"stbl").unwrap() - 4;
        file[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
        let e = run("mp4", &file);
        assert!(
            matches!(e, Err(Refusal::Corrupt(m)) if m.starts_with("its stbl atom declares 1000 bytes"))
        );
        // A moov past the end of the file is a cut file; an mdat past it decodes to the cut.
        let file = mp4_with_stbl(&[]);
        let moov_end = file.windows(4).position(|w| w == b"mdat").unwrap() - 4;
        assert_eq!(run("mp4", &file[..moov_end - 3]), Err(Refusal::Truncated));
        assert_eq!(run("mp4", &file[..file.len() - 10]), Ok(()));
    }

    #[test]
    fn esds_descriptors_must_fit() {
        // ES_Descriptor { id, flags, DecoderConfig { 13 bytes, DecoderSpecificInfo } }
        let dsi = [0x05, 0x02, 0x12, 0x10];
        let mut dc = vec![0x04, (13 + dsi.len()) as u8];
        dc.extend([0u8; 13]);
        dc.extend(dsi);
        let mut es = vec![0x03, (3 + dc.len()) as u8, 0, 1, 0];
        es.extend(&dc);
        let mut p = vec![0u8; 4];
        p.extend(&es);
        assert_eq!(esds(&p[4..], 0), Ok(()));
        let at = p.len() - 3;
        p[at] = 0x7f; // DecoderSpecificInfo claims 127 bytes
        assert!(matches!(esds(&p[4..], 0), Err(Refusal::Corrupt(m)) if m.contains("tag 5")));
    }

    #[test]
    fn riff_chunks_and_list_entries_must_fit() {
        let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
        wav.extend([0u8; 16]);
        let mut list = b"INFOINAM\x04\0\0\0abcd".to_vec();
        let mut chunk = b"LIST".to_vec();
        chunk.extend((list.len() as u32).to_le_bytes());
        chunk.extend(&list);
        let mut good = wav.clone();
        good.extend(&chunk);
        good.extend(b"data\xff\xff\xff\xff\0\0");
        assert_eq!(run("wav", &good), Ok(()));
        list[8] = 0xff;
        let mut bad = wav.clone();
        bad.extend(b"LIST");
        bad.extend((list.len() as u32).to_le_bytes());
        bad.extend(&list);
        assert!(
            matches!(run("wav", &bad), Err(Refusal::Corrupt(m)) if m.contains("(INAM) of 255 bytes"))
        );
        assert_eq!(run("wav", &wav[..30]), Err(Refusal::Truncated));
    }

    /// One Ogg page holding `packets` (each under 255 bytes).
    fn ogg_page(packets: &[&[u8]]) -> Vec<u8> {
        let mut page = b"OggS\0\x02".to_vec();
        page.extend([0u8; 8]); // granule
        page.extend(7u32.to_le_bytes()); // serial
        page.extend([0u8; 8]); // sequence, crc
        page.push(packets.len() as u8);
        page.extend(packets.iter().map(|p| p.len() as u8));
        for p in packets {
            page.extend_from_slice(p);
        }
        page
    }

    #[test]
    fn ogg_comment_headers_must_hold_their_strings() {
        let id = b"\x01vorbis\0\0\0\0".as_slice();
        let mut comment = b"\x03vorbis".to_vec();
        comment.extend(3u32.to_le_bytes());
        comment.extend(b"abc");
        comment.extend(1u32.to_le_bytes());
        comment.extend(5u32.to_le_bytes());
        comment.extend(b"A=xyz");
        assert_eq!(
            run("ogg", &ogg_page(&[id, &comment, b"\x05vorbis"])),
            Ok(())
        );
        let at = comment.len() - 9;
        comment[at..at + 4].copy_from_slice(&0xffff_0000u32.to_le_bytes());
        let e = run("ogg", &ogg_page(&[id, &comment, b"\x05vorbis"]));
        assert!(matches!(e, Err(Refusal::Corrupt(m)) if m.contains("4294901760 bytes")));
    }

    /// Vorbis bit-packing, least significant bit first.
    fn pack(fields: &[(u32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = 0usize;
        for &(value, width) in fields {
            for i in 0..width {
                if n % 8 == 0 {
                    out.push(0);
                }
                out[n / 8] |= (((value >> i) & 1) as u8) << (n % 8);
                n += 1;
            }
        }
        out
    }

    fn vorbis_headers(codebook: &[(u32, u32)]) -> Vec<u8> {
        let mut extra = b"\x01vorbis".to_vec();
        extra.resize(30, 0);
        extra.extend(b"\x05vorbis");
        let mut fields = vec![(0, 8)]; // one codebook
        fields.extend_from_slice(codebook);
        extra.extend(pack(&fields));
        extra
    }

    #[test]
    fn vorbis_codebooks_are_bounded() {
        // 2 dimensions, 4 entries of 5-bit lengths, lookup type 2 with 8 one-bit values.
        let mut good = vec![(0x564342, 24), (2, 16), (4, 24), (0, 1), (0, 1)];
        good.extend([(3, 5); 4]);
        good.extend([(2, 4), (0, 32), (0, 32), (0, 4), (0, 1)]);
        good.extend([(1, 1); 8]);
        assert_eq!(vorbis_setup(&vorbis_headers(&good)), Ok(()));
        // Length-ordered, 2^24 - 1 entries in 24 bits, 65535 dimensions: about 4 PB of lookup.
        let huge = [
            (0x564342, 24),
            (0xffff, 16),
            (0xff_ffff, 24),
            (1, 1),
            (0, 5),
            (0xff_ffff, 24),
        ];
        let e = vorbis_setup(&vorbis_headers(&huge));
        assert!(
            matches!(&e, Err(Refusal::Corrupt(m)) if m.contains("16777215 entries")),
            "{e:?}"
        );
        // Few entries, a huge lookup: 4096 entries x 65535 dimensions.
        let wide = [
            (0x564342, 24),
            (0xffff, 16),
            (4096, 24),
            (1, 1),
            (0, 5),
            (4096, 13),
            (1, 4),
        ];
        let mut wide = wide.to_vec();
        wide.extend([(0, 32), (0, 32), (0, 4), (0, 1), (0, 1)]); // lookup1: 1 value of 1 bit
        let e = vorbis_setup(&vorbis_headers(&wide));
        assert!(
            matches!(&e, Err(Refusal::Corrupt(m)) if m.contains("268431360 lookup values")),
            "{e:?}"
        );
    }

    #[test]
    fn matroska_elements_and_laces_must_fit() {
        // EBML header { DocType "webm" }, Segment { Cluster { SimpleBlock } }.
        let mut block = vec![0x81, 0, 0, 0x06, 1]; // track 1, timecode, EBML lacing, 2 frames
        block.extend([0x82]); // first frame: 2 bytes
        block.extend([0xAA; 5]);
        let mut cluster = vec![0xA3, 0x80 | block.len() as u8];
        cluster.extend(&block);
        let mut segment = vec![0x1F, 0x43, 0xB6, 0x75, 0x80 | cluster.len() as u8];
        segment.extend(&cluster);
        let mut file = vec![0x1A, 0x45, 0xDF, 0xA3, 0x87, 0x42, 0x82, 0x84];
        file.extend(b"webm");
        file.extend([0x18, 0x53, 0x80, 0x67, 0x80 | segment.len() as u8]);
        file.extend(&segment);
        assert_eq!(run("mkv", &file), Ok(()));
        let lace = file.len() - 6;
        file[lace] = 0x40; // a 2-byte vint: 0x40 0xAA = 170 bytes, in a block of 11
        assert!(
            matches!(run("mkv", &file), Err(Refusal::Corrupt(m)) if m.contains("laces frames"))
        );
        file[lace] = 0x82;
        // The DocType string claims 100 bytes inside an EBML header of 7.
        file[7] = 0x80 | 100;
        assert!(
            matches!(run("mkv", &file), Err(Refusal::Corrupt(m)) if m.contains("0x4282 declares 100"))
        );
    }

    #[test]
    fn flac_blocks_and_id3_frames_must_fit() {
        let mut flac = b"fLaC".to_vec();
        let mut comment = 0u32.to_le_bytes().to_vec(); // vendor ""
        comment.extend(1u32.to_le_bytes());
        comment.extend(0xffff_fff0u32.to_le_bytes()); // one comment of ~4 GB
        flac.push(0x84);
        flac.extend(&(comment.len() as u32).to_be_bytes()[1..]);
        flac.extend(&comment);
        assert!(
            matches!(run("flac", &flac), Err(Refusal::Corrupt(m)) if m.contains("comment (VORBIS_COMMENT)"))
        );
        let mut id3 = b"ID3\x03\0\0\0\0\0\x14".to_vec();
        id3.extend(b"TIT2\x7f\0\0\0\0\0");
        id3.extend([0u8; 10]);
        assert!(matches!(run("mp3", &id3), Err(Refusal::Corrupt(m)) if m.contains("(TIT2)")));
        id3[14..18].copy_from_slice(&[0, 0, 0, 2]);
        assert_eq!(run("mp3", &id3), Ok(()));
    }

    fn declared(container: &str, b: &[u8]) -> DeclaredLength {
        let mut read_at = |offset: u64, len: usize| {
            let start = (offset as usize).min(b.len());
            Ok(b[start..start.saturating_add(len).min(b.len())].to_vec())
        };
        declared_length(container, b.len() as u64, &mut read_at).unwrap()
    }

    fn wav(data_len: u32, held: usize) -> Vec<u8> {
        let mut w = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
        w.extend_from_slice(&[1, 0, 1, 0, 0x80, 0x3e, 0, 0, 0, 0x7d, 0, 0, 2, 0, 16, 0]);
        w.extend_from_slice(b"data");
        w.extend_from_slice(&data_len.to_le_bytes());
        w.extend(std::iter::repeat(0u8).take(held));
        w
    }

    #[test]
    fn a_wav_data_chunk_longer_than_the_file_is_a_shortfall_unless_it_states_no_length() {
        let cut = declared("wav", &wav(96000, 16));
        assert_eq!(
            cut.shortfall.as_deref(),
            Some("its data chunk declares 96000 bytes of samples, the file holds 16 of them")
        );
        assert!(cut.frames_are_declared);
        assert_eq!(declared("wav", &wav(16, 16)).shortfall, None);
        for unknown in [0, u32::MAX] {
            let piped = declared("wav", &wav(unknown, 64));
            assert!(
                piped.shortfall.is_none() && piped.length_unknown && !piped.frames_are_declared
            );
        }
    }

    #[test]
    fn rf64_reads_as_riff_with_its_ds64_sizes() {
        let mut f = b"RF64\xff\xff\xff\xffWAVEds64\x1c\0\0\0".to_vec();
        f.extend_from_slice(&100u64.to_le_bytes()); // RIFF size
        f.extend_from_slice(&64u64.to_le_bytes()); // data size
        f.extend_from_slice(&32u64.to_le_bytes()); // sample count
        f.extend_from_slice(&0u32.to_le_bytes()); // table length
        let data_at = f.len() as u64;
        f.extend_from_slice(b"data\xff\xff\xff\xff");
        f.extend(std::iter::repeat(0u8).take(64));
        let mut read_at = |offset: u64, len: usize| {
            let start = (offset as usize).min(f.len());
            Ok(f[start..start.saturating_add(len).min(f.len())].to_vec())
        };
        let patches = rf64_as_riff(f.len() as u64, &mut read_at).unwrap().unwrap();
        assert_eq!(
            patches,
            vec![
                (0, *b"RIFF"),
                (4, 100u32.to_le_bytes()),
                (data_at + 4, 64u32.to_le_bytes())
            ]
        );
        // 4 GiB of audio data does not fit in RIFF's field: refused, not read in part.
        f[32..40].copy_from_slice(&(5u64 << 30).to_le_bytes());
        let mut read_at = |offset: u64, len: usize| {
            let start = (offset as usize).min(f.len());
            Ok(f[start..start.saturating_add(len).min(f.len())].to_vec())
        };
        let refused = rf64_as_riff(f.len() as u64, &mut read_at)
            .unwrap()
            .unwrap_err();
        assert!(refused.contains("more than the 4 GiB"), "{refused}");
    }

    #[test]
    fn ogg_crc_is_the_unreflected_crc32_with_no_final_xor() {
        // CRC-32/CKSUM's check value for "123456789" is 0x765E7680 after its final xor.
        assert_eq!(ogg_crc(b"123456789"), 0x765e_7680 ^ 0xffff_ffff);
    }

    /// One Ogg page with a correct checksum around `body` (one segment of up to 255 bytes).
    fn checksummed_ogg_page(body: &[u8], flags: u8) -> Vec<u8> {
        let mut page = b"OggS\0".to_vec();
        page.push(flags);
        page.extend_from_slice(&[0; 8 + 4 + 4 + 4]); // granule, serial, sequence, checksum
        page.push(1);
        page.push(body.len() as u8);
        page.extend_from_slice(body);
        let crc = ogg_crc(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        page
    }

    #[test]
    fn an_ogg_file_whose_last_page_is_cut_is_a_shortfall() {
        let mut file = checksummed_ogg_page(&[7; 200], 2);
        file.extend(checksummed_ogg_page(&[9; 200], 4));
        assert_eq!(declared("ogg", &file).shortfall, None);
        file.truncate(file.len() - 50);
        assert_eq!(
            declared("ogg", &file).shortfall.as_deref(),
            Some("its last Ogg page declares 228 bytes, the file holds 178 of them")
        );
        // "OggS" inside data, with no page whose checksum holds: nothing is claimed.
        let mut noise = b"OggS\0\x04".to_vec();
        noise.extend_from_slice(&[1; 300]);
        assert_eq!(declared("ogg", &noise).shortfall, None);
    }
}
