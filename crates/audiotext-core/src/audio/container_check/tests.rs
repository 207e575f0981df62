//! Each container's checks on files built here byte by byte: valid ones pass, each mutated
//! count or length is refused with its reason.

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
    assert!(matches!(run("mkv", &file), Err(Refusal::Corrupt(m)) if m.contains("laces frames")));
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
        assert!(piped.shortfall.is_none() && piped.length_unknown && !piped.frames_are_declared);
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
