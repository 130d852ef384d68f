//! What to evaluate on: an image folder laid out as torchvision's `ImageFolder`, a flat folder of
//! unlabelled images, or deterministic synthetic inputs.
//!
//! `ImageFolder` semantics (torchvision 0.26 `datasets/folder.py`), reproduced so that label
//! indices agree with a PyTorch evaluation of the same folder:
//!
//! * the classes are the sub-directories of the root (symlinks followed), sorted by name; class
//!   `i` of that sorted list has label `i` (for ImageNet's validation set laid out as 1000 WordNet
//!   id folders `n01440764 ...` that is the ImageNet-1k class index);
//! * the samples of a class are the files anywhere below its folder whose lower-cased name ends
//!   with one of [`IMG_EXTENSIONS`], ordered by directory path, then by file name, classes in
//!   label order.
//!
//! Differences, all reported rather than fatal: files with other extensions are *named* in
//! [`Dataset::skipped`] (torchvision drops them silently), files directly in the root are skipped
//! too, and an empty class folder is a warning (torchvision raises). Files with an image extension
//! that do not decode are found later, by the loader, and counted and named there.
//!
//! With fewer or more class folders than the model has classes, sorted indices are not ImageNet
//! indices; [`ClassMap::ImagenetNames`] maps folders named after ImageNet classes (`tabby`,
//! `tiger_cat`, case-insensitive, `_` for spaces) or after class indices (`281`) instead.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// torchvision's `IMG_EXTENSIONS`: what `ImageFolder` takes as a sample. This crate decodes JPEG
/// and PNG (by content, not name); the others are counted as unreadable when met.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// A file that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The file, as given or found.
    pub path: String,
    /// Why it was not used.
    pub why: String,
}

/// Where a sample's pixels come from.
#[derive(Clone, Debug, PartialEq)]
pub enum SampleItem {
    /// An image file, decoded and preprocessed as torchvision's ImageNet evaluation transform.
    File(PathBuf),
    /// [`crate::model::synthetic_images`] of one image with this seed.
    Synthetic {
        /// Seed of the image's pixels.
        seed: u64,
    },
}

/// One image of a data set, with its position and label.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Position in the whole data set (before `--limit` and sharding): identifies the sample in
    /// results and across shards.
    pub index: usize,
    /// Where its pixels come from.
    pub item: SampleItem,
    /// The model's class index, when the layout has labels.
    pub label: Option<usize>,
}

impl Sample {
    /// The file path, or a description of the synthetic image, for messages.
    pub fn describe(&self) -> String {
        match &self.item {
            SampleItem::File(p) => p.display().to_string(),
            SampleItem::Synthetic { seed } => format!("synthetic image (seed {seed})"),
        }
    }
}

/// How a folder is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Layout {
    /// ImageFolder when the root has sub-directories, otherwise flat.
    #[default]
    Auto,
    /// One sub-folder per class (labelled).
    ImageFolder,
    /// Every image file below the root, without labels (fidelity only).
    Flat,
}

/// How class folders become the model's class indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassMap {
    /// `sorted` when there are as many folders as model classes, else `imagenet-names` when every
    /// folder name maps, else `sorted` with a warning.
    #[default]
    Auto,
    /// The folder's position among the sorted folders (torchvision's `ImageFolder`).
    Sorted,
    /// The ImageNet-1k class whose name (or index) the folder is named after.
    ImagenetNames,
}

/// The data to evaluate on.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// Image files under a directory.
    Folder {
        /// The directory.
        root: PathBuf,
        /// How the directory is read (class folders or flat).
        layout: Layout,
        /// How class folders map to the model's class indices.
        class_map: ClassMap,
    },
    /// `count` deterministic synthetic images, image `i` drawn with seed `seed + i`.
    Synthetic {
        /// Number of images.
        count: usize,
        /// Seed of the first image.
        seed: u64,
    },
}

impl DataSource {
    /// A description that identifies the data in results (shards must agree on it).
    pub fn describe(&self) -> String {
        match self {
            DataSource::Folder { root, .. } => format!("folder {}", root.display()),
            DataSource::Synthetic { count, seed } => {
                format!("synthetic {count} images (seed {seed})")
            }
        }
    }

