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

mod flac;
mod id3;
mod matroska;
mod mp4;
mod ogg;
mod riff;
#[cfg(test)]
mod tests;
mod vorbis;

use flac::*;
use id3::*;
use matroska::*;
pub use mp4::MAX_FRAME_SAMPLES;
use mp4::*;
use ogg::*;
pub use riff::rf64_as_riff;
use riff::*;
pub use vorbis::{vorbis_setup, MAX_VORBIS_CODEBOOK_VALUES};

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
