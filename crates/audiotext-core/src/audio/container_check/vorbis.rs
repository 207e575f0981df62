//! The Vorbis setup header: codebook entries and lookup tables under a fixed bound.

use super::*;

/// The most codebook entries, and the most lookup values (entries x dimensions), of all of a
/// Vorbis stream's codebooks together: symphonia allocates both per codebook (a byte and an
/// f32 each), and a length-ordered codebook declares 2^24 entries in a few bits. libvorbis's
/// books hold a few thousand.
pub const MAX_VORBIS_CODEBOOK_VALUES: u64 = 1 << 22;

/// Vorbis bit-packing: least significant bit first.
pub(super) struct Bits<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
}

impl Bits<'_> {
    pub(super) fn read(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..n {
            let byte = *self.b.get(self.pos / 8)?;
            v |= u32::from((byte >> (self.pos % 8)) & 1) << i;
            self.pos += 1;
        }
        Some(v)
    }
    pub(super) fn skip(&mut self, n: u64) -> Option<()> {
        let end = (self.pos as u64).checked_add(n)?;
        if end > self.b.len() as u64 * 8 {
            return None;
        }
        self.pos = end as usize;
        Some(())
    }
}

pub(super) fn ilog(x: u32) -> u32 {
    32 - x.leading_zeros()
}

/// The largest r with r^dimensions <= entries (Vorbis I, 9.2.3).
pub(super) fn lookup1_values(entries: u32, dimensions: u32) -> u64 {
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
pub(super) fn vorbis_codebook(bits: &mut Bits) -> Option<(u32, u64)> {
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
