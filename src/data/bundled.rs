//! The default dataset, embedded in the binary so `kind = "bundled"` works with no download:
//! a class-balanced subset of Fashion-MNIST (MIT licence, Copyright 2017 Zalando SE; see
//! `src/data/bundled/NOTICE`). `examples/make_bundled.rs` regenerates it.

use std::path::{Path, PathBuf};

use super::idx::{dataset_from_bytes, gunzip_if_needed};
use super::{DataError, TrainTest};

/// Images per class in the bundled training set: the first this many of each class in the
/// Fashion-MNIST training file.
pub const TRAIN_PER_CLASS: usize = 400;
/// Images per class in the bundled test set: the first this many of each class in the
/// Fashion-MNIST test file.
pub const TEST_PER_CLASS: usize = 100;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;

/// Fashion-MNIST class names, by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// File names under `src/data/bundled/`.
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

const TRAIN_IMAGES: &[u8] = include_bytes!("bundled/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("bundled/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("bundled/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("bundled/t10k-labels-idx1-ubyte.gz");

/// Name used for an embedded file in messages and `Dataset::sources`.
fn name(file: &str) -> PathBuf {
    Path::new("<bundled>").join(file)
}

fn split(
    images: &[u8],
    images_name: &str,
    labels: &[u8],
    labels_name: &str,
) -> Result<super::Dataset, DataError> {
    let (ip, lp) = (name(images_name), name(labels_name));
    let images = gunzip_if_needed(images.to_vec(), &ip)?;
    let labels = gunzip_if_needed(labels.to_vec(), &lp)?;
    dataset_from_bytes(&images, &ip, &labels, &lp, NUM_CLASSES)
}

/// Decodes the embedded training and test sets.
pub fn read() -> Result<TrainTest, DataError> {
    Ok(TrainTest {
        train: split(TRAIN_IMAGES, FILES[0], TRAIN_LABELS, FILES[1])?,
        test: split(TEST_IMAGES, FILES[2], TEST_LABELS, FILES[3])?,
    })
}
