//! The fuzz targets (`sret_tome::fuzzing`) on stable Rust, on every test run: every committed
//! corpus file (`fuzz/corpus/<target>/`, seeds plus what libFuzzer found and kept) and random
//! mutations of them (bit flips, special bytes, truncations, duplicated and inserted runs) from
//! a fixed seed, or `SRET_TOME_FUZZ_SEED`. Any panic fails the test and names the input.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use sret_tome::rng::SplitMix64;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out: Vec<_> = files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    assert!(!out.is_empty(), "no corpus for {target}");
    out
}

fn mutate(rng: &mut SplitMix64, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0u8, 0xFF, 0x7F, 0x80, b'0', b','][rng.below(6)];
            }
            2 => v.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let run = v[a..b].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, run);
            }
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                v.splice(at..at, bytes);
            }
            _ if len >= 8 => {
                // A length-like field: overwrite 8 bytes with a huge little-endian number.
                let i = rng.below(len - 7);
                v[i..i + 8].copy_from_slice(&(u64::MAX >> rng.below(40)).to_le_bytes());
            }
            _ => v.push(rng.below(256) as u8),
        }
    }
    v
}

fn exercise(target: &str, f: fn(&[u8]), mutations: usize) {
    let seed = std::env::var("SRET_TOME_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = SplitMix64::new(seed);
    let inputs = corpus(target);
    for (name, data) in &inputs {
        if catch_unwind(AssertUnwindSafe(|| f(data))).is_err() {
            panic!("{target}: corpus file {name} panics");
        }
    }
    for i in 0..mutations {
        let (name, data) = &inputs[rng.below(inputs.len())];
        let input = mutate(&mut rng, data);
        if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
            let dump = std::env::temp_dir().join(format!("sret-tome-{target}-crash-{i}"));
            let _ = std::fs::write(&dump, &input);
            panic!(
                "{target}: mutation {i} of {name} panics (seed {seed}; input saved to {})",
                dump.display()
            );
        }
    }
}

#[test]
fn weights_loader_survives_its_corpus_and_mutations() {
    exercise("weights", sret_tome::fuzzing::weights, 20_000);
}

#[test]
fn checkpoint_reader_survives_its_corpus_and_mutations() {
    exercise("checkpoint", sret_tome::fuzzing::checkpoint, 20_000);
}

#[test]
fn schedule_parser_survives_its_corpus_and_mutations() {
    exercise("schedule", sret_tome::fuzzing::schedule, 50_000);
}

#[test]
fn image_decoder_survives_its_corpus_and_mutations() {
    exercise("image", sret_tome::fuzzing::image, 20_000);
}
