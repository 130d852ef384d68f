//! Entry points for fuzzers: each takes arbitrary bytes, feeds them to one loader the way a user's
//! file would reach it, and returns nothing. Whatever the bytes, the loaders must return an
//! error or a value, never panic, hang or allocate without bound. `fuzz/` runs them under
//! libFuzzer (`cargo +nightly fuzz run weights`), and `tests/fuzz_corpus.rs` replays the
//! committed corpora plus random mutations of them on every test run.

use std::path::Path;
use std::sync::OnceLock;

use crate::io::checkpoint::{load_checkpoint_bytes, read_state_dict_bytes};
use crate::io::decode_rgb8_bytes;
use crate::io::safetensors::load_safetensors_bytes;
use crate::model::ModelConfig;
use crate::preprocess::preprocess_rgb8;
use crate::tome::{Schedule, Trajectory};

fn sret_t() -> &'static ModelConfig {
    static CFG: OnceLock<ModelConfig> = OnceLock::new();
    CFG.get_or_init(|| ModelConfig::by_name("sret_t").expect("a built-in model"))
}

/// The layouts a weight file is read against: SReT's and the two timm layouts (DeiT with
/// class and distillation tokens, PiT with its pooling under two spellings).
fn layouts() -> &'static [ModelConfig] {
    static CFGS: OnceLock<Vec<ModelConfig>> = OnceLock::new();
    CFGS.get_or_init(|| {
        ["sret_t", "deit_tiny_distill", "pit_ti_distill"]
            .iter()
            .map(|n| ModelConfig::by_name(n).expect("a built-in model"))
            .collect()
    })
}

/// A safetensors weight file for `sret_t`, DeiT-Tiny-Distill and PiT-Ti-Distill.
pub fn weights(data: &[u8]) {
    for cfg in layouts() {
        let _ = load_safetensors_bytes(data, Path::new("fuzz.safetensors"), cfg);
    }
}

/// A PyTorch checkpoint (`torch.save` zip with a pickle): the raw state dict, then as weights
/// of each layout.
pub fn checkpoint(data: &[u8]) {
    let path = Path::new("fuzz.pth");
    if read_state_dict_bytes(data, path).is_ok() {
        for cfg in layouts() {
            let _ = load_checkpoint_bytes(data, path, cfg);
        }
    }
}

/// A `--schedule` value: parsed, printed and parsed again (the same schedule), and planned for
/// `sret_t` (the merging constraints applied to whatever it asks for).
pub fn schedule(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = text.parse::<Schedule>() {
        let again: Schedule = s
            .to_string()
            .parse()
            .expect("a printed schedule parses again");
        assert_eq!(again, s, "printing and parsing {text:?} changed it");
        let _ = Trajectory::new(sret_t(), &s);
    }
}

/// An image file (JPEG, PNG, whatever the `image` crate recognises): decoded to RGB8 and, when
/// that succeeds, preprocessed to the model's input.
pub fn image(data: &[u8]) {
    if let Ok(img) = decode_rgb8_bytes(data, Path::new("fuzz.img")) {
        let x = preprocess_rgb8(&img);
        assert_eq!(x.len(), 3 * 224 * 224, "preprocessed input size");
    }
}
