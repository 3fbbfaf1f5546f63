//! Dataset side of dsnn-hpo: reading CIFAR-10/100 and (Fashion-)MNIST files, the bundled default
//! set, the validation split, per-channel normalization, augmentation and batching into plain
//! `f32` buffers that the trainer turns into tensors.
//!
//! Everything is decoded once into memory as `u8` (N x C x H x W, channel-major like PyTorch's
//! CHW); batches are produced from that without per-sample allocation.
//!
//! Typical use:
//! ```no_run
//! use dsnn_hpo::data::{DataConfig, EpochBatches, epoch_seed};
//! # fn main() -> Result<(), dsnn_hpo::data::DataError> {
//! let data = DataConfig::default().load()?; // bundled Fashion-MNIST subset
//! for epoch in 0..3 {
//!     let mut batches = EpochBatches::new(&data.train, 128, epoch_seed(42, epoch), data.augment,
//!                                         &data.normalization)?.prefetch()?;
//!     while let Some(batch) = batches.next() {
//!         // batch.images: batch.len * C * H * W floats, batch.labels: batch.len class ids
//!         batches.recycle(batch);
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod augment;
pub mod batch;
pub mod bundled;
pub mod cifar;
mod error;
pub mod idx;
pub mod image_cache;
pub mod image_decode;
pub mod image_folder;
pub mod normalize;
pub mod split;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use batch::{Batch, EpochBatches, Prefetch, epoch_seed};
pub use error::DataError;
pub use image_decode::{ImageSize, ResizeMode};
pub use normalize::Normalization;
pub use split::{Split, validation_split};

/// Which dataset format (and class count) to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// CIFAR-10 binary version: `data_batch_{1..5}.bin` (any non-empty subset) + `test_batch.bin`.
    Cifar10,
    /// CIFAR-100 binary version: `train.bin` + `test.bin`, fine labels (100 classes).
    Cifar100,
    /// MNIST IDX files, plain or gzipped.
    Mnist,
    /// Fashion-MNIST IDX files (same names and format as MNIST).
    FashionMnist,
    /// Fashion-MNIST subset embedded in the binary; needs no path.
    Bundled,
    /// Caltech101's `101_ObjectCategories/<class>/*.jpg`, split 80/20 into train and test.
    Caltech101,
    /// Tiny ImageNet: `train/<wnid>/images/*`, `val/` as the test set, `wnids.txt`.
    TinyImagenet,
    /// One folder of JPEG/PNG images per class (torchvision's `ImageFolder`), optionally under
    /// `train/` and `test/` (or `val/`).
    ImageFolder,
}

impl DatasetKind {
    /// All kinds, in the order they are listed to users.
    pub const ALL: [DatasetKind; 8] = [
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Bundled,
        DatasetKind::Caltech101,
        DatasetKind::TinyImagenet,
        DatasetKind::ImageFolder,
    ];

