//! Vector BLOBs, as audio_text_score receives them: a vector or an error, never a non-finite
//! value.
#![no_main]

use audiotext_core::index::blob::vector_from_blob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = vector_from_blob(data) {
        assert_eq!(v.len() * 4, data.len());
        assert!(v.iter().all(|x| x.is_finite()), "non-finite value returned");
    }
});