    /// Scan the data (no decoding yet).
    pub fn open(&self, num_classes: usize) -> Result<Dataset> {
        match self {
            DataSource::Synthetic { count, .. } if *count > MAX_SAMPLES => Err(Error::arg(
                "synthetic",
                count,
                format!("at most {MAX_SAMPLES} images"),
            )),
            DataSource::Synthetic { count, seed } => Ok(Dataset {
                source: self.describe(),
                classes: Vec::new(),
                class_labels: Vec::new(),
                class_map: None,
                samples: (0..*count)
                    .map(|i| Sample {
                        index: i,
                        item: SampleItem::Synthetic {
                            seed: seed.wrapping_add(i as u64),
                        },
                        label: None,
                    })
                    .collect(),
                total: *count,
                skipped: Vec::new(),
                warnings: Vec::new(),
            }),
            DataSource::Folder {
                root,
                layout,
                class_map,
            } => scan_folder(root, *layout, *class_map, num_classes),
        }
    }
}

/// A scanned data set.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Description of the data (see [`DataSource::describe`]).
    pub source: String,
    /// Class folder names, sorted (empty without labels).
    pub classes: Vec<String>,
    /// The model class index of each class folder.
    pub class_labels: Vec<usize>,
    /// How folders were mapped to class indices (`None` without labels).
    pub class_map: Option<ClassMap>,
    /// The samples, in data-set order.
    pub samples: Vec<Sample>,
    /// Number of samples in the whole data set (before [`Dataset::limit`] and sharding).
    pub total: usize,
    /// Files that are not samples: no image extension, or not inside a class folder.
    pub skipped: Vec<Problem>,
    /// Remarks about the scan (e.g. an uncertain class mapping), copied into results.
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Whether the samples have labels (a class mapping was made).
    pub fn labelled(&self) -> bool {
        self.class_map.is_some()
    }

    /// Keep `n` samples spread evenly over the data set (sample `floor(i * len / n)` for `i` in
    /// `0..n`), so that every class of a class-sorted folder is represented. No-op when `n` is at
    /// least the number of samples.
    pub fn limit(&mut self, n: usize) {
        let len = self.samples.len();
        if n >= len {
            return;
        }
        let keep: Vec<Sample> = (0..n).map(|i| self.samples[i * len / n].clone()).collect();
        self.samples = keep;
    }
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether a file name is an image for `ImageFolder` (its lower-cased name ends with one of
/// [`IMG_EXTENSIONS`]).
pub fn has_image_extension(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// Most samples a data set may hold (`--synthetic N` and folders alike), and most directory
/// entries a folder scan goes through.
pub const MAX_SAMPLES: usize = 4_000_000;

/// What a scan has gone through so far: entries seen (bounded by [`MAX_SAMPLES`]) and the
/// data folder's canonical path, inside which symbolic links to directories are followed.
struct Scan {
    root: PathBuf,
    entries: usize,
}

impl Scan {
    fn new(root: &Path) -> Result<Scan> {
        Ok(Scan {
            root: std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?,
            entries: 0,
        })
    }

    fn count(&mut self, root: &Path) -> Result<()> {
        self.entries += 1;
        if self.entries > MAX_SAMPLES {
            return Err(Error::arg(
                "data",
                root.display(),
                format!("more than {MAX_SAMPLES} entries below it (the most a scan reads)"),
            ));
        }
        Ok(())
    }

    /// Whether the directory `path` is walked: yes unless it is a symbolic link whose target
    /// lies outside the data folder (a link to `/` would walk the whole file system), which is
    /// listed in `skipped`.
    fn follow(&self, path: &Path, skipped: &mut Vec<Problem>) -> bool {
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            return true;
        }
        match std::fs::canonicalize(path) {
            Ok(c) if c.starts_with(&self.root) => true,
            Ok(c) => {
                skipped.push(Problem {
                    path: path.display().to_string(),
                    why: format!(
                        "symbolic link to a directory outside the data folder ({}), not followed",
                        c.display()
                    ),
                });
                false
            }
            Err(e) => {
                skipped.push(Problem {
                    path: path.display().to_string(),
                    why: format!("cannot resolve the link: {e}"),
                });
                false
            }
        }
    }
}

/// Files below `dir` (symlinks inside the data folder followed, loops cut), ordered as
/// torchvision's `sorted(os.walk(dir, followlinks=True))` then `sorted(fnames)`. Directories
/// that cannot be read are listed in `skipped` (with why) and the walk goes on.
fn walk_sorted(dir: &Path, scan: &mut Scan, skipped: &mut Vec<Problem>) -> Result<Vec<PathBuf>> {
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files_of: Vec<(String, Vec<PathBuf>)> = Vec::new();
    while let Some(d) = stack.pop() {
        if let Ok(c) = std::fs::canonicalize(&d) {
            if !seen.insert(c) {
                continue;
            }
        }
        let mut files = Vec::new();
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                skipped.push(Problem {
                    path: d.display().to_string(),
                    why: format!("directory not readable ({e}); its files are not counted"),
                });
                continue;
            }
        };
        for entry in rd {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push(Problem {
                        path: d.display().to_string(),
                        why: format!("cannot list an entry ({e})"),
                    });
                    continue;
                }
            };
            scan.count(&scan.root.clone())?;
            let path = entry.path();
            // `metadata` follows symlinks; a dangling link is a file that will fail to decode.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {
                    if scan.follow(&path, skipped) {
                        stack.push(path)
                    }
                }
                _ => files.push(path),
            }
        }
        files.sort_by_key(|p| name_of(p));
        files_of.push((d.to_string_lossy().into_owned(), files));
    }
    files_of.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files_of.into_iter().flat_map(|(_, f)| f).collect())
}

