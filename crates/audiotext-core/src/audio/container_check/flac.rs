//! FLAC: metadata blocks fit in the file, and their strings and pictures in their block.

use super::*;

/// The metadata blocks after `fLaC`, read one by one.
pub(super) fn flac(file_len: u64, read_at: &mut ReadAt) -> std::io::Result<Check> {
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
pub(super) fn flac_blocks(mut b: &[u8]) -> Check {
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
pub(super) fn flac_block(kind: u8, b: &[u8]) -> Check {
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
pub(super) struct Lengths<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
    pub(super) block: &'static str,
}

impl Lengths<'_> {
    pub(super) fn fail(&self, len: u64) -> Refusal {
        Refusal::Corrupt(format!(
            "its {} metadata declares a field of {len} bytes, while {} remain",
            self.block,
            self.b.len().saturating_sub(self.pos)
        ))
    }
    pub(super) fn le(&mut self) -> Result<u32, Refusal> {
        let v = le32(self.b, self.pos).ok_or_else(|| self.fail(4))?;
        self.pos += 4;
        Ok(v)
    }
    pub(super) fn be(&mut self) -> Result<u32, Refusal> {
        let v = be32(self.b, self.pos).ok_or_else(|| self.fail(4))?;
        self.pos += 4;
        Ok(v)
    }
    pub(super) fn skip(&mut self, len: u32) -> Check {
        if len as usize > self.b.len() - self.pos {
            return Err(self.fail(u64::from(len)));
        }
        self.pos += len as usize;
        Ok(())
    }
    pub(super) fn skip_le(&mut self) -> Check {
        let len = self.le()?;
        self.skip(len)
    }
    pub(super) fn skip_be(&mut self) -> Check {
        let len = self.be()?;
        self.skip(len)
    }
}
