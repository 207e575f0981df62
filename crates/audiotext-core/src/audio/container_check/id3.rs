//! ID3v2 tags (before MP3 or ADTS): the tag fits in the file, and every frame in the tag.

use super::*;

pub(super) fn syncsafe(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 7) | u64::from(x & 0x7f))
}

/// An ID3v2 tag at the start of an MP3 or ADTS file: the tag fits in the file, every frame in
/// the tag.
/// Stacked tags (one tagger's in front of another's) are each checked.
pub(super) fn id3v2(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
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

pub(super) fn id3v2_frames(major: u8, flags: u8, b: &[u8]) -> Check {
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
