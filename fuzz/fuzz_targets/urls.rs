//! Fuzz target: `fuzz_checks::urls` (what must hold is written there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::urls(data));
