//! Ogg: the comment headers of Vorbis and Opus, and FLAC-in-Ogg's metadata blocks, fit in
//! their packets.

use super::*;

/// The header packets of the first logical stream (at most `OGG_HEADER_PACKETS`): a Vorbis or
/// Opus comment header's strings, and FLAC-in-Ogg's metadata blocks, must fit in their packet
/// (symphonia allocates each comment's declared length before reading it).
pub(super) const OGG_HEADER_PACKETS: usize = 3;

pub(super) fn ogg(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
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

pub(super) fn ogg_headers(packets: &[Vec<u8>]) -> Check {
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
