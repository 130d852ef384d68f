//! ImageNet-1k class names, in the order of the models' logits.

use std::sync::OnceLock;

const CLASSES_TXT: &str = include_str!("../../assets/imagenet_classes.txt");

/// The ImageNet-1k class name for a class index (0..1000), or `None` out of range.
pub fn imagenet_class(i: usize) -> Option<&'static str> {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            CLASSES_TXT
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .get(i)
        .copied()
}