    /// The name used in config files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Bundled => "bundled",
            DatasetKind::Caltech101 => "caltech101",
            DatasetKind::TinyImagenet => "tiny-imagenet",
            DatasetKind::ImageFolder => "image-folder",
        }
    }

    /// Number of classes the labels must lie in, for the fixed-format kinds; image-folder kinds
    /// take theirs from the class folders found (`None`).
    pub fn num_classes(self) -> Option<usize> {
        match self {
            DatasetKind::Cifar100 => Some(100),
            k if k.is_image_folder() => None,
            _ => Some(10),
        }
    }

    /// True for the kinds read from folders of JPEG/PNG files.
    pub fn is_image_folder(self) -> bool {
        matches!(
            self,
            DatasetKind::Caltech101 | DatasetKind::TinyImagenet | DatasetKind::ImageFolder
        )
    }

    /// The size images are resized to when `image_size` is not given: Tiny ImageNet's own
    /// 64x64, and 224x224 (the paper's Caltech101 size) for the others.
    pub fn default_image_size(self) -> Option<ImageSize> {
        match self {
            DatasetKind::TinyImagenet => Some(ImageSize::Square(64)),
            k if k.is_image_folder() => Some(ImageSize::Square(224)),
            _ => None,
        }
    }

    /// Crop+flip augmentation suits the 3-channel 32x32 CIFAR images; on 28x28 grey digits and
    /// clothes it mostly hurts (flipped digits are other digits), so it is off there by default.
    /// Image-folder kinds default to off too, as the paper's Caltech101 runs train.
    pub fn default_augment(self) -> bool {
        matches!(self, DatasetKind::Cifar10 | DatasetKind::Cifar100)
    }

    /// Reads the training and test files of this kind from `path` (ignored for `Bundled`).
    /// Image-folder kinds use the `[data]` defaults here (default size, no cache); use
    /// `DataConfig::load` for the other settings.
    pub fn read(self, path: Option<&Path>) -> Result<TrainTest, DataError> {
        let need_path = || {
            path.ok_or_else(|| {
                DataError::config(
                    "path",
                    format!("kind `{}` needs the folder holding its files", self.name()),
                )
            })
        };
        match self {
            DatasetKind::Cifar10 => cifar::read_cifar10(need_path()?),
            DatasetKind::Cifar100 => cifar::read_cifar100(need_path()?),
            DatasetKind::Mnist | DatasetKind::FashionMnist => idx::read_dir(need_path()?, 10),
            DatasetKind::Bundled => bundled::read(),
            DatasetKind::Caltech101 | DatasetKind::TinyImagenet | DatasetKind::ImageFolder => {
                let cfg = DataConfig {
                    kind: self,
                    path: path.map(Path::to_path_buf),
                    ..DataConfig::default()
                };
                Ok(image_folder::read(self, need_path()?, &cfg.folder_options()?)?.0)
            }
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
                DataError::config(
                    "kind",
                    format!(
                        "unknown dataset kind `{s}`; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Images decoded into memory: `images` is N x C x H x W bytes (channel-major per image),
/// `labels` has N class ids below `num_classes`.
#[derive(Debug, Clone)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u16>,
    dims: [usize; 3],
    num_classes: usize,
    sources: Vec<PathBuf>,
}

impl Dataset {
    /// Builds a dataset from raw parts, checking that they fit together. `sources` names the
    /// files the data came from (used in messages; may be empty for synthetic data).
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u16>,
        dims: [usize; 3],
        num_classes: usize,
        sources: Vec<PathBuf>,
    ) -> Result<Self, DataError> {
        let origin = origin_of(&sources);
        let bad = |message: String| DataError::Inconsistent {
            origin: origin.clone(),
            message,
        };
        let image_len = dims[0]
            .checked_mul(dims[1])
            .and_then(|x| x.checked_mul(dims[2]))
            .filter(|&x| x > 0)
            .ok_or_else(|| {
                bad(format!(
                    "image dimensions {dims:?} (C, H, W) are zero or overflow"
                ))
            })?;
        if num_classes == 0 || num_classes > usize::from(u16::MAX) + 1 {
            return Err(bad(format!(
                "num_classes {num_classes} must be in 1..=65536"
            )));
        }
        if labels.len() > u32::MAX as usize {
            return Err(bad(format!(
                "{} records; at most {} are supported",
                labels.len(),
                u32::MAX
            )));
        }
        if Some(images.len()) != labels.len().checked_mul(image_len) {
            return Err(bad(format!(
                "{} pixel bytes do not hold {} images of {dims:?} (C, H, W)",
                images.len(),
                labels.len()
            )));
        }
        if let Some((record, &value)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= num_classes)
        {
            return Err(DataError::LabelOutOfRange {
                path: origin,
                record,
                which: "class",
                value,
                max: (num_classes - 1) as u16,
            });
        }
        Ok(Dataset {
            images,
            labels,
            dims,
            num_classes,
            sources,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// (channels, height, width) of every image.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Number of channels (1 for grey, 3 for RGB).
    pub fn channels(&self) -> usize {
        self.dims[0]
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.dims[1]
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.dims[2]
    }

    /// Bytes per image: C * H * W.
    pub fn image_len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// Number of classes; every label is below it.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All pixels, N x C x H x W.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// Pixels of image `i` (C x H x W). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Label of image `i`. Panics if `i >= len()`.
    pub fn label(&self, i: usize) -> u16 {
        self.labels[i]
    }

    /// Files the data was read from, so runs can record what they trained on.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Number of images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// Keeps only the first `n` images (no-op if there are fewer).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
            self.images.shrink_to_fit();
            self.labels.shrink_to_fit();
        }
    }
}

/// The training file(s) and the test file(s) of a dataset, as read.
#[derive(Debug, Clone)]
pub struct TrainTest {
    pub train: Dataset,
    pub test: Dataset,
}

impl TrainTest {
    /// Checks that training and test images have the same shape and class count.
    fn check_consistent(&self) -> Result<(), DataError> {
        if self.train.dims() != self.test.dims() {
            return Err(DataError::ShapeMismatch {
                test_path: origin_of(self.test.sources()),
                train: self.train.dims(),
                test: self.test.dims(),
            });
        }
        Ok(())
    }
}

fn default_validation_fraction() -> f64 {
    0.1
}

fn default_true() -> bool {
    true
}

/// The `[data]` section of a run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset format: `cifar10`, `cifar100`, `mnist`, `fashion-mnist`, `bundled`,
    /// `caltech101`, `tiny-imagenet` or `image-folder`.
    pub kind: DatasetKind,
    /// Folder with the standard file names (for CIFAR also its parent). Not used for `bundled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Share of the training file held out for validation, strictly between 0 and 1.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Seed of the validation split (independent of the training seed, so that every trial of
    /// an optimization run sees the same split).
    #[serde(default)]
    pub split_seed: u64,
    /// Keep class proportions equal in train and validation parts.
    #[serde(default = "default_true")]
    pub stratify: bool,
    /// Random crop + horizontal flip on training batches; default depends on `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
    /// Use only the first `limit_train` records of the training file(s), before the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_train: Option<usize>,
    /// Image-folder kinds: the size every image is resized to, `224` or `[height, width]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<ImageSize>,
    /// Image-folder kinds: `stretch` (default, aspect not kept) or `center-crop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizeMode>,
    /// Image-folder kinds: folder for the decoded images, so later runs skip decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// Image-folder kinds without a test folder: share held out as the test set (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    /// Image-folder kinds: class folders to leave out (Caltech101 default: BACKGROUND_Google).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_classes: Option<Vec<String>>,
}

/// The test share of image-folder kinds without a test folder: the paper's 80/20 split.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            kind: DatasetKind::Bundled,
            path: None,
            validation_fraction: default_validation_fraction(),
            split_seed: 0,
            stratify: true,
            augment: None,
            limit_train: None,
            image_size: None,
            resize: None,
            cache: None,
            test_fraction: None,
            exclude_classes: None,
        }
    }
}

