//! A kernel file (procfs, sysfs) kept open and re-read from offset 0.
//!
//! Why: opening /proc/self/stat costs three syscalls and most of the time of a reading (17 µs
//! against 6 µs for a positional re-read on the development VM); a window reads every meter
//! twice, so reusing the descriptor keeps metering overhead well under 1% of a 10 ms step.
//! procfs and sysfs regenerate the content on every read at offset 0 and return all of it in
//! one read when the buffer is large enough, so a short read is the whole file.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Largest content read (a sysfs attribute is at most one page).
const BUF: usize = 4096;

/// An open file re-read from the start on every [`RereadFile::read_string`].
#[derive(Debug)]
pub struct RereadFile {
    path: PathBuf,
    file: File,
}

impl RereadFile {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> io::Result<RereadFile> {
        Ok(RereadFile {
            path: path.to_path_buf(),
            file: File::open(path)?,
        })
    }

    /// The path opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's current content (at most 4096 bytes), as UTF-8.
    pub fn read_string(&self) -> io::Result<String> {
        let mut buf = [0u8; BUF];
        let n = read_at_start(&self.file, &self.path, &mut buf)?;
        std::str::from_utf8(&buf[..n])
            .map(str::to_string)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(unix)]
fn read_at_start(file: &File, _path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    file.read_at(buf, 0)
}

#[cfg(not(unix))]
fn read_at_start(_file: &File, path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    let data = std::fs::read(path)?;
    let n = data.len().min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_rewrites_of_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("energy_uj");
        std::fs::write(&p, "123\n").unwrap();
        let f = RereadFile::open(&p).unwrap();
        assert_eq!(f.read_string().unwrap(), "123\n");
        std::fs::write(&p, "45\n").unwrap();
        assert_eq!(f.read_string().unwrap(), "45\n");
    }
}
