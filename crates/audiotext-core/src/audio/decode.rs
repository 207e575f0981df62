//! Decoding (I/O): a file path or an in-memory blob to mono f32 at the file's own rate, streamed
//! packet by packet with symphonia. All channels are mixed down by averaging.
//!
//! Error policy (each case has its own message; all are `Error::Audio`):
//! - a path that is not a regular file (a directory, FIFO, socket or device) is refused before
//!   any read (`regular_file::open`), since reading one can block forever or never end;
//! - an empty file or blob: "... is empty (0 bytes)";
//! - anything whose first bytes are not a container we decode (RIFF/WAVE, fLaC, OggS, an MP3
//!   (layer III) or ADTS frame header, possibly after an ID3v2 tag, MP4 `ftyp`, Matroska/WebM):
//!   "... is not a supported audio file (...)". The container is recognised here, at offset 0, instead of
//!   letting symphonia scan the first megabyte for a two-byte marker, so an image or a binary
//!   that happens to contain `0xFF 0xFB` is not "decoded" as noise;
//! - a header that ends early: "... is truncated"; a malformed header or container:
//!   "... is corrupt"; a count or length in the headers that does not fit in the file
//!   (`container_check`, run before symphonia allocates it): "... is corrupt: its sample
//!   table (stsz) declares N entries but holds room for M; re-encode or re-download the file"; a container without an audio track; a codec or a feature symphonia lacks;
//!   a declared rate below `MIN_SAMPLE_RATE_HZ` or a channel count of 0;
//! - mid-stream: a packet the codec rejects as malformed (`DecodeError`, also a codec
//!   `IoError`) is skipped and counted (`Decoder::skipped_packets`), as players do; the end of
//!   the data ends the stream, so a file cut short gives the audio before the cut; any other
//!   demuxer error fails the stream ("... is corrupt");
//! - a sample that is not a finite number or beyond `MAX_SAMPLE_MAGNITUDE` (float PCM holding
//!   NaN, infinity or 1e38): "... holds a sample of X, far outside the [-1, 1] of audio";
//! - a stream that yields no sample at all (only bad packets, cut inside the first packet, or an
//!   empty stream) is an error: "... contains no audio samples";
//! - symphonia can panic on some malformed inputs: every call into it runs inside
//!   `catch_unwind`, and a panic becomes "... is corrupt (decoder failed: ...)". After any error
//!   the decoder is finished: later calls return `Ok(None)`.
//!
//! Chained Ogg streams: decoding stops at the end of the first logical stream. A blob is read in
//! place, never copied (`BorrowedBytes`: an hour of WAV passed as a BLOB is 600 MB); decoded
//! audio is never held whole here.

use std::io::{Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use serde::Serialize;
use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{
    Decoder as CodecDecoder, DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_VORBIS,
};
use symphonia::core::conv::FromSample;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use symphonia::core::sample::Sample;

use crate::audio::container_check::{self, Refusal};
use crate::error::{Error, Result};

/// The highest sample rate accepted (768 kHz, the top of what audio hardware records); a
/// higher one is a corrupt header, and resampling from it would cost without bound.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Decoded samples beyond this magnitude (60 dB over full scale) are corrupt data: float
/// formats may exceed ±1 a little, never by this much; the front-end's powers of such values
/// would overflow (fuzzing found 1e38 making the resampler panic).
pub const MAX_SAMPLE_MAGNITUDE: f32 = 1000.0;

fn is_plausible_sample(x: f32) -> bool {
    x.abs() <= MAX_SAMPLE_MAGNITUDE
}

fn describe_sample(x: f32) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        "infinite".into()
    } else {
        format!("{x:e}")
    }
}

/// The formats the message for an unknown file lists.
pub const SUPPORTED_FORMATS: &str = "wav, flac, ogg/vorbis, mp3, aac/m4a";

/// The lowest sample rate accepted, below any audio format's (telephony's 8 kHz). A 64 Hz
/// "WAV" of 500 bytes took 20 s to resample to 32 kHz (a 500x ratio makes each input sample
/// 500 outputs of a 256-tap filter), and such a rate is a corrupt header, not audio.
pub const MIN_SAMPLE_RATE_HZ: u32 = 1000;