impl DataConfig {
    /// Checks values that need no file access; errors name the field.
    pub fn validate(&self) -> Result<(), DataError> {
        let f = self.validation_fraction;
        if !(f > 0.0 && f < 1.0) {
            return Err(DataError::config(
                "validation_fraction",
                format!("must be strictly between 0 and 1, got {f}"),
            ));
        }
        match (self.kind, &self.path) {
            (DatasetKind::Bundled, Some(p)) => {
                return Err(DataError::config(
                    "path",
                    format!(
                        "kind `bundled` is embedded in the binary and takes no path (got {})",
                        p.display()
                    ),
                ));
            }
            (kind, None) if kind != DatasetKind::Bundled => {
                return Err(DataError::config(
                    "path",
                    format!("kind `{kind}` needs the folder holding its files"),
                ));
            }
            _ => {}
        }
        if self.limit_train == Some(0) {
            return Err(DataError::config(
                "limit_train",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if !self.kind.is_image_folder() {
            let set = [
                ("image_size", self.image_size.is_some()),
                ("resize", self.resize.is_some()),
                ("cache", self.cache.is_some()),
                ("test_fraction", self.test_fraction.is_some()),
                ("exclude_classes", self.exclude_classes.is_some()),
            ];
            if let Some((field, _)) = set.into_iter().find(|&(_, given)| given) {
                return Err(DataError::config(
                    field,
                    format!(
                        "only applies to the image-folder kinds (caltech101, tiny-imagenet, \
                         image-folder), not to `{}`",
                        self.kind
                    ),
                ));
            }
            return Ok(());
        }
        self.folder_options().map(|_| ())
    }

    /// The image-folder settings with defaults filled in, checked.
    fn folder_options(&self) -> Result<image_folder::FolderOptions, DataError> {
        let size = self
            .image_size
            .or(self.kind.default_image_size())
            .unwrap_or(ImageSize::Square(224));
        size.check()?;
        let test_fraction = self.test_fraction.unwrap_or(DEFAULT_TEST_FRACTION);
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(DataError::config(
                "test_fraction",
                format!("must be strictly between 0 and 1, got {test_fraction}"),
            ));
        }
        let (height, width) = size.height_width();
        Ok(image_folder::FolderOptions {
            decode: image_decode::DecodeOptions {
                height,
                width,
                resize: self.resize.unwrap_or_default(),
            },
            test_fraction,
            split_seed: self.split_seed,
            exclude: self.exclude_classes.clone(),
            cache: self.cache.clone(),
            limit_train: self.limit_train,
        })
    }

    /// Reads the training and test parts; for image-folder kinds also a line on decoding.
    fn read(&self) -> Result<(TrainTest, Option<String>), DataError> {
        match (self.kind.is_image_folder(), self.path.as_deref()) {
            (true, Some(path)) => {
                let (tt, note) = image_folder::read(self.kind, path, &self.folder_options()?)?;
                Ok((tt, Some(note)))
            }
            _ => Ok((self.kind.read(self.path.as_deref())?, None)),
        }
    }

    /// Reads the files, splits off validation and computes the normalization on the train part.
    pub fn load(&self) -> Result<LoadedData, DataError> {
        self.validate()?;
        let (TrainTest { mut train, test }, load_note) = {
            let (tt, note) = self.read()?;
            tt.check_consistent()?;
            (tt, note)
        };
        if let Some(limit) = self.limit_train {
            train.truncate(limit);
        }
        let (train_idx, valid_idx) = validation_split(
            train.labels(),
            train.num_classes(),
            self.validation_fraction,
            self.split_seed,
            self.stratify,
        )?;
        let train = Arc::new(train);
        let train_split = Split::new(Arc::clone(&train), train_idx)?;
        let valid_split = Split::new(train, valid_idx)?;
        let test_split = Split::all(Arc::new(test));
        let normalization = Normalization::from_split(&train_split);
        Ok(LoadedData {
            kind: self.kind,
            train: train_split,
            valid: valid_split,
            test: test_split,
            normalization,
            augment: self.augment.unwrap_or_else(|| self.kind.default_augment()),
            load_note,
        })
    }
}

/// What `DataConfig::load` returns: the three splits, the training-part normalization and the
/// resolved augmentation flag.
#[derive(Debug, Clone)]
pub struct LoadedData {
    pub kind: DatasetKind,
    /// Training part of the training file(s), after removing validation.
    pub train: Split,
    /// Validation part of the training file(s); disjoint from `train`.
    pub valid: Split,
    /// The separate test file(s); for the final report only.
    pub test: Split,
    /// Per-channel mean/std of `train`; apply to all three splits.
    pub normalization: Normalization,
    /// Whether training batches should be augmented.
    pub augment: bool,
    /// How reading went, for the log: image-folder kinds say how long decoding or the decode
    /// cache took (`None` for the other kinds).
    pub load_note: Option<String>,
}

impl LoadedData {
    /// (channels, height, width) of every image.
    pub fn dims(&self) -> [usize; 3] {
        self.train.dataset().dims()
    }

    /// Number of classes (output width of the network).
    pub fn num_classes(&self) -> usize {
        self.train.dataset().num_classes()
    }

    /// Identifies the data a study trains on, for workers on other machines: kind, shape, split
    /// sizes and a hash (FNV-1a) of the first 256 records of the training and test files in
    /// their order. Two copies of the same files agree; a different subset or file does not.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for d in [self.train.dataset(), self.test.dataset()] {
            for i in 0..d.len().min(256) {
                eat(d.image(i));
                eat(&d.label(i).to_le_bytes());
            }
        }
        let [c, hh, w] = self.dims();
        format!(
            "{} {c}x{hh}x{w}, {} classes, {} train / {} valid / {} test, records hash {h:016x}",
            self.kind,
            self.num_classes(),
            self.train.len(),
            self.valid.len(),
            self.test.len()
        )
    }

