#![no_main]
//! See `sret_tome::fuzzing::image`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sret_tome::fuzzing::image(data));