/// Where encoded audio comes from.
#[derive(Debug, Clone, Copy)]
pub enum AudioSource<'a> {
    /// A file; its extension is passed to symphonia as a hint.
    Path(&'a Path),
    /// Encoded bytes (a BLOB); the format is recognised from the content alone.
    Bytes(&'a [u8]),
}

impl AudioSource<'_> {
    /// How messages name this source: the path, or "audio blob".
    pub fn describe(&self) -> String {
        match self {
            AudioSource::Path(p) => p.display().to_string(),
            AudioSource::Bytes(_) => "audio blob".to_string(),
        }
    }
}

/// What to do with a file whose container declares more audio than it holds (a half-copied
/// or cut download).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TruncatedAudio {
    /// An error naming the file, what it declares and what it holds.
    #[default]
    Refuse,
    /// Decode the audio before the cut, as players do.
    Partial,
}

impl TruncatedAudio {
    /// The names `audiotext_option('truncated_audio', ...)` takes.
    pub fn parse(name: &str) -> Option<TruncatedAudio> {
        match name {
            "error" => Some(TruncatedAudio::Refuse),
            "partial" => Some(TruncatedAudio::Partial),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TruncatedAudio::Refuse => "error",
            TruncatedAudio::Partial => "partial",
        }
    }
}

/// How a file is decoded: what the caller (an SQL connection's settings, the trainer) chose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    pub truncated: TruncatedAudio,
}

/// Frames a stream may fall short of its declared count before it counts as cut: a codec's
/// last block (FLAC's 4,608 frames at most, an MP3 frame's 1,152) and encoder delay.
const SHORT_FRAMES_TOLERATED: u64 = 8192;

/// What a file holds, read from its headers (and its first audio packet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioInfo {
    /// `wav`, `flac`, `ogg`, `mp3`, `aac` (ADTS), `mp4` (m4a, mp4, mov) or `mkv` (also webm).
    pub container: String,
    /// symphonia's short codec name: `pcm_s16le`, `flac`, `vorbis`, `mp3`, `aac`, ...
    pub codec: String,
    /// The rate of the decoded audio in Hz.
    pub sample_rate: u32,
    /// Channels in the file (all are mixed down).
    pub channels: usize,
    /// Length in seconds when the container states it.
    pub duration_seconds: Option<f64>,
    /// Length in samples per channel when the container states it.
    pub frames: Option<u64>,
    /// Set when the container declares more audio than the file holds: what it declares and
    /// what is there (the headers and, for Ogg, the last page tell; a FLAC or MP3 cut short
    /// shows only when decoded, as an error).
    pub truncated: Option<String>,
}

/// Reads the headers and decodes the first audio packet (so a file `probe` accepts has audio).
/// A truncated file is described (`AudioInfo::truncated`), not refused.
pub fn probe(source: &AudioSource) -> Result<AudioInfo> {
    let partial = DecodeOptions {
        truncated: TruncatedAudio::Partial,
    };
    Ok(Decoder::open_with(*source, partial)?.info)
}

/// Streams a file as mono f32 chunks at its own sample rate. `'a` is the lifetime of the
/// bytes of an `AudioSource::Bytes`, which the decoder reads in place.
pub struct Decoder<'a> {
    name: String,
    info: AudioInfo,
    format: Box<dyn FormatReader>,
    codec: Box<dyn CodecDecoder>,
    track_id: u32,
    /// The chunk decoded while opening, handed out first.
    first: Option<Vec<f32>>,
    samples: u64,
    skipped_packets: u64,
    done: bool,
    options: DecodeOptions,
    /// Whether `info.frames` is declared by the file (not estimated): decoding fewer means the
    /// file was cut.
    frames_are_declared: bool,
    /// Samples past this are not the file's (Ogg: its last page's granule position ends the
    /// stream, and symphonia hands out the rest of the last block when the page does not say
    /// it is the last).
    end_at: Option<u64>,
    /// `format` may read the source's bytes (`BorrowedBytes`): the decoder must not outlive them.
    _bytes: PhantomData<&'a [u8]>,
}

impl std::fmt::Debug for Decoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("name", &self.name)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Runs a call into symphonia, turning a panic into an error message.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_message)
}

