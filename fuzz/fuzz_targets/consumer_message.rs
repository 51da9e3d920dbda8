//! Fuzz target: `fuzz_checks::consumer_message` (what must hold is written there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::consumer_message(data));
