//! Datasets stored as image files, one folder per class: the generic `image-folder` layout
//! (torchvision's `ImageFolder`), Caltech101's `101_ObjectCategories` and Tiny ImageNet.
//!
//! Each layout is first turned into a listing (files and labels of the training and test
//! parts); the listing is then decoded once per run (in parallel) or read back from the decode
//! cache (`image_cache`). Classes are the sorted sub-folder names, as `ImageFolder` numbers
//! them; only `.jpg`, `.jpeg` and `.png` files (any case) count as images, other files (notes,
//! `.DS_Store`) and hidden folders are skipped. A listed file that does not decode is an error
//! naming it: silently dropping images would change the dataset under the same config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::image_cache::{self, CacheKey};
use super::image_decode::{DecodeOptions, decode_all};
use super::split::{validation_count, validation_split};
use super::{DataError, Dataset, DatasetKind, TrainTest, check_dir, read_bytes};

/// Caltech101's class folder (the path may point at it or at the folder holding it).
pub const CALTECH101_DIR: &str = "101_ObjectCategories";
/// Caltech101's clutter class, left out by default as torchvision's `Caltech101` does.
pub const CALTECH101_BACKGROUND: &str = "BACKGROUND_Google";
/// Folder name inside the official Tiny ImageNet archive.
pub const TINY_IMAGENET_DIR: &str = "tiny-imagenet-200";

/// Everything besides the path that decides what an image-folder read produces.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderOptions {
    pub decode: DecodeOptions,
    /// Share of the images held out as the test set when the layout has no test folder.
    pub test_fraction: f64,
    /// Seed of that test split.
    pub split_seed: u64,
    /// Class folder names to leave out; `None` takes the layout's default.
    pub exclude: Option<Vec<String>>,
    /// Folder of the decode cache, if any.
    pub cache: Option<PathBuf>,
    /// Keep only this many training images (after the shuffle), so the rest is never decoded.
    pub limit_train: Option<usize>,
}

/// Image files and their labels, in listing order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub labels: Vec<u16>,
}

impl Listing {
    fn subset(&self, indices: &[u32]) -> Listing {
        Listing {
            files: indices
                .iter()
                .map(|&i| self.files[i as usize].clone())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i as usize]).collect(),
        }
    }
}

/// A dataset as found on disk, before decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderSet {
    pub classes: Vec<String>,
    pub train: Listing,
    pub test: Listing,
    /// The folders training and test images come from (for messages and `Dataset::sources`).
    pub train_root: PathBuf,
    pub test_root: PathBuf,
    /// Whether the test part was split off the training folder (then the key includes the
    /// split's seed and fraction).
    pub split: bool,
}

/// Lists the dataset of `kind` under `path` without decoding anything.
///
/// The training images come in a seeded shuffled order (from `split_seed`), not class by
/// class, so `limit_train` keeps a sample of every class rather than the first classes only.
pub fn list(kind: DatasetKind, path: &Path, opts: &FolderOptions) -> Result<FolderSet, DataError> {
    check_dir(path)?;
    let mut set = match kind {
        DatasetKind::Caltech101 => list_caltech101(path, opts),
        DatasetKind::TinyImagenet => list_tiny_imagenet(path, opts),
        DatasetKind::ImageFolder => list_image_folder(path, opts),
        other => Err(DataError::config(
            "kind",
            format!("`{other}` is not an image-folder kind"),
        )),
    }?;
    let mut order: Vec<u32> = (0..set.train.files.len() as u32).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        opts.split_seed ^ 0x6f72_6465_725f_7472, // "order_tr"
    ));
    if let Some(limit) = opts.limit_train {
        order.truncate(limit);
    }
    set.train = set.train.subset(&order);
    Ok(set)
}

