//! MP4 (ISO BMFF) atoms: every atom fits in its parent and the file, sample tables hold their
//! entries, sample sizes fit in the file, decoder configs fit in their atoms.

use super::*;

/// An atom's header: its type, header length and total length (`None`: to the end of its
/// parent).
pub(super) struct AtomHeader {
    pub(super) atype: [u8; 4],
    pub(super) header_len: u64,
    pub(super) size: Option<u64>,
}

/// Parses an atom header from the start of `b`; `None` when `b` is too short.
pub(super) fn atom_header(b: &[u8]) -> Option<AtomHeader> {
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
pub(super) fn mp4_top_level(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
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
pub(super) fn mp4_container_skip(atype: &[u8; 4], payload: &[u8], in_ilst: bool) -> Option<usize> {
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
pub(super) const MAX_DEPTH: usize = 32;

/// Walks the atoms in `b` (a parent's payload).
pub(super) fn mp4_children(b: &[u8], file_len: u64) -> Check {
    mp4_walk(b, file_len, false, 0)
}

pub(super) fn mp4_walk(b: &[u8], file_len: u64, in_ilst: bool, depth: usize) -> Check {
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
pub(super) fn mp4_table(
    name: &str,
    payload: &[u8],
    at: usize,
    count: u64,
    entry_len: u64,
) -> Check {
    let room = (payload.len().saturating_sub(at) as u64) / entry_len;
    if count > room {
        return corrupt(format!(
            "its {} ({name}) declares {count} entries but holds room for {room}",
            table_role(name)
        ));
    }
    Ok(())
}

pub(super) fn table_role(name: &str) -> &'static str {
    match name {
        "stsz" | "stsc" | "stts" | "ctts" | "stss" | "stco" | "co64" => "sample table",
        "trun" => "fragment's sample table",
        "elst" => "edit list",
        "sidx" => "segment index",
        _ => "table",
    }
}

pub(super) fn sample_size_fits(name: &str, size: u64, file_len: u64) -> Check {
    if size > file_len {
        return corrupt(format!(
            "its sample table ({name}) declares a sample of {size} bytes, larger than the whole file ({file_len} bytes)"
        ));
    }
    Ok(())
}

/// Full atoms start with a version byte and 3 bytes of flags.
pub(super) fn mp4_leaf(atype: &[u8; 4], p: &[u8], file_len: u64, depth: usize) -> Check {
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
pub(super) fn counted(name: &str, p: &[u8], entry_len: u64) -> Check {
    match be32(p, 4) {
        Some(count) => mp4_table(name, p, 8, u64::from(count), entry_len),
        None => corrupt(format!("its {name} atom is too short for its own fields")),
    }
}

/// The sample entries symphonia reads as audio (`stsd.rs`).
pub(super) const AUDIO_SAMPLE_ENTRIES: [&[u8; 4]; 16] = [
    b"mp4a", b"alac", b"fLaC", b"Opus", b".mp3", b"lpcm", b"wave", b"alaw", b"ulaw", b"raw ",
    b"twos", b"sowt", b"in24", b"in32", b"fl32", b"fl64",
];

/// The sample descriptions: each audio sample entry's fixed fields (by its sound description
/// version), then child atoms (`esds`, `wave`, `dfLa`, `alac`, `dOps`).
pub(super) fn mp4_stsd(p: &[u8], file_len: u64, depth: usize) -> Check {
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
pub(super) fn esds(mut b: &[u8], depth: usize) -> Check {
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
