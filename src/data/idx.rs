//! MNIST-style IDX files (MNIST, Fashion-MNIST), plain or gzipped.
//!
//! Images: big-endian magic 0x00000803, then N, rows, cols as u32, then N*rows*cols bytes.
//! Labels: magic 0x00000801, then N, then N bytes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use super::{DataError, Dataset, TrainTest, check_dir, find_file, read_bytes};

/// Magic number of an unsigned-byte, 3-dimensional IDX file (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte, 1-dimensional IDX file (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const IMAGES_HEADER: usize = 16;
const LABELS_HEADER: usize = 8;

/// Decoded IDX images: `pixels` is count x rows x cols bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads a file and gunzips it when it starts with the gzip magic, whatever its name.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_bytes(path)?;
    gunzip_if_needed(raw, path)
}

/// Gunzips `raw` if it is gzip data; `path` only names it in errors.
pub fn gunzip_if_needed(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(2));
        MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_header(bytes: &[u8], path: &Path, needed: usize, magic: u32) -> Result<(), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::TruncatedHeader {
            path: path.to_path_buf(),
            needed,
            file_size: bytes.len(),
        });
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: magic,
            found,
        });
    }
    if bytes.len() < needed {
        return Err(DataError::TruncatedHeader {
            path: path.to_path_buf(),
            needed,
            file_size: bytes.len(),
        });
    }
    Ok(())
}

/// Parses decompressed IDX image bytes; `path` only names the file in errors.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages, DataError> {
    check_header(bytes, path, IMAGES_HEADER, IMAGES_MAGIC)?;
    let dims = [be_u32(bytes, 4), be_u32(bytes, 8), be_u32(bytes, 12)];
    let absurd = |reason| DataError::IdxDims {
        path: path.to_path_buf(),
        dims: dims.to_vec(),
        reason,
    };
    let [count, rows, cols] = dims.map(|d| d as usize);
    if rows == 0 || cols == 0 {
        return Err(absurd("image rows and columns must be non-zero"));
    }
    let item_size = rows
        .checked_mul(cols)
        .ok_or_else(|| absurd("rows x cols overflows"))?;
    let expected = count
        .checked_mul(item_size)
        .and_then(|b| b.checked_add(IMAGES_HEADER))
        .ok_or_else(|| absurd("count x rows x cols overflows"))?;
    if expected != bytes.len() {
        return Err(DataError::IdxSize {
            path: path.to_path_buf(),
            items: count,
            item_size,
            header: IMAGES_HEADER,
            expected,
            file_size: bytes.len(),
        });
    }
    if count == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[IMAGES_HEADER..].to_vec(),
    })
}

/// Parses decompressed IDX label bytes and checks every label is below `num_classes`.
pub fn parse_labels(bytes: &[u8], path: &Path, num_classes: usize) -> Result<Vec<u16>, DataError> {
    check_header(bytes, path, LABELS_HEADER, LABELS_MAGIC)?;
    let count = be_u32(bytes, 4) as usize;
    let expected = count
        .checked_add(LABELS_HEADER)
        .ok_or_else(|| DataError::IdxDims {
            path: path.to_path_buf(),
            dims: vec![count as u32],
            reason: "count overflows",
        })?;
    if expected != bytes.len() {
        return Err(DataError::IdxSize {
            path: path.to_path_buf(),
            items: count,
            item_size: 1,
            header: LABELS_HEADER,
            expected,
            file_size: bytes.len(),
        });
    }
    if count == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let labels = &bytes[LABELS_HEADER..];
    if let Some((record, &value)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= num_classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            record,
            which: "class",
            value: u16::from(value),
            max: num_classes.saturating_sub(1) as u16,
        });
    }
    Ok(labels.iter().map(|&l| u16::from(l)).collect())
}

/// Builds a 1-channel dataset from already decompressed image and label bytes.
pub fn dataset_from_bytes(
    images: &[u8],
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
    num_classes: usize,
) -> Result<Dataset, DataError> {
    let img = parse_images(images, images_path)?;
    let lab = parse_labels(labels, labels_path, num_classes)?;
    if img.count != lab.len() {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            images: img.count,
            labels_path: labels_path.to_path_buf(),
            labels: lab.len(),
        });
    }
    Dataset::new(
        img.pixels,
        lab,
        [1, img.rows, img.cols],
        num_classes,
        vec![images_path.to_path_buf(), labels_path.to_path_buf()],
    )
}

