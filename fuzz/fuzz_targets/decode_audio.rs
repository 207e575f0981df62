//! Audio bytes, as `audio_info` and `audio_embed` receive a BLOB: probe, decode to mono chunks,
//! then the front-end (resample + log-mel per window). Samples and features must be finite, or
//! the call an error; never a panic or a huge allocation.
#![no_main]

use std::sync::{Arc, OnceLock};

use audiotext_core::audio::decode::{AudioSource, Decoder};
use audiotext_core::audio::mel::MelExtractor;
use audiotext_core::audio::stream::LogMelWindows;
use audiotext_core::audio::{FrontEnd, Windowing};
use libfuzzer_sys::fuzz_target;

/// Decoded samples past this are not looked at (a small file of constant-size packets can
/// declare hours): the target is the parsing, not the length.
const MAX_SAMPLES: u64 = 1 << 22;

fn mel() -> &'static Arc<MelExtractor> {
    static MEL: OnceLock<Arc<MelExtractor>> = OnceLock::new();
    MEL.get_or_init(|| Arc::new(MelExtractor::new(&FrontEnd::panns_32k()).unwrap()))
}

/// symphonia panics on some malformed inputs and `decode` turns each such panic into an error,
/// as it does in the extension; libfuzzer-sys's hook would abort on them first. This hook keeps
/// quiet about panics inside symphonia and prints the others; a panic that escapes the target
/// still aborts (libfuzzer-sys catches it).
fn quiet_caught_symphonia_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            let inside = info.location().is_some_and(|l| l.file().contains("symphonia"));
            if !inside {
                eprintln!("{info}");
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    quiet_caught_symphonia_panics();
    let source = AudioSource::Bytes(data);
    let Ok(mut decoder) = Decoder::open(source) else {
        return;
    };
    while decoder.samples_decoded() < MAX_SAMPLES {
        match decoder.next_mono_chunk() {
            Ok(Some(chunk)) => {
                assert!(!chunk.is_empty());
                assert!(chunk.iter().all(|x| x.is_finite()), "non-finite sample");
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The front-end on short windows (one second), as audio_embed runs it.
    let windowing = Windowing {
        clip_seconds: 1.0,
        hop_seconds: 1.0,
        min_seconds: 0.0,
        ..Windowing::ten_seconds()
    };
    let Ok(windows) = LogMelWindows::new(&source, mel().clone(), &windowing) else {
        return;
    };
    for window in windows.take(8) {
        match window {
            Ok(m) => assert!(m.data.iter().all(|x| !x.is_nan()), "NaN in the log-mel"),
            Err(_) => break,
        }
    }
});
