//! The decode cache of image-folder datasets: the decoded `u8` pixels and labels of one dataset
//! in one file, so a second run skips decoding.
//!
//! One file per (layout, size, resize rule, dataset folder), named after them, so a changed
//! dataset replaces its old file instead of piling up copies. Inside, a hash of the source
//! listing (every file's path, size, modification time and label, the class names, and the
//! test split's seed and fraction) says whether the file is still current; a stale or damaged
//! file is rebuilt. Files are written to a temporary name and renamed into place, so a run
//! killed while writing never leaves a half-written cache behind.
//!
//! Layout (little-endian): magic `DSNNIMG1`, listing hash u64, classes u32, height u32,
//! width u32, train count u64, test count u64, train labels u16 x n, test labels u16 x n,
//! train pixels, test pixels (each N x 3 x H x W).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::image_folder::{FolderOptions, FolderSet, test_split_seed};
use super::{DataError, DatasetKind};

const MAGIC: &[u8; 8] = b"DSNNIMG1";
const HEADER: usize = 8 + 8 + 4 + 4 + 4 + 8 + 8;

/// Where a dataset's cache lives and what it must contain to be current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// The cache file.
    pub file: PathBuf,
    /// Hash of the source listing.
    pub listing: u64,
    pub classes: u32,
    pub height: u32,
    pub width: u32,
    pub n_train: u64,
    pub n_test: u64,
}

/// What `load` found.
#[derive(Debug)]
pub enum Lookup {
    /// Current cache: train and test pixels.
    Hit(Vec<u8>, Vec<u8>),
    /// No usable cache (absent, stale or damaged): decode and `store`.
    Miss,
}

/// FNV-1a, 64 bit: stable across runs and platforms, unlike `std`'s hasher.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    fn field(&mut self, bytes: &[u8]) {
        self.eat(&(bytes.len() as u64).to_le_bytes());
        self.eat(bytes);
    }
}

impl CacheKey {
    /// Stats every listed file (size and modification time) and hashes the listing. `path` is
    /// the dataset folder the user configured; it names the cache file.
    pub fn new(
        kind: DatasetKind,
        path: &Path,
        set: &FolderSet,
        opts: &FolderOptions,
        dir: &Path,
    ) -> Result<Self, DataError> {
        let d = &opts.decode;
        let root = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut name_hash = Fnv::new();
        name_hash.field(root.as_os_str().as_encoded_bytes());
        let file = dir.join(format!(
            "{}-{}x{}-{}-{:016x}.u8cache",
            kind.name(),
            d.height,
            d.width,
            d.resize.name(),
            name_hash.0
        ));
        let mut h = Fnv::new();
        h.field(MAGIC);
        h.field(kind.name().as_bytes());
        h.field(&d.height.to_le_bytes());
        h.field(&d.width.to_le_bytes());
        h.field(d.resize.name().as_bytes());
        if set.split {
            h.field(&opts.test_fraction.to_bits().to_le_bytes());
            h.field(&test_split_seed(opts.split_seed).to_le_bytes());
        }
        for c in &set.classes {
            h.field(c.as_bytes());
        }
        for part in [&set.train, &set.test] {
            h.field(&(part.files.len() as u64).to_le_bytes());
            for (f, &label) in part.files.iter().zip(&part.labels) {
                let meta = std::fs::metadata(f).map_err(|source| DataError::Io {
                    path: f.clone(),
                    source,
                })?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |t| t.as_nanos());
                h.field(f.as_os_str().as_encoded_bytes());
                h.field(&meta.len().to_le_bytes());
                h.field(&mtime.to_le_bytes());
                h.field(&label.to_le_bytes());
            }
        }
        Ok(CacheKey {
            file,
            listing: h.0,
            classes: set.classes.len() as u32,
            height: d.height,
            width: d.width,
            n_train: set.train.files.len() as u64,
            n_test: set.test.files.len() as u64,
        })
    }

    fn header(&self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        let mut at = 0;
        let mut put = |b: &[u8]| {
            out[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        put(MAGIC);
        put(&self.listing.to_le_bytes());
        put(&self.classes.to_le_bytes());
        put(&self.height.to_le_bytes());
        put(&self.width.to_le_bytes());
        put(&self.n_train.to_le_bytes());
        put(&self.n_test.to_le_bytes());
        out
    }

    fn image_len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    fn expected_len(&self) -> u64 {
        let n = self.n_train + self.n_test;
        HEADER as u64 + 2 * n + n * self.image_len() as u64
    }
}

/// Why there is no usable cache for `key` (for the log line).
pub fn miss_reason(key: &CacheKey) -> &'static str {
    match std::fs::File::open(&key.file) {
        Err(_) => "none yet",
        Ok(mut f) => {
            let mut head = [0u8; HEADER];
            match f.read_exact(&mut head) {
                Ok(()) if head[..8] == MAGIC[..] && head[8..16] != key.header()[8..16] => {
                    "stale: the dataset's files changed, rebuilt"
                }
                _ => "damaged or another format, rebuilt",
            }
        }
    }
}

/// Reads the cache for `key` if it exists and is current; anything else is a `Miss`. Only a
/// file that exists but cannot be read is an error. The pixels are read straight into their
/// two buffers, so a 1.3 GB cache needs 1.3 GB, not twice that.
pub fn load(key: &CacheKey) -> Result<Lookup, DataError> {
    let io = |source| DataError::Io {
        path: key.file.clone(),
        source,
    };
    let mut file = match std::fs::File::open(&key.file) {
        Ok(f) => f,
        Err(_) => return Ok(Lookup::Miss),
    };
    if file.metadata().map_err(io)?.len() != key.expected_len() {
        return Ok(Lookup::Miss);
    }
    let mut head = [0u8; HEADER];
    file.read_exact(&mut head).map_err(io)?;
    if head != key.header() {
        return Ok(Lookup::Miss);
    }
    // Labels are part of the listing hash, so a matching header means they match too; the
    // pixels are what the cache is for.
    let labels = 2 * (key.n_train + key.n_test) as usize;
    file.read_exact(&mut vec![0u8; labels]).map_err(io)?;
    let mut train = vec![0u8; key.n_train as usize * key.image_len()];
    file.read_exact(&mut train).map_err(io)?;
    let mut test = vec![0u8; key.n_test as usize * key.image_len()];
    file.read_exact(&mut test).map_err(io)?;
    Ok(Lookup::Hit(train, test))
}

/// Writes the cache for `key` atomically (temporary file in the same folder, then rename).
pub fn store(
    key: &CacheKey,
    set: &FolderSet,
    train_px: &[u8],
    test_px: &[u8],
) -> Result<(), DataError> {
    let dir = key.file.parent().unwrap_or(Path::new("."));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = key
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(&key.header())?;
        for part in [&set.train, &set.test] {
            for &l in &part.labels {
                w.write_all(&l.to_le_bytes())?;
            }
        }
        w.write_all(train_px)?;
        w.write_all(test_px)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &key.file)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        DataError::Io {
            path: key.file.clone(),
            source,
        }
    })
}
