//! Fuzz target: `checks::broker_passthrough` (what must hold is written there).
#![no_main]

#[path = "../checks/src/lib.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::broker_passthrough(data));
