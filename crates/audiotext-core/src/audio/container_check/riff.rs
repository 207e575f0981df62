//! RIFF/WAVE (and RF64 read as RIFF): chunks before `data` and `INFO` entries fit.

use super::*;

/// Chunks up to `data` (the samples, which may run past a cut) must fit in the file.
pub(super) fn riff(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
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
pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// A `LIST` chunk's body: a form type, then sub-chunks that fit in it.
pub(super) fn riff_list(b: &[u8]) -> Check {
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
