//! CIFAR-10 and CIFAR-100 "binary version" files.
//!
//! CIFAR-10 record: 1 label byte + 3072 pixel bytes (R, G, B planes, each 32x32 row-major),
//! which is already CHW. CIFAR-100 record: coarse label, fine label, then the same 3072 bytes;
//! we train on the fine labels (100 classes).

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, TrainTest, check_dir, find_file, read_bytes};

/// Shape of a CIFAR image (C, H, W).
pub const DIMS: [usize; 3] = [3, 32, 32];
/// Pixel bytes per CIFAR image.
pub const PIXELS: usize = 3 * 32 * 32;
/// Bytes per CIFAR-10 record.
pub const CIFAR10_RECORD: usize = 1 + PIXELS;
/// Bytes per CIFAR-100 record.
pub const CIFAR100_RECORD: usize = 2 + PIXELS;

/// Folder name inside the official CIFAR-10 binary archive.
pub const CIFAR10_DIR: &str = "cifar-10-batches-bin";
/// Folder name inside the official CIFAR-100 binary archive.
pub const CIFAR100_DIR: &str = "cifar-100-binary";

const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// Pixels and labels of one CIFAR file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Records {
    pub pixels: Vec<u8>,
    pub labels: Vec<u16>,
}

/// Splits `bytes` into records, checking sizes and label ranges. `label_bytes` is 1 for
/// CIFAR-10 and 2 for CIFAR-100 (whose second label byte is the one kept); each label byte `k`
/// must be below `limits[k]`.
fn parse(
    bytes: &[u8],
    path: &Path,
    format: &'static str,
    label_names: &[&'static str],
    limits: &[u16],
    out: &mut Records,
) -> Result<(), DataError> {
    let label_bytes = label_names.len();
    let record = label_bytes + PIXELS;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::PartialRecord {
            path: path.to_path_buf(),
            format,
            record_size: record,
            file_size: bytes.len(),
        });
    }
    let n = bytes.len() / record;
    out.pixels.reserve(n * PIXELS);
    out.labels.reserve(n);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        for (k, (&limit, &which)) in limits.iter().zip(label_names).enumerate() {
            let value = u16::from(rec[k]);
            if value >= limit {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    record: i,
                    which,
                    value,
                    max: limit - 1,
                });
            }
        }
        out.labels.push(u16::from(rec[label_bytes - 1]));
        out.pixels.extend_from_slice(&rec[label_bytes..]);
    }
    Ok(())
}

/// Parses CIFAR-10 bytes (whole records of 3,073 bytes), appending to `out`.
pub fn parse_cifar10(bytes: &[u8], path: &Path, out: &mut Records) -> Result<(), DataError> {
    parse(bytes, path, "CIFAR-10", &["class"], &[10], out)
}

/// Parses CIFAR-100 bytes (whole records of 3,074 bytes), keeping the fine labels.
pub fn parse_cifar100(bytes: &[u8], path: &Path, out: &mut Records) -> Result<(), DataError> {
    parse(
        bytes,
        path,
        "CIFAR-100",
        &["coarse", "fine"],
        &[20, 100],
        out,
    )
}

/// The user may point at the archive's folder or at the folder containing it.
pub fn resolve_dir(path: &Path, archive_dir: &str) -> Result<PathBuf, DataError> {
    check_dir(path)?;
    let inner = path.join(archive_dir);
    Ok(if inner.is_dir() {
        inner
    } else {
        path.to_path_buf()
    })
}

fn dataset(
    records: Records,
    num_classes: usize,
    sources: Vec<PathBuf>,
) -> Result<Dataset, DataError> {
    Dataset::new(records.pixels, records.labels, DIMS, num_classes, sources)
}

/// Reads CIFAR-10: whichever of `data_batch_1.bin` .. `data_batch_5.bin` exist (at least one),
/// in that order, for training, and `test_batch.bin` for test. `Dataset::sources` says which
/// batches were found.
pub fn read_cifar10(path: &Path) -> Result<TrainTest, DataError> {
    let dir = resolve_dir(path, CIFAR10_DIR)?;
    let found: Vec<PathBuf> = CIFAR10_TRAIN
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    if found.is_empty() {
        return Err(DataError::MissingFile {
            what: "CIFAR-10 training batches (in the folder or its cifar-10-batches-bin subfolder)",
            dir,
            looked_for: CIFAR10_TRAIN.iter().map(|s| s.to_string()).collect(),
        });
    }
    let test_path = find_file(
        &dir,
        &["test_batch.bin"],
        "CIFAR-10 test batch (in the folder or its cifar-10-batches-bin subfolder)",
    )?;
    let mut train = Records::default();
    for p in &found {
        parse_cifar10(&read_bytes(p)?, p, &mut train)?;
    }
    let mut test = Records::default();
    parse_cifar10(&read_bytes(&test_path)?, &test_path, &mut test)?;
    Ok(TrainTest {
        train: dataset(train, 10, found)?,
        test: dataset(test, 10, vec![test_path])?,
    })
}

/// Reads CIFAR-100: `train.bin` and `test.bin`, fine labels.
pub fn read_cifar100(path: &Path) -> Result<TrainTest, DataError> {
    let dir = resolve_dir(path, CIFAR100_DIR)?;
    let train_path = find_file(
        &dir,
        &["train.bin"],
        "CIFAR-100 training file (in the folder or its cifar-100-binary subfolder)",
    )?;
    let test_path = find_file(
        &dir,
        &["test.bin"],
        "CIFAR-100 test file (in the folder or its cifar-100-binary subfolder)",
    )?;
    let mut train = Records::default();
    parse_cifar100(&read_bytes(&train_path)?, &train_path, &mut train)?;
    let mut test = Records::default();
    parse_cifar100(&read_bytes(&test_path)?, &test_path, &mut test)?;
    Ok(TrainTest {
        train: dataset(train, 100, vec![train_path])?,
        test: dataset(test, 100, vec![test_path])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar100_keeps_fine_label_and_checks_coarse() {
        let mut rec = vec![7u8, 42];
        rec.extend((0..PIXELS).map(|i| (i % 251) as u8));
        let mut out = Records::default();
        parse_cifar100(&rec, Path::new("t.bin"), &mut out).unwrap();
        assert_eq!(out.labels, vec![42]);
        assert_eq!(out.pixels, rec[2..].to_vec());

        rec[0] = 20;
        let err = parse_cifar100(&rec, Path::new("t.bin"), &mut Records::default()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::LabelOutOfRange {
                    which: "coarse",
                    value: 20,
                    max: 19,
                    ..
                }
            ),
            "{err}"
        );
    }
}
