//! Errors of the data side. Every variant names the file (or config field) it is about, because
//! a user pointing `path` at the wrong folder needs to know which file to look at.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong reading, checking or batching a dataset.
#[derive(Debug, Error)]
pub enum DataError {
    /// None of the accepted names for a required file exists.
    #[error("{what}: no file found in {dir}; looked for {}", looked_for.join(", "))]
    MissingFile {
        what: &'static str,
        dir: PathBuf,
        looked_for: Vec<String>,
    },

    /// The configured dataset folder does not exist or is not a folder.
    #[error("{path}: not a readable folder ({reason})")]
    NotADirectory { path: PathBuf, reason: String },

    /// Reading (or gunzipping) a file failed.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An IDX file starts with the wrong magic number (e.g. labels given where images belong).
    #[error("{path}: wrong IDX magic number: expected 0x{expected:08X}, found 0x{found:08X}")]
    BadMagic {
        path: PathBuf,
        expected: u32,
        found: u32,
    },

    /// A file too short to hold even its header.
    #[error("{path}: truncated header: need {needed} bytes, file has {file_size}")]
    TruncatedHeader {
        path: PathBuf,
        needed: usize,
        file_size: usize,
    },

    /// A fixed-record file (CIFAR) whose size is not a whole number of records.
    #[error(
        "{path}: file size {file_size} bytes is not a whole number of {record_size}-byte records \
         (truncated or not a {format} file)"
    )]
    PartialRecord {
        path: PathBuf,
        format: &'static str,
        record_size: usize,
        file_size: usize,
    },

    /// An IDX file whose header disagrees with its length (truncated, or trailing garbage).
    #[error(
        "{path}: IDX header promises {items} items of {item_size} bytes after a {header}-byte \
         header ({expected} bytes in all) but the (decompressed) file has {file_size} bytes"
    )]
    IdxSize {
        path: PathBuf,
        items: usize,
        item_size: usize,
        header: usize,
        expected: usize,
        file_size: usize,
    },

    /// IDX dimensions whose product overflows or is zero.
    #[error("{path}: absurd IDX dimensions {dims:?} ({reason})")]
    IdxDims {
        path: PathBuf,
        dims: Vec<u32>,
        reason: &'static str,
    },

    /// A file without a single record.
    #[error("{path}: contains no records")]
    Empty { path: PathBuf },

    /// A label larger than the dataset's number of classes allows.
    #[error("{path}: record {record} has {which} label {value}, but the maximum allowed is {max}")]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        which: &'static str,
        value: u16,
        max: u16,
    },

    /// Image and label files of one split disagree on the number of items.
    #[error(
        "{images_path} holds {images} images but {labels_path} holds {labels} labels; they must match"
    )]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },

    /// Training and test files disagree on the image shape.
    #[error(
        "{test_path}: test images are {test:?} (C, H, W) but the training images are {train:?}"
    )]
    ShapeMismatch {
        test_path: PathBuf,
        train: [usize; 3],
        test: [usize; 3],
    },

    /// In-memory parts that do not fit together (e.g. pixel buffer not N x C x H x W).
    #[error("{origin}: {message}")]
    Inconsistent { origin: PathBuf, message: String },

    /// An image file that cannot be decoded (truncated, corrupt, or not an image at all).
    #[error("{path}: cannot decode image: {message}")]
    BadImage { path: PathBuf, message: String },

    /// A folder layout problem of an image-folder dataset (empty class folder, a class of the
    /// test set missing from training, a bad annotation line).
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },

    /// The background batch thread could not be started.
    #[error("cannot start the batch prefetch thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },

    /// A bad value in `DataConfig` (or in a call that takes the same meaning).
    #[error("invalid `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
}

impl DataError {
    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Self {
        DataError::Config {
            field,
            message: message.into(),
        }
    }
}