fn is_eof(e: &SymphoniaError) -> bool {
    matches!(e, SymphoniaError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// Recognises the container from the first bytes (after an ID3v2 tag, for MP3 and ADTS).
fn sniff<R: Read + Seek>(r: &mut R) -> std::io::Result<Option<&'static str>> {
    let mut head = [0u8; 12];
    let n = read_up_to(r, &mut head)?;
    let head = &head[..n];
    let mut found = sniff_head(head);
    if found.is_none() {
        // ID3v2 tags, possibly several in a row (taggers add one in front of another's).
        let audio_at = container_check::id3v2_end(&mut |offset, len| read_at(r, offset, len))?;
        if audio_at > 0 {
            let after = read_at(r, audio_at, 4)?;
            found = if after.starts_with(b"fLaC") {
                Some("flac")
            } else {
                sniff_frame_header(&after)
            };
        }
    }
    r.seek(SeekFrom::Start(0))?;
    Ok(found)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn sniff_head(h: &[u8]) -> Option<&'static str> {
    if h.len() >= 12 && &h[..4] == b"RIFF" && &h[8..12] == b"WAVE" {
        Some("wav")
    } else if h.len() >= 12 && &h[..4] == b"RF64" && &h[8..12] == b"WAVE" {
        Some("rf64")
    } else if h.starts_with(b"fLaC") {
        Some("flac")
    } else if h.starts_with(b"OggS") {
        Some("ogg")
    } else if h.len() >= 8 && &h[4..8] == b"ftyp" {
        Some("mp4")
    } else if h.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        Some("mkv")
    } else {
        sniff_frame_header(h)
    }
}

/// An MPEG audio layer III frame header (the build decodes no layer I or II) or an ADTS (AAC)
/// header.
fn sniff_frame_header(h: &[u8]) -> Option<&'static str> {
    if h.len() < 3 || h[0] != 0xff || h[1] & 0xe0 != 0xe0 {
        return None;
    }
    let layer = (h[1] >> 1) & 0x03;
    if layer == 0 {
        // ADTS: MPEG-4/2 sync 0xFFF, layer 00.
        return (h[1] & 0xf0 == 0xf0 && (h[2] >> 2) & 0x0f < 13).then_some("aac");
    }
    let version = (h[1] >> 3) & 0x03;
    let bitrate = h[2] >> 4;
    let rate = (h[2] >> 2) & 0x03;
    (layer == 0x01 && version != 1 && bitrate != 0x0f && rate != 0x03).then_some("mp3")
}

/// Encoded bytes read in place by symphonia, which only takes `'static` sources: the lifetime
/// is erased here and restored by `Decoder<'a>`, which owns the only copy of this value (inside
/// its format reader) and cannot outlive the bytes.
struct BorrowedBytes {
    ptr: *const u8,
    len: usize,
    pos: usize,
}

// SAFETY: a read-only view of bytes that `Decoder<'a>` keeps borrowed (shared, immutable) for as
// long as this value lives; `&[u8]` is Send and Sync.
unsafe impl Send for BorrowedBytes {}
unsafe impl Sync for BorrowedBytes {}

impl BorrowedBytes {
    /// # Safety
    /// The value must not be used after `bytes` ends: only `Decoder::open` makes one, and hands
    /// it to the format reader of a `Decoder<'a>` with `bytes: &'a [u8]`.
    unsafe fn new(bytes: &[u8]) -> BorrowedBytes {
        BorrowedBytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            pos: 0,
        }
    }

    fn slice(&self) -> &[u8] {
        // SAFETY: see `new`; ptr and len come from a live slice.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Read for BorrowedBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.slice()[self.pos.min(self.len)..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Seek for BorrowedBytes {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => (self.len as u64).checked_add_signed(d),
            SeekFrom::Current(d) => (self.pos as u64).checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the audio blob",
            )
        })?;
        // Past the end is allowed, as for files and `Cursor`: reads there return 0 bytes.
        self.pos = usize::try_from(target).unwrap_or(usize::MAX);
        Ok(target)
    }
}

impl MediaSource for BorrowedBytes {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len as u64)
    }
}

/// A source symphonia must read as a stream, front to back.
struct Unseekable(Box<dyn MediaSource>);

impl Read for Unseekable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for Unseekable {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(to)
    }
}

impl MediaSource for Unseekable {
    fn is_seekable(&self) -> bool {
        false
    }

    fn byte_len(&self) -> Option<u64> {
        self.0.byte_len()
    }
}

