//! A running trial's progress on disk: how far it got, so that another attempt of it (after a
//! crash, a kill or a preemption) continues there instead of starting over.
//!
//! The trainer (or a user's command, through `$DSNN_HPO_PROGRESS`) publishes *generations*:
//! folders named by a number (the epochs done) inside the trial's progress folder, each written
//! complete under a temporary name and then renamed into place, and never changed afterwards.
//! So the executor can pack the newest generation at any time (it uploads it with the lease's
//! heartbeat, [`crate::store::Store::save_progress`]) without a lock and without seeing a
//! half-written state. Publishing keeps the previous generation too, so one being packed is not
//! deleted under the packer's feet.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The progress folder of trial `id` inside a process's checkpoint folder.
pub fn dir(checkpoints: &Path, id: u64) -> PathBuf {
    checkpoints.join(format!("{id}.progress"))
}

/// The newest complete generation in `dir`: its number and path.
pub fn newest(dir: &Path) -> Option<(u64, PathBuf)> {
    generations(dir).into_iter().max_by_key(|(n, _)| *n)
}

fn generations(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

/// Publishes generation `n` in `dir`: `fill` writes it into a temporary folder, which is then
/// renamed into place; generations older than the previous one are deleted.
pub fn publish(dir: &Path, n: u64, fill: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = dir.join(format!("{n}.tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    let done = dir.join(n.to_string());
    let _ = fs::remove_dir_all(&done);
    fs::rename(&tmp, &done)?;
    let mut older: Vec<u64> = generations(dir)
        .into_iter()
        .map(|(g, _)| g)
        .filter(|g| *g < n)
        .collect();
    older.sort_unstable();
    older.pop();
    for g in older {
        let _ = fs::remove_dir_all(dir.join(g.to_string()));
    }
    Ok(())
}

/// The newest generation of `dir` as a tar archive (its folder inside it), for the store.
pub fn pack_newest(dir: &Path) -> io::Result<Option<(u64, Vec<u8>)>> {
    let Some((n, path)) = newest(dir) else {
        return Ok(None);
    };
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(n.to_string(), &path)?;
    Ok(Some((n, b.into_inner()?)))
}

/// Puts a generation from the store into `dir`, unless `dir` already holds one as new (this
/// machine ran the trial before and got further than it uploaded). Returns its number.
pub fn unpack(bytes: &[u8], dir: &Path) -> io::Result<Option<u64>> {
    let tmp = dir.with_extension(format!("unpack{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let result = (|| {
        tar::Archive::new(bytes).unpack(&tmp)?;
        let Some((n, path)) = newest(&tmp) else {
            return Ok(None);
        };
        if newest(dir).is_some_and(|(local, _)| local >= n) {
            return Ok(Some(n));
        }
        fs::create_dir_all(dir)?;
        let _ = fs::remove_dir_all(dir.join(n.to_string()));
        fs::rename(&path, dir.join(n.to_string()))?;
        Ok(Some(n))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, n: u64) {
        publish(dir, n, |tmp| fs::write(tmp.join("state"), n.to_string())).unwrap();
    }

    #[test]
    fn publishing_keeps_the_newest_two_generations() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path(), 7);
        assert!(newest(&d).is_none());
        for n in [1, 2, 3, 4] {
            write(&d, n);
        }
        let mut left: Vec<u64> = generations(&d).into_iter().map(|(n, _)| n).collect();
        left.sort_unstable();
        assert_eq!(left, [3, 4]);
        assert_eq!(newest(&d).unwrap().0, 4);
        // A failed fill publishes nothing.
        let r = publish(&d, 5, |_| Err(io::Error::other("disk full")));
        assert!(r.is_err());
        assert_eq!(newest(&d).unwrap().0, 4);
    }

    #[test]
    fn a_packed_generation_unpacks_elsewhere_unless_a_newer_one_is_there() {
        let root = tempfile::tempdir().unwrap();
        let here = dir(root.path(), 1);
        write(&here, 2);
        let (n, bytes) = pack_newest(&here).unwrap().unwrap();
        assert_eq!(n, 2);
        let there = root.path().join("other").join("1.progress");
        assert_eq!(unpack(&bytes, &there).unwrap(), Some(2));
        assert_eq!(
            fs::read_to_string(there.join("2").join("state")).unwrap(),
            "2"
        );
        // A newer local generation is kept.
        write(&there, 3);
        assert_eq!(unpack(&bytes, &there).unwrap(), Some(2));
        assert_eq!(newest(&there).unwrap().0, 3);
        assert!(pack_newest(&root.path().join("none")).unwrap().is_none());
    }
}
