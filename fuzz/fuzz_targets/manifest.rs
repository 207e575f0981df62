//! manifest.json: parse, then validate the audio section as loading a bundle does (the
//! front-end's settings and the windowing), never a panic or a huge allocation.
#![no_main]

use audiotext_fuzz::audio::mel::MelExtractor;
use audiotext_fuzz::audio::stream::WindowPlan;
use audiotext_fuzz::model::manifest::Manifest;
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
    // What is read must write back.
    let json = serde_json::to_string(&manifest).unwrap();
    assert_eq!(Manifest::parse(json.as_bytes(), "manifest.json").unwrap(), manifest);
});