fn not_an_image(path: &Path) -> Problem {
    Problem {
        path: path.display().to_string(),
        why: format!(
            "not an image file by its name (ImageFolder takes {})",
            IMG_EXTENSIONS.join(" ")
        ),
    }
}

/// Normalised class name for matching folder names: lower case, `_` as space, trimmed.
fn norm_name(s: &str) -> String {
    s.trim().to_lowercase().replace('_', " ")
}

/// The ImageNet class a folder is named after (by name or index), if any.
pub fn imagenet_label_of(folder: &str, num_classes: usize) -> Option<usize> {
    let t = folder.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<usize>().ok().filter(|&i| i < num_classes);
    }
    let want = norm_name(t);
    (0..num_classes)
        .find(|&i| crate::model::imagenet_class(i).is_some_and(|n| norm_name(n) == want))
}

fn scan_folder(
    root: &Path,
    layout: Layout,
    class_map: ClassMap,
    num_classes: usize,
) -> Result<Dataset> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(Error::arg(
            "data",
            root.display(),
            "not a directory (expected an image folder)",
        ));
    }
    let mut scan = Scan::new(root)?;
    let mut skipped = Vec::new();
    let mut subdirs = Vec::new();
    let mut root_files = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        scan.count(root)?;
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                if scan.follow(&path, &mut skipped) {
                    subdirs.push(path)
                }
            }
            _ => root_files.push(path),
        }
    }
    subdirs.sort_by_key(|p| name_of(p));
    root_files.sort_by_key(|p| name_of(p));
    let folder = layout == Layout::ImageFolder || (layout == Layout::Auto && !subdirs.is_empty());
    let mut ds = Dataset {
        source: format!("folder {}", root.display()),
        classes: Vec::new(),
        class_labels: Vec::new(),
        class_map: None,
        samples: Vec::new(),
        total: 0,
        skipped,
        warnings: Vec::new(),
    };
    if !folder {
        for path in walk_sorted(root, &mut scan, &mut ds.skipped)? {
            if has_image_extension(&name_of(&path)) {
                ds.samples.push(Sample {
                    index: ds.samples.len(),
                    item: SampleItem::File(path),
                    label: None,
                });
            } else {
                ds.skipped.push(not_an_image(&path));
            }
        }
        ds.total = ds.samples.len();
        return Ok(ds);
    }
    if subdirs.is_empty() {
        return Err(Error::arg(
            "data",
            root.display(),
            "an ImageFolder needs one sub-directory per class, and this one has none",
        ));
    }
    for path in root_files {
        ds.skipped.push(Problem {
            path: path.display().to_string(),
            why: "not inside a class folder (ImageFolder reads only the class sub-directories)"
                .into(),
        });
    }
    ds.classes = subdirs.iter().map(|p| name_of(p)).collect();
    let (used, by_name) = choose_class_map(&ds.classes, class_map, num_classes, &mut ds.warnings)?;
    ds.class_labels = match used {
        ClassMap::ImagenetNames => by_name.iter().map(|l| l.unwrap_or(0)).collect(),
        _ => (0..ds.classes.len()).collect(),
    };
    if used == ClassMap::Sorted && ds.classes.len() > num_classes {
        ds.warnings.push(format!(
            "{} class folders but the model has {num_classes} classes: images of folders past the {num_classes}th can never be classified correctly",
            ds.classes.len()
        ));
    }
    ds.class_map = Some(used);
    for (c, dir) in subdirs.iter().enumerate() {
        let before = ds.samples.len();
        for path in walk_sorted(dir, &mut scan, &mut ds.skipped)? {
            if has_image_extension(&name_of(&path)) {
                ds.samples.push(Sample {
                    index: ds.samples.len(),
                    item: SampleItem::File(path),
                    label: Some(ds.class_labels[c]),
                });
            } else {
                ds.skipped.push(not_an_image(&path));
            }
        }
        if ds.samples.len() == before {
            ds.warnings
                .push(format!("class folder '{}' has no images", ds.classes[c]));
        }
    }
    ds.total = ds.samples.len();
    Ok(ds)
}

