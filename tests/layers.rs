//! The crate's modules form layers, and a module uses only layers below its own: no import
//! cycles, no low module reaching up into a high one. The table is the architecture the
//! docs/architecture.md describes; this test reads every source file and fails on a `crate::` path that
//! points upward (or sideways into a module of the same rank).

use std::collections::BTreeMap;
use std::path::Path;

/// Rank of each top-level module, lowest first.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("rng", 0),
    ("model", 1),
    ("os_limits", 1),
    ("tome", 2),
    ("preprocess", 2),
    ("io", 3),
    ("reference", 3),
    ("gpu", 3),
    ("kernels", 4),
    ("runtime", 5),
    ("api", 6),
    ("fuzzing", 7),
    ("bench", 7),
    ("eval", 8),
    ("cli", 9),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// Source without comments (doc links name modules without depending on them).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::NAME` in `text`, and the NAMEs inside `use crate::{a, b::c}` groups.
fn referenced(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = rank(&top) else {
            panic!("module {top} ({}) has no layer in LAYERS", rel.display());
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in referenced(&code(&text)) {
            if used == top || used.is_empty() {
                continue;
            }
            // Names re-exported at the crate root (`crate::Error`) are the error layer's.
            let target = match rank(&used) {
                Some(_) => used.clone(),
                None if used == "Error" || used == "Result" => "error".into(),
                None => continue,
            };
            if target == top {
                continue;
            }
            let theirs = rank(&target).unwrap();
            edges
                .entry((top.clone(), target.clone()))
                .or_insert_with(|| rel.display().to_string());
            if theirs >= own {
                violations.push(format!(
                    "{} (layer {own}) uses crate::{target} (layer {theirs})",
                    rel.display()
                ));
            }
        }
    }
    for ((from, to), at) in &edges {
        eprintln!("{from} -> {to}   (e.g. {at})");
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