/// Lists, then decodes (or reads from the cache) the dataset of `kind` under `path`. The string
/// says how long decoding or the cache took, for the run's log.
pub fn read(
    kind: DatasetKind,
    path: &Path,
    opts: &FolderOptions,
) -> Result<(TrainTest, String), DataError> {
    let set = list(kind, path, opts)?;
    let dims = [3, opts.decode.height as usize, opts.decode.width as usize];
    let n = set.train.files.len() + set.test.files.len();
    let start = Instant::now();
    let key = match &opts.cache {
        Some(dir) => Some(CacheKey::new(kind, path, &set, opts, dir)?),
        None => None,
    };
    if let Some(key) = &key
        && let image_cache::Lookup::Hit(train, test) = image_cache::load(key)?
    {
        let note = format!(
            "read {n} decoded images from cache {} in {:.2} s",
            key.file.display(),
            start.elapsed().as_secs_f64()
        );
        return Ok((build(&set, dims, train, test)?, note));
    }
    let train_px = decode_all(&set.train.files, &opts.decode)?;
    let test_px = decode_all(&set.test.files, &opts.decode)?;
    let decoded = start.elapsed().as_secs_f64();
    let cache_note = match &key {
        Some(key) => {
            let why = image_cache::miss_reason(key);
            let t = Instant::now();
            image_cache::store(key, &set, &train_px, &test_px)?;
            format!(
                "{why}; wrote {} in {:.2} s",
                key.file.display(),
                t.elapsed().as_secs_f64()
            )
        }
        None => "no cache configured".into(),
    };
    let note = format!(
        "decoded {n} images to {}x{}x{} in {decoded:.2} s (cache: {cache_note})",
        dims[0], dims[1], dims[2]
    );
    Ok((build(&set, dims, train_px, test_px)?, note))
}

fn build(
    set: &FolderSet,
    dims: [usize; 3],
    train_px: Vec<u8>,
    test_px: Vec<u8>,
) -> Result<TrainTest, DataError> {
    let k = set.classes.len();
    Ok(TrainTest {
        train: Dataset::new(
            train_px,
            set.train.labels.clone(),
            dims,
            k,
            vec![set.train_root.clone()],
        )?,
        test: Dataset::new(
            test_px,
            set.test.labels.clone(),
            dims,
            k,
            vec![set.test_root.clone()],
        )?,
    })
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn utf8_name(path: &Path) -> Result<String, DataError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| DataError::Layout {
            path: path.to_path_buf(),
            message: "folder name is not valid UTF-8; class names must be".into(),
        })
}