/// Accepted file names for one IDX file: the standard name, gzipped, and the dotted variant
/// some mirrors use (`train-images.idx3-ubyte`).
fn names(prefix: &str, what: &str, dims: &str) -> [String; 4] {
    [
        format!("{prefix}-{what}-{dims}-ubyte"),
        format!("{prefix}-{what}-{dims}-ubyte.gz"),
        format!("{prefix}-{what}.{dims}-ubyte"),
        format!("{prefix}-{what}.{dims}-ubyte.gz"),
    ]
}

fn find(
    dir: &Path,
    prefix: &str,
    what: &str,
    dims: &str,
    label: &'static str,
) -> Result<PathBuf, DataError> {
    let names = names(prefix, what, dims);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    find_file(dir, &refs, label)
}

/// Reads one split (`train` or `t10k`) from `dir`.
pub fn read_split(dir: &Path, prefix: &str, num_classes: usize) -> Result<Dataset, DataError> {
    let (img_what, lab_what) = if prefix == "train" {
        ("training images", "training labels")
    } else {
        ("test images", "test labels")
    };
    let images_path = find(dir, prefix, "images", "idx3", img_what)?;
    let labels_path = find(dir, prefix, "labels", "idx1", lab_what)?;
    let images = read_maybe_gz(&images_path)?;
    let labels = read_maybe_gz(&labels_path)?;
    dataset_from_bytes(&images, &images_path, &labels, &labels_path, num_classes)
}

/// Reads `train-*` and `t10k-*` IDX files from `dir`.
pub fn read_dir(dir: &Path, num_classes: usize) -> Result<TrainTest, DataError> {
    check_dir(dir)?;
    Ok(TrainTest {
        train: read_split(dir, "train", num_classes)?,
        test: read_split(dir, "t10k", num_classes)?,
    })
}

/// Encodes images (count x rows x cols bytes) as an IDX image file.
pub fn encode_images(rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let count = pixels.len().checked_div(rows * cols).unwrap_or(0);
    let mut out = Vec::with_capacity(IMAGES_HEADER + pixels.len());
    for v in [IMAGES_MAGIC, count as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels as an IDX label file.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LABELS_HEADER + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzips bytes at the best compression with a zero timestamp, so output is reproducible.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(bytes)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PathBuf {
        PathBuf::from("x.idx")
    }

    #[test]
    fn images_round_trip() {
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let bytes = encode_images(3, 4, &pixels);
        assert_eq!(&bytes[..4], &[0, 0, 8, 3]);
        let img = parse_images(&bytes, &p()).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (2, 3, 4));
        assert_eq!(img.pixels, pixels);
    }

    #[test]
    fn gzip_is_detected_by_content() {
        let bytes = encode_labels(&[1, 2, 3]);
        let gz = gzip(&bytes).unwrap();
        assert_eq!(gunzip_if_needed(gz, &p()).unwrap(), bytes);
        assert_eq!(gunzip_if_needed(bytes.clone(), &p()).unwrap(), bytes);
    }

    #[test]
    fn absurd_dims_do_not_panic() {
        let mut bytes = Vec::new();
        for v in [IMAGES_MAGIC, u32::MAX, u32::MAX, u32::MAX] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let err = parse_images(&bytes, &p()).unwrap_err();
        assert!(
            matches!(err, DataError::IdxDims { .. } | DataError::IdxSize { .. }),
            "{err}"
        );
        // Zero rows: no division by zero, a clear error.
        let mut bytes = Vec::new();
        for v in [IMAGES_MAGIC, 5, 0, 28] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        assert!(matches!(
            parse_images(&bytes, &p()).unwrap_err(),
            DataError::IdxDims { .. }
        ));
    }

    #[test]
    fn short_header_is_reported() {
        let err = parse_images(&[0, 0, 8, 3, 0, 0], &p()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TruncatedHeader {
                    needed: 16,
                    file_size: 6,
                    ..
                }
            ),
            "{err}"
        );
        let err = parse_labels(&[0, 0], &p(), 10).unwrap_err();
        assert!(matches!(err, DataError::TruncatedHeader { .. }), "{err}");
    }
}
