//! Fuzz target: `fuzz_checks::stomp_codec` (what must hold is written there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::stomp_codec(data));