impl<'a> Decoder<'a> {
    /// Opens `source` with the default options (a truncated file is an error).
    pub fn open(source: AudioSource<'a>) -> Result<Decoder<'a>> {
        Decoder::open_with(source, DecodeOptions::default())
    }

    /// Opens `source`, reads its headers and decodes its first audio packet. The checks run
    /// in the order symphonia would meet what they guard (sniff, container headers, track,
    /// codec), so they stay in one function.
    pub fn open_with(source: AudioSource<'a>, options: DecodeOptions) -> Result<Decoder<'a>> {
        let name = source.describe();
        let mut hint = Hint::new();
        let (mut media, len): (Box<dyn MediaSource>, u64) = match source {
            AudioSource::Path(path) => {
                let file = crate::regular_file::open(path).map_err(Error::Audio)?;
                let len = file.metadata().map_err(|e| io_error(&name, e))?.len();
                if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
                    hint.with_extension(ext);
                }
                (Box::new(file), len)
            }
            // SAFETY: the reader lives inside the returned `Decoder<'a>` (or is dropped here
            // on error), and `bytes` lives for `'a`.
            AudioSource::Bytes(bytes) => (
                Box::new(unsafe { BorrowedBytes::new(bytes) }),
                bytes.len() as u64,
            ),
        };
        if len == 0 {
            return Err(Error::Audio(format!("{name} is empty (0 bytes)")));
        }
        let io = |e| io_error(&name, e);
        let mut container = sniff(&mut media)
            .map_err(io)?
            .ok_or_else(|| not_supported(&name))?;
        if container == "rf64" {
            // RF64 is RIFF with 64-bit sizes in a ds64 chunk: symphonia reads it as RIFF once
            // the sizes are put back where RIFF keeps them.
            let mut raw = |offset, n| read_at(&mut media, offset, n);
            let patches = container_check::rf64_as_riff(len, &mut raw)
                .map_err(io)?
                .map_err(|why| Error::Audio(format!("{name} {why}")))?;
            media = Box::new(Patched {
                inner: media,
                patches,
                pos: 0,
            });
            container = "wav";
        }
        let mut read = |offset, n| read_at(&mut media, offset, n);
        let verdict = container_check::check(container, len, &mut read).map_err(io)?;
        refuse(&name, container, verdict)?;
        let declared = container_check::declared_length(container, len, &mut read).map_err(io)?;
        media.seek(SeekFrom::Start(0)).map_err(io)?;
        if let Some(what) = &declared.shortfall {
            if options.truncated == TruncatedAudio::Refuse {
                return Err(cut_short(&name, what));
            }
            if container == "mp4" {
                // symphonia seeks past every top-level atom of a seekable file and fails on
                // an mdat cut short; read as a stream, it stops at the mdat and plays up to
                // the cut (when the moov, with the sample tables, comes first).
                media = Box::new(Unseekable(media));
            }
        }
        let mss = MediaSourceStream::new(media, Default::default());
        let format_opts = FormatOptions {
            enable_gapless: true,
            ..Default::default()
        };
        let probed = guarded(|| {
            symphonia::default::get_probe().format(
                &hint,
                mss,
                &format_opts,
                &MetadataOptions::default(),
            )
        })
        .map_err(|msg| corrupt_panic(&name, &msg))?;
        let format = match probed {
            Ok(p) => p.format,
            Err(e) => return Err(header_error(&name, container, e)),
        };
        let track = format
            .default_track()
            .filter(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .or_else(|| {
                format
                    .tracks()
                    .iter()
                    .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            })
            .ok_or_else(|| {
                Error::Audio(format!(
                    "{name} has no audio track: it holds no sound to decode (a video or data file?); pass a file with sound"
                ))
            })?;
        let params = track.codec_params.clone();
        let track_id = track.id;
        let codec_name = symphonia::default::get_codecs()
            .get_codec(params.codec)
            .map(|d| d.short_name.to_string())
            .unwrap_or_else(|| format!("{}", params.codec));
        if let Some(rate) = params
            .sample_rate
            .filter(|r| !(MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE).contains(r))
        {
            return Err(Error::Audio(format!(
                "{name} declares a sample rate of {rate} Hz, outside {MIN_SAMPLE_RATE_HZ} Hz to {MAX_SAMPLE_RATE} Hz: the header is corrupt, re-encode the file"
            )));
        }
        if params.channels.map(|c| c.count()) == Some(0) {
            return Err(Error::Audio(format!(
                "{name} declares 0 channels: the file is corrupt, re-encode it"
            )));
        }
        if params.codec == CODEC_TYPE_VORBIS {
            if let Some(extra) = &params.extra_data {
                refuse(&name, container, container_check::vorbis_setup(extra))?;
            }
        }
        let codec = match guarded(|| {
            symphonia::default::get_codecs().make(&params, &DecoderOptions::default())
        }) {
            Err(msg) => return Err(corrupt_panic(&name, &msg)),
            Ok(Err(SymphoniaError::Unsupported(what))) => {
                return Err(Error::Audio(format!(
                    "{name} uses a codec that cannot be decoded ({codec_name}: {what}): convert it to one of {SUPPORTED_FORMATS}"
                )))
            }
            Ok(Err(e)) => return Err(Error::Audio(format!("{name} is corrupt ({e}): re-encode it"))),
            Ok(Ok(c)) => c,
        };
        // A WAV written to a pipe declares no length: symphonia's count is its placeholder.
        let frames = params.n_frames.filter(|_| !declared.length_unknown);
        let mut decoder = Decoder {
            name,
            info: AudioInfo {
                container: container.to_string(),
                codec: codec_name,
                sample_rate: params.sample_rate.unwrap_or(0),
                channels: params.channels.map(|c| c.count()).unwrap_or(0),
                duration_seconds: None,
                frames,
                truncated: declared.shortfall,
            },
            format,
            codec,
            track_id,
            first: None,
            samples: 0,
            skipped_packets: 0,
            done: false,
            options,
            frames_are_declared: declared.frames_are_declared,
            end_at: if container == "ogg" { frames } else { None },
            _bytes: PhantomData,
        };
        // The first packet tells the real rate and channel count (some containers omit them).
        let first = decoder.decode_next()?;
        decoder.info.duration_seconds = frames.map(|n| n as f64 / decoder.info.sample_rate as f64);
        decoder.first = first;
        Ok(decoder)
    }

    pub fn info(&self) -> &AudioInfo {
        &self.info
    }

    /// Packets skipped because the codec rejected them as malformed.
    pub fn skipped_packets(&self) -> u64 {
        self.skipped_packets
    }

    /// Mono samples handed out so far (the opening packet included).
    pub fn samples_decoded(&self) -> u64 {
        self.samples
    }

    /// The next chunk of mono samples at `info().sample_rate` (one packet's worth, never empty),
    /// or `None` at the end of the stream.
    pub fn next_mono_chunk(&mut self) -> Result<Option<Vec<f32>>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        self.decode_next()
    }

    fn fail(&mut self, err: Error) -> Result<Option<Vec<f32>>> {
        self.done = true;
        Err(err)
    }

    fn decode_next(&mut self) -> Result<Option<Vec<f32>>> {
        let mut mono = Vec::new();
        loop {
            if self.done {
                return Ok(None);
            }
            let packet = match guarded(|| self.format.next_packet()) {
                Err(msg) => return self.fail(corrupt_panic(&self.name, &msg)),
                Ok(Ok(p)) => p,
                Ok(Err(e)) if is_eof(&e) || matches!(e, SymphoniaError::ResetRequired) => {
                    self.done = true;
                    if self.samples == 0 {
                        return Err(self.no_samples());
                    }
                    if let Some(err) = self.ended_early() {
                        return Err(err);
                    }
                    return Ok(None);
                }
                Ok(Err(e)) => {
                    let err = Error::Audio(format!("{} is corrupt ({e}): re-encode it", self.name));
                    return self.fail(err);
                }
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let codec = &mut self.codec;
            let decoded = guarded(|| {
                codec.decode(&packet).map(|buf| {
                    let rate = buf.spec().rate;
                    let channels = buf.spec().channels.count();
                    mix_down(&buf, &mut mono);
                    (rate, channels)
                })
            });
            match decoded {
                Err(msg) => return self.fail(corrupt_panic(&self.name, &msg)),
                Ok(Ok((rate, channels))) => {
                    if mono.is_empty() {
                        continue;
                    }
                    if channels == 0 || !(MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE).contains(&rate) {
                        let err = Error::Audio(format!(
                            "{} decodes to {channels} channels at {rate} Hz: the file is corrupt, re-encode it",
                            self.name
                        ));
                        return self.fail(err);
                    }
                    if self.samples == 0 {
                        self.info.sample_rate = rate;
                        self.info.channels = channels;
                    } else if rate != self.info.sample_rate {
                        let err = Error::Audio(format!(
                            "{} changes sample rate mid-stream ({} Hz, then {rate} Hz): convert it to a single rate",
                            self.name, self.info.sample_rate
                        ));
                        return self.fail(err);
                    }
                    if let Some(bad) = mono.iter().position(|x| !is_plausible_sample(*x)) {
                        let seconds = (self.samples + bad as u64) as f64 / rate as f64;
                        let err = Error::Audio(format!(
                            "{} holds a sample that is {} at {seconds:.3} s: float audio lies within ±1, and values that are not finite or beyond ±{MAX_SAMPLE_MAGNITUDE} are corrupt data, not sound; re-export the file",
                            self.name,
                            describe_sample(mono[bad])
                        ));
                        return self.fail(err);
                    }
                    if let Some(end) = self.end_at {
                        let room = end.saturating_sub(self.samples);
                        if room == 0 {
                            self.done = true;
                            return Ok(None);
                        }
                        mono.truncate(usize::try_from(room).unwrap_or(usize::MAX).min(mono.len()));
                    }
                    self.samples += mono.len() as u64;
                    return Ok(Some(mono));
                }
                Ok(Err(SymphoniaError::DecodeError(_))) | Ok(Err(SymphoniaError::IoError(_))) => {
                    self.skipped_packets += 1;
                }
                Ok(Err(SymphoniaError::ResetRequired)) => self.codec.reset(),
                Ok(Err(SymphoniaError::Unsupported(what))) => {
                    let err = Error::Audio(format!(
                        "{} uses a feature the {} decoder lacks ({what}): convert it to one of {SUPPORTED_FORMATS}",
                        self.name, self.info.codec
                    ));
                    return self.fail(err);
                }
                Ok(Err(e)) => {
                    let err = Error::Audio(format!("{} is corrupt ({e}): re-encode it", self.name));
                    return self.fail(err);
                }
            }
        }
    }

    /// At the end of the stream: fewer frames than the file declares is a cut file (unless the
    /// caller asked for the partial audio).
    fn ended_early(&self) -> Option<Error> {
        let declared = self.info.frames.filter(|_| self.frames_are_declared)?;
        let rate = f64::from(self.info.sample_rate.max(1));
        let short = declared.saturating_sub(self.samples) > SHORT_FRAMES_TOLERATED;
        (short && self.options.truncated == TruncatedAudio::Refuse).then(|| {
            let skipped = match self.skipped_packets {
                0 => String::new(),
                n => format!(" after {n} malformed packets were skipped"),
            };
            let what = format!(
                "its headers declare {declared} frames ({:.2} s), the file holds {} ({:.2} s){skipped}",
                declared as f64 / rate,
                self.samples,
                self.samples as f64 / rate
            );
            cut_short(&self.name, &what)
        })
    }

    fn no_samples(&self) -> Error {
        let skipped = match self.skipped_packets {
            0 => String::new(),
            n => format!(", {n} malformed packets skipped"),
        };
        Error::Audio(format!(
            "{} contains no audio samples (the stream is empty, or truncated or corrupt before its first sound{skipped}): copy or re-encode the file",
            self.name
        ))
    }
}

/// Up to `len` bytes of `file` at `offset` (fewer at its end); `len` never exceeds the file's
/// size (container_check checks a length before reading it).
fn read_at<R: Read + Seek + ?Sized>(
    file: &mut R,
    offset: u64,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

fn io_error(name: &str, e: std::io::Error) -> Error {
    Error::Audio(format!(
        "{name}: cannot be read ({e}): check the file and its permissions"
    ))
}

/// A source read with a few 4-byte fields replaced (`container_check::rf64_as_riff`).
struct Patched {
    inner: Box<dyn MediaSource>,
    patches: Vec<(u64, [u8; 4])>,
    pos: u64,
}

impl Read for Patched {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (at, bytes) in &self.patches {
            for (i, b) in bytes.iter().enumerate() {
                let Some(k) = (at + i as u64).checked_sub(self.pos) else {
                    continue;
                };
                if k < n as u64 {
                    buf[k as usize] = *b;
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Patched {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

impl MediaSource for Patched {
    fn is_seekable(&self) -> bool {
        self.inner.is_seekable()
    }

    fn byte_len(&self) -> Option<u64> {
        self.inner.byte_len()
    }
}

/// A header that `container_check` refused, as the message for `name`.
fn refuse(name: &str, container: &str, verdict: container_check::Check) -> Result<()> {
    match verdict {
        Ok(()) => Ok(()),
        Err(Refusal::Truncated) => Err(truncated(name, container)),
        Err(Refusal::Corrupt(what)) => Err(Error::Audio(format!(
            "{name} is corrupt: {what}; re-encode or re-download the file"
        ))),
    }
}

fn truncated(name: &str, container: &str) -> Error {
    Error::Audio(format!(
        "{name} is truncated: the {container} data ends inside its header (the file is cut short, copy it again)"
    ))
}

/// The file holds less audio than it declares (`what` says both).
fn cut_short(name: &str, what: &str) -> Error {
    Error::Audio(format!(
        "{name} is truncated: {what} (a half-copied or cut file); copy it again, or to use the audio before the cut run SELECT audiotext_option('truncated_audio', 'partial') first"
    ))
}

fn not_supported(name: &str) -> Error {
    Error::Audio(format!(
        "{name} is not a supported audio file ({SUPPORTED_FORMATS}): convert it to one of these"
    ))
}

fn corrupt_panic(name: &str, msg: &str) -> Error {
    Error::Audio(format!(
        "{name} is corrupt (decoder failed: {msg}): re-encode it"
    ))
}

/// An error while reading the container's headers.
fn header_error(name: &str, container: &str, e: SymphoniaError) -> Error {
    if is_eof(&e) {
        return truncated(name, container);
    }
    match e {
        SymphoniaError::Unsupported(what) => Error::Audio(format!(
            "{name} could not be read as {container} ({what}): the file is corrupt, or uses a {container} feature this decoder lacks; re-encode it as one of {SUPPORTED_FORMATS}"
        )),
        other => Error::Audio(format!("{name} is corrupt ({other}): re-encode it")),
    }
}

/// Averages all channels of `buf` into `out` (replacing its content).
fn mix_down(buf: &AudioBufferRef, out: &mut Vec<f32>) {
    match buf {
        AudioBufferRef::U8(b) => mix_planes(b, out),
        AudioBufferRef::U16(b) => mix_planes(b, out),
        AudioBufferRef::U24(b) => mix_planes(b, out),
        AudioBufferRef::U32(b) => mix_planes(b, out),
        AudioBufferRef::S8(b) => mix_planes(b, out),
        AudioBufferRef::S16(b) => mix_planes(b, out),
        AudioBufferRef::S24(b) => mix_planes(b, out),
        AudioBufferRef::S32(b) => mix_planes(b, out),
        AudioBufferRef::F32(b) => mix_planes(b, out),
        AudioBufferRef::F64(b) => mix_planes(b, out),
    }
}

fn mix_planes<S: Sample>(buf: &AudioBuffer<S>, out: &mut Vec<f32>)
where
    f32: FromSample<S>,
{
    let channels = buf.spec().channels.count();
    out.clear();
    out.resize(buf.frames(), 0.0);
    for c in 0..channels {
        for (o, &s) in out.iter_mut().zip(buf.chan(c)) {
            *o += f32::from_sample(s);
        }
    }
    if channels > 1 {
        let k = channels as f32;
        out.iter_mut().for_each(|o| *o /= k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn borrowed_bytes_read_and_seek_like_a_cursor() {
        let data: Vec<u8> = (0..10).collect();
        let mut ours = unsafe { BorrowedBytes::new(&data) };
        let mut cursor = Cursor::new(data.clone());
        for to in [
            SeekFrom::Start(3),
            SeekFrom::Current(4),
            SeekFrom::End(-2),
            SeekFrom::Current(-9),
            SeekFrom::End(5),
            SeekFrom::Start(0),
        ] {
            assert_eq!(ours.seek(to).unwrap(), cursor.seek(to).unwrap(), "{to:?}");
            let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
            assert_eq!(
                ours.read(&mut a).unwrap(),
                cursor.read(&mut b).unwrap(),
                "{to:?}"
            );
            assert_eq!(a, b, "{to:?}");
        }
        assert!(ours.seek(SeekFrom::Current(-100)).is_err());
        assert_eq!(ours.byte_len(), Some(10));
    }

    #[test]
    fn sniffs_containers() {
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        assert_eq!(sniff_head(&wav), Some("wav"));
        wav[8] = b'X';
        assert_eq!(sniff_head(&wav), None);
        assert_eq!(sniff_head(b"fLaC\0\0\0\x22"), Some("flac"));
        assert_eq!(sniff_head(b"OggS\0\x02"), Some("ogg"));
        assert_eq!(sniff_head(b"\0\0\0\x20ftypM4A "), Some("mp4"));
        assert_eq!(sniff_head(&[0x1a, 0x45, 0xdf, 0xa3, 0x01]), Some("mkv"));
        assert_eq!(sniff_head(&[0xff, 0xfb, 0x90, 0x64]), Some("mp3"));
        assert_eq!(sniff_head(&[0xff, 0xf1, 0x50, 0x80]), Some("aac"));
        assert_eq!(sniff_head(&[0xff, 0xfb, 0xf0, 0x64]), None); // bitrate index 15
        assert_eq!(sniff_head(&[0xff, 0xfd, 0x90, 0x64]), None); // layer II
        assert_eq!(sniff_head(b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(sniff_head(b"hello"), None);
        // An ID3v2 tag (size 4, syncsafe) followed by an MP3 frame.
        let mut tagged = b"ID3\x04\0\0\0\0\0\x04abcd".to_vec();
        tagged.extend_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        assert_eq!(sniff(&mut Cursor::new(&tagged)).unwrap(), Some("mp3"));
        tagged.truncate(14);
        assert_eq!(sniff(&mut Cursor::new(&tagged)).unwrap(), None);
        // Two tags in a row (v2.3, then v2.4 with its footer flag), then the frame; and a
        // tag in front of a FLAC stream.
        let mut stacked = b"ID3\x03\0\0\0\0\0\x02ab".to_vec();
        stacked.extend_from_slice(b"ID3\x04\0\x10\0\0\0\x01c");
        stacked.extend_from_slice(b"3DI\x04\0\x10\0\0\0\x01");
        stacked.extend_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        assert_eq!(sniff(&mut Cursor::new(&stacked)).unwrap(), Some("mp3"));
        let mut flac = b"ID3\x03\0\0\0\0\0\x02ab".to_vec();
        flac.extend_from_slice(b"fLaC\0\0\0\x22");
        assert_eq!(sniff(&mut Cursor::new(&flac)).unwrap(), Some("flac"));
    }

    /// A mono float WAV of `samples`.
    fn float_wav(samples: &[f32]) -> Vec<u8> {
        let data_len = (samples.len() * 4) as u32;
        let mut b = b"RIFF".to_vec();
        b.extend((36 + data_len).to_le_bytes());
        b.extend(b"WAVEfmt \x10\0\0\0\x03\0\x01\0");
        b.extend(8000u32.to_le_bytes());
        b.extend(32000u32.to_le_bytes());
        b.extend(b"\x04\0\x20\0data");
        b.extend(data_len.to_le_bytes());
        b.extend(samples.iter().flat_map(|x| x.to_le_bytes()));
        b
    }

    /// Regression (fuzzing, decode_audio): a float WAV holding 1e38 made rubato's FFT overflow
    /// to NaN, and rubato panicked; NaN and infinity would make every embedding NaN.
    #[test]
    fn float_samples_that_are_not_audio_are_refused() {
        let ok = float_wav(&[0.5; 64]);
        assert!(Decoder::open(AudioSource::Bytes(&ok)).is_ok());
        for bad in [1e38, f32::NAN, f32::NEG_INFINITY, -2000.0] {
            let mut samples = vec![0.25f32; 64];
            samples[10] = bad;
            let e = Decoder::open(AudioSource::Bytes(&float_wav(&samples)))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("audio blob holds a sample that is ")
                    && e.contains("re-export the file"),
                "{e}"
            );
        }
    }

    /// Regression (fuzzing, decode_audio): a 64 Hz WAV took 20 s to resample.
    #[test]
    fn sample_rates_below_audio_are_refused() {
        let mut wav = float_wav(&[0.5; 64]);
        wav[24..28].copy_from_slice(&64u32.to_le_bytes());
        let e = Decoder::open(AudioSource::Bytes(&wav))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("audio blob declares a sample rate of 64 Hz"),
            "{e}"
        );
    }

    #[test]
    fn empty_and_garbage_blobs() {
        let e = Decoder::open(AudioSource::Bytes(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "audio blob is empty (0 bytes)");
        let e = Decoder::open(AudioSource::Bytes(b"not audio at all"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("audio blob is not a supported audio file ({SUPPORTED_FORMATS}): convert it to one of these")
        );
    }
}
