//! Matroska/WebM (EBML): every element fits in its parent; laced frame sizes fit in their block.

use super::*;

/// Matroska master elements (they hold elements); anything else is read whole by its size.
pub(super) fn ebml_is_master(id: u32) -> bool {
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
pub(super) fn ebml_vint(b: &[u8]) -> Option<(u64, usize, bool)> {
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

pub(super) struct Ebml<'a, 'b> {
    pub(super) read_at: &'a mut ReadAt<'b>,
    pub(super) file_len: u64,
}

impl Ebml<'_, '_> {
    /// The elements in `[start, end)`, `depth` levels below the file.
    pub(super) fn elements(
        &mut self,
        start: u64,
        end: u64,
        depth: usize,
    ) -> std::io::Result<Check> {
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
pub(super) fn ebml_lacing(head: &[u8], size: u64) -> Check {
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