    /// One line for logs: kind, sizes, shape and the files read.
    pub fn describe(&self) -> String {
        let [c, h, w] = self.dims();
        let files: Vec<String> = self
            .train
            .dataset()
            .sources()
            .iter()
            .chain(self.test.dataset().sources())
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "{}: {} train / {} valid / {} test images of {c}x{h}x{w}, {} classes, augment {}; files: {}",
            self.kind,
            self.train.len(),
            self.valid.len(),
            self.test.len(),
            self.num_classes(),
            if self.augment { "on" } else { "off" },
            files.join(", ")
        )
    }
}

/// The file to name in messages about a dataset built from `sources`.
pub(crate) fn origin_of(sources: &[PathBuf]) -> PathBuf {
    sources
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("<in-memory dataset>"))
}

/// Returns the first of `names` that exists as a file in `dir`, or a `MissingFile` error listing
/// all of them.
pub(crate) fn find_file(
    dir: &Path,
    names: &[&str],
    what: &'static str,
) -> Result<PathBuf, DataError> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::MissingFile {
            what,
            dir: dir.to_path_buf(),
            looked_for: names.iter().map(|s| s.to_string()).collect(),
        })
}

/// Checks that the user's `path` is a folder, so a typo is reported as such rather than as a
/// list of missing files.
pub(crate) fn check_dir(path: &Path) -> Result<(), DataError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DataError::NotADirectory {
            path: path.to_path_buf(),
            reason: "it is a file; give the folder that holds the dataset files".into(),
        }),
        Err(e) => Err(DataError::NotADirectory {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}
