//! The run directory's trial log, `trials.jsonl`: one JSON line per finished trial, appended,
//! flushed and synced before the optimizer is told, so a killed run loses no finished trial.
//! `run.json` holds what the log means: the objectives, the search space's default
//! configuration and the resolved run configuration.
//!
//! Guarantees: a line that `append` returned for is on disk; a torn last line (a kill in the
//! middle of a write) is ignored on reading and cut off before the next append.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::record::{RunInfo, TrialLine};

pub const TRIALS: &str = "trials.jsonl";
pub const RUN: &str = "run.json";
/// The order of asks among tells, so a resume replays concurrent trials (`--workers`) exactly.
pub const ASKS: &str = "asks.jsonl";

fn io(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub fn write_run_info(dir: &Path, info: &RunInfo) -> Result<(), StoreError> {
    let text = serde_json::to_string_pretty(info).map_err(|e| io(&dir.join(RUN), e))?;
    write_atomic(&dir.join(RUN), text.as_bytes())
}

pub fn read_run_info(dir: &Path) -> Result<RunInfo, StoreError> {
    let path = dir.join(RUN);
    let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| io(&path, format!("not a dsnn-hpo run file: {e}")))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`:
/// readers see the old or the new file, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Rewrites `dir/trials.jsonl` with `lines`, atomically (an export of a study store).
pub fn write_trials(dir: &Path, lines: &[TrialLine]) -> Result<(), StoreError> {
    let path = dir.join(TRIALS);
    let mut text = String::new();
    for l in lines {
        text.push_str(&serde_json::to_string(l).map_err(|e| io(&path, e))?);
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes())
}

/// One `ask()` of the optimizer: trial `id` was asked after `told` outcomes had been told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskLine {
    pub id: u64,
    pub told: usize,
}

/// Reads every complete line of `dir/trials.jsonl`. A last line without its newline is a write
/// that a kill interrupted: it is skipped. Any other unreadable line is an error.
pub fn read_trials(dir: &Path) -> Result<Vec<TrialLine>, StoreError> {
    read_jsonl(&dir.join(TRIALS))
}

/// Reads `dir/asks.jsonl` as [`read_trials`] reads the trial log.
pub fn read_asks(dir: &Path) -> Result<Vec<AskLine>, StoreError> {
    read_jsonl(&dir.join(ASKS))
}

fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    let mut out = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| io(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        if !line.ends_with('\n') {
            break; // torn final write
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let t: T = serde_json::from_str(trimmed).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            line: n,
            message: e.to_string(),
        })?;
        out.push(t);
    }
    Ok(out)
}

/// The append end of a JSON-lines log.
pub struct JsonlLog {
    path: PathBuf,
    file: File,
}

/// The append end of `trials.jsonl`.
pub type TrialLog = JsonlLog;

impl JsonlLog {
    /// Opens (or creates) `dir/trials.jsonl` for appending, first cutting off a torn last line.
    pub fn open(dir: &Path) -> Result<JsonlLog, StoreError> {
        JsonlLog::open_path(dir.join(TRIALS))
    }

    /// Opens (or creates) `dir/asks.jsonl` likewise.
    pub fn open_asks(dir: &Path) -> Result<JsonlLog, StoreError> {
        JsonlLog::open_path(dir.join(ASKS))
    }

    fn open_path(path: PathBuf) -> Result<JsonlLog, StoreError> {
        if let Ok(bytes) = fs::read(&path)
            && !bytes.is_empty()
            && bytes.last() != Some(&b'\n')
        {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            f.set_len(keep as u64).map_err(|e| io(&path, e))?;
            f.sync_all().map_err(|e| io(&path, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(JsonlLog { path, file })
    }

    /// Appends one line; durable when this returns.
    pub fn append<T: Serialize>(&mut self, t: &T) -> Result<(), StoreError> {
        let mut text = serde_json::to_string(t).map_err(|e| io(&self.path, e))?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| io(&self.path, e))?;
        self.file.sync_data().map_err(|e| io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Config;
    use crate::store::record::{Metrics, TrialStatus};

    fn line(id: u64) -> TrialLine {
        let mut config = Config::new();
        config.insert("lr", 0.1);
        TrialLine {
            id,
            config,
            budget: 3.0,
            continued_from: None,
            status: TrialStatus::Success,
            violated: Vec::new(),
            per_layer: None,
            reason: None,
            objectives: vec![0.2, 1e-6],
            metrics: None,
            energy: Vec::new(),
            wall_s: 1.0,
            finished_unix_s: 0.0,
            baseline: false,
        }
    }

    #[test]
    fn appended_lines_read_back_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TrialLog::open(dir.path()).unwrap();
        log.append(&line(0)).unwrap();
        log.append(&line(1)).unwrap();
        drop(log);
        // A kill in the middle of the third write.
        let path = dir.path().join(TRIALS);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":2,\"conf").unwrap();
        drop(f);
        let got = read_trials(dir.path()).unwrap();
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [0, 1]);
        let mut log = TrialLog::open(dir.path()).unwrap();
        log.append(&line(2)).unwrap();
        let got = read_trials(dir.path()).unwrap();
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(got[2], line(2));
    }

    #[test]
    fn diverged_metrics_round_trip_as_nan() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = line(0);
        t.status = TrialStatus::Failed;
        t.metrics = Some(Metrics {
            valid_accuracy: 0.0,
            valid_loss: f64::NAN,
            train_loss: f64::INFINITY,
            epochs_trained: 1,
            images_per_s: 10.0,
            ..Metrics::default()
        });
        TrialLog::open(dir.path()).unwrap().append(&t).unwrap();
        let back = read_trials(dir.path()).unwrap();
        let m = back[0].metrics.as_ref().unwrap();
        assert!(m.valid_loss.is_nan() && m.train_loss.is_nan());
    }

    #[test]
    fn a_corrupt_middle_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TRIALS), "{}\n").unwrap();
        let e = read_trials(dir.path()).unwrap_err().to_string();
        assert!(e.contains("trials.jsonl line 1"), "{e}");
    }
}