/// How class folders map to the model's labels: `class_map` as asked (ImageNet names must all
/// name a class), or for `Auto` sorted positions when there are as many folders as classes,
/// ImageNet names when every folder is one, else sorted positions with a warning; with each
/// folder's ImageNet label where it names one.
fn choose_class_map(
    classes: &[String],
    class_map: ClassMap,
    num_classes: usize,
    warnings: &mut Vec<String>,
) -> Result<(ClassMap, Vec<Option<usize>>)> {
    let by_name: Vec<Option<usize>> = classes
        .iter()
        .map(|c| imagenet_label_of(c, num_classes))
        .collect();
    let all_named = by_name.iter().all(Option::is_some);
    let used = match class_map {
        ClassMap::Sorted => ClassMap::Sorted,
        ClassMap::ImagenetNames => {
            let bad: Vec<&str> = classes
                .iter()
                .zip(&by_name)
                .filter(|(_, l)| l.is_none())
                .map(|(c, _)| c.as_str())
                .collect();
            if !bad.is_empty() {
                return Err(Error::arg(
                    "class-map",
                    "imagenet-names",
                    format!(
                        "folder{} {} name{} no ImageNet class (nor a class index below {num_classes})",
                        if bad.len() == 1 { "" } else { "s" },
                        bad.iter().take(10).map(|b| format!("'{b}'")).collect::<Vec<_>>().join(", "),
                        if bad.len() == 1 { "s" } else { "" }
                    ),
                ));
            }
            ClassMap::ImagenetNames
        }
        ClassMap::Auto => {
            if classes.len() == num_classes {
                ClassMap::Sorted
            } else if all_named {
                ClassMap::ImagenetNames
            } else {
                warnings.push(format!(
                    "{} class folders for a {num_classes}-class model, and not all named after ImageNet classes: labels are the folders' sorted positions (torchvision ImageFolder), which are ImageNet indices only for the full set of {num_classes} WordNet-id folders",
                    classes.len()
                ));
                ClassMap::Sorted
            }
        }
    };
    Ok((used, by_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_like_torchvision() {
        assert!(has_image_extension("a.JPG"));
        assert!(has_image_extension("x.tar.jpeg"));
        assert!(has_image_extension("b.webp"));
        assert!(!has_image_extension("notes.txt"));
        assert!(!has_image_extension("jpg"));
        assert!(!has_image_extension(".DS_Store"));
    }

    #[test]
    fn imagenet_names_map() {
        assert_eq!(imagenet_label_of("tench", 1000), Some(0));
        assert_eq!(imagenet_label_of("Great_White_Shark", 1000), Some(2));
        assert_eq!(imagenet_label_of("281", 1000), Some(281));
        assert_eq!(imagenet_label_of("1000", 1000), None);
        assert_eq!(imagenet_label_of("n01440764", 1000), None);
    }

    #[test]
    fn limit_spreads_evenly() {
        let mut ds = DataSource::Synthetic { count: 10, seed: 0 }
            .open(1000)
            .unwrap();
        ds.limit(4);
        let idx: Vec<usize> = ds.samples.iter().map(|s| s.index).collect();
        assert_eq!(idx, [0, 2, 5, 7]);
        assert_eq!(ds.total, 10);
        ds.limit(100);
        assert_eq!(ds.samples.len(), 4);
    }
}