/// The image files directly in `dir`, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if is_image_name(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The non-hidden sub-folders of `dir` as (name, path), sorted by name.
fn sub_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_dir() {
            let name = utf8_name(&path)?;
            if !name.starts_with('.') {
                out.push((name, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Applies `exclude` (or `default` when the user gave none) to the class folder names; a name
/// the user gave that is not there is an error, since it is most likely a typo.
fn drop_excluded(
    folders: Vec<(String, PathBuf)>,
    exclude: &Option<Vec<String>>,
    default: &[&str],
    root: &Path,
) -> Result<Vec<(String, PathBuf)>, DataError> {
    let names: BTreeSet<String> = match exclude {
        Some(user) => {
            for name in user {
                if !folders.iter().any(|(n, _)| n == name) {
                    return Err(DataError::config(
                        "exclude_classes",
                        format!("no class folder `{name}` in {}", root.display()),
                    ));
                }
            }
            user.iter().cloned().collect()
        }
        None => default.iter().map(|s| s.to_string()).collect(),
    };
    let kept: Vec<_> = folders
        .into_iter()
        .filter(|(n, _)| !names.contains(n))
        .collect();
    if kept.is_empty() {
        return Err(DataError::Layout {
            path: root.to_path_buf(),
            message: "no class folders (one sub-folder of images per class is expected)".into(),
        });
    }
    check_class_count(kept.len(), root)?;
    Ok(kept)
}

fn check_class_count(n: usize, root: &Path) -> Result<(), DataError> {
    if n > usize::from(u16::MAX) + 1 {
        return Err(DataError::Layout {
            path: root.to_path_buf(),
            message: format!("{n} classes; at most 65536 are supported"),
        });
    }
    Ok(())
}

/// Lists the images of each class folder with label = the folder's index in `classes`. An
/// empty class folder is an error naming it (the class could never be learned or tested).
fn list_classes(classes: &[(String, PathBuf)]) -> Result<Listing, DataError> {
    let mut listing = Listing::default();
    for (label, (_, dir)) in classes.iter().enumerate() {
        let files = image_files(dir)?;
        if files.is_empty() {
            return Err(DataError::Layout {
                path: dir.clone(),
                message: "class folder holds no .jpg, .jpeg or .png file".into(),
            });
        }
        listing
            .labels
            .extend(std::iter::repeat_n(label as u16, files.len()));
        listing.files.extend(files);
    }
    Ok(listing)
}

/// Splits `all` into (train, test) by a stratified draw of `test_fraction` per class, seeded
/// by `split_seed` (mixed with a constant so it differs from the validation split's draw).
fn split_test(
    all: &Listing,
    num_classes: usize,
    opts: &FolderOptions,
    root: &Path,
) -> Result<(Listing, Listing), DataError> {
    let n = all.files.len();
    let n_test = validation_count(n, opts.test_fraction);
    if n_test == 0 || n_test == n {
        return Err(DataError::config(
            "test_fraction",
            format!(
                "{} of the {n} images in {} leaves {n_test} for test and {} for training; both \
                 parts need at least one",
                opts.test_fraction,
                root.display(),
                n - n_test
            ),
        ));
    }
    let (train_idx, test_idx) = validation_split(
        &all.labels,
        num_classes,
        opts.test_fraction,
        test_split_seed(opts.split_seed),
        true,
    )?;
    Ok((all.subset(&train_idx), all.subset(&test_idx)))
}

/// The seed of the train/test split drawn from `split_seed`.
pub fn test_split_seed(split_seed: u64) -> u64 {
    split_seed ^ 0x7465_7374_5f73_706c // "test_spl"
}

fn list_caltech101(path: &Path, opts: &FolderOptions) -> Result<FolderSet, DataError> {
    let inner = path.join(CALTECH101_DIR);
    let root = if inner.is_dir() {
        inner
    } else {
        path.to_path_buf()
    };
    let folders = drop_excluded(
        sub_folders(&root)?,
        &opts.exclude,
        &[CALTECH101_BACKGROUND],
        &root,
    )?;
    let all = list_classes(&folders)?;
    let (train, test) = split_test(&all, folders.len(), opts, &root)?;
    Ok(FolderSet {
        classes: folders.into_iter().map(|(n, _)| n).collect(),
        train,
        test,
        train_root: root.clone(),
        test_root: root,
        split: true,
    })
}

fn list_image_folder(path: &Path, opts: &FolderOptions) -> Result<FolderSet, DataError> {
    let train_dir = path.join("train");
    if !train_dir.is_dir() {
        let folders = drop_excluded(sub_folders(path)?, &opts.exclude, &[], path)?;
        let all = list_classes(&folders)?;
        let (train, test) = split_test(&all, folders.len(), opts, path)?;
        return Ok(FolderSet {
            classes: folders.into_iter().map(|(n, _)| n).collect(),
            train,
            test,
            train_root: path.to_path_buf(),
            test_root: path.to_path_buf(),
            split: true,
        });
    }
    let folders = drop_excluded(sub_folders(&train_dir)?, &opts.exclude, &[], &train_dir)?;
    let train = list_classes(&folders)?;
    let classes: Vec<String> = folders.into_iter().map(|(n, _)| n).collect();
    let Some(test_dir) = ["test", "val"]
        .iter()
        .map(|n| path.join(n))
        .find(|p| p.is_dir())
    else {
        let (train, test) = split_test(&train, classes.len(), opts, &train_dir)?;
        return Ok(FolderSet {
            classes,
            train,
            test,
            train_root: train_dir.clone(),
            test_root: train_dir,
            split: true,
        });
    };
    // Test classes take the training numbering; a test class unknown to training is an error
    // (the network has no output for it), a class without test images is fine.
    let mut test_folders = Vec::new();
    for (name, dir) in sub_folders(&test_dir)? {
        if opts.exclude.as_ref().is_some_and(|e| e.contains(&name)) {
            continue;
        }
        let label = classes
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| DataError::Layout {
                path: dir.clone(),
                message: format!(
                    "test class `{name}` has no folder in {}",
                    train_dir.display()
                ),
            })?;
        test_folders.push((label, dir));
    }
    let mut test = Listing::default();
    for (label, dir) in test_folders {
        let files = image_files(&dir)?;
        test.labels
            .extend(std::iter::repeat_n(label as u16, files.len()));
        test.files.extend(files);
    }
    if test.files.is_empty() {
        return Err(DataError::Layout {
            path: test_dir,
            message: "test folder holds no images in class sub-folders".into(),
        });
    }
    Ok(FolderSet {
        classes,
        train,
        test,
        train_root: train_dir,
        test_root: test_dir,
        split: false,
    })
}

/// Tiny ImageNet: `wnids.txt` (the classes, numbered in sorted order as `ImageFolder` on
/// `train/` would), `train/<wnid>/images/*`, and `val/images/*` labelled by
/// `val/val_annotations.txt` (file, wnid, box), used as the test set.
fn list_tiny_imagenet(path: &Path, opts: &FolderOptions) -> Result<FolderSet, DataError> {
    let inner = path.join(TINY_IMAGENET_DIR);
    let root = if inner.is_dir() {
        inner
    } else {
        path.to_path_buf()
    };
    let wnids_path = root.join("wnids.txt");
    let annotations = root.join("val").join("val_annotations.txt");
    for (file, what) in [
        (&wnids_path, "Tiny ImageNet class list"),
        (&annotations, "Tiny ImageNet validation labels"),
    ] {
        if !file.is_file() {
            return Err(DataError::MissingFile {
                what,
                dir: file.parent().unwrap_or(&root).to_path_buf(),
                looked_for: vec![utf8_name(file)?],
            });
        }
    }
    let text = |p: &Path| {
        String::from_utf8(read_bytes(p)?).map_err(|_| DataError::Layout {
            path: p.to_path_buf(),
            message: "not UTF-8 text".into(),
        })
    };
    let mut wnids: Vec<String> = text(&wnids_path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    wnids.sort();
    if let Some(w) = wnids.windows(2).find(|w| w[0] == w[1]) {
        return Err(DataError::Layout {
            path: wnids_path,
            message: format!("class `{}` is listed twice", w[0]),
        });
    }
    let train_dir = root.join("train");
    let folders: Vec<(String, PathBuf)> = wnids
        .iter()
        .map(|w| (w.clone(), train_dir.join(w)))
        .collect();
    let folders = drop_excluded(folders, &opts.exclude, &[], &wnids_path)?;
    for (_, dir) in &folders {
        check_dir(dir)?;
    }
    let with_images: Vec<(String, PathBuf)> = folders
        .iter()
        .map(|(n, d)| (n.clone(), d.join("images")))
        .collect();
    let train = list_classes(&with_images)?;
    let classes: Vec<String> = folders.into_iter().map(|(n, _)| n).collect();
    let excluded = |w: &str| {
        opts.exclude
            .as_ref()
            .is_some_and(|e| e.iter().any(|x| x == w))
    };
    let val_images = root.join("val").join("images");
    let mut test = Listing::default();
    for (i, line) in text(&annotations)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
            return Err(DataError::Layout {
                path: annotations,
                message: format!(
                    "line {}: expected `file<TAB>wnid<TAB>box`, got `{line}`",
                    i + 1
                ),
            });
        };
        if excluded(wnid) {
            continue;
        }
        let label = classes
            .binary_search_by(|c| c.as_str().cmp(wnid))
            .map_err(|_| DataError::Layout {
                path: annotations.clone(),
                message: format!("line {}: class `{wnid}` is not in wnids.txt", i + 1),
            })?;
        test.files.push(val_images.join(file));
        test.labels.push(label as u16);
    }
    if test.files.is_empty() {
        return Err(DataError::Layout {
            path: annotations,
            message: "lists no validation images".into(),
        });
    }
    Ok(FolderSet {
        classes,
        train,
        test,
        train_root: train_dir,
        test_root: val_images,
        split: false,
    })
}
