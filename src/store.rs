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

use crate::energy::EnergyRecord;
use crate::space::Config;

pub const TRIALS: &str = "trials.jsonl";
pub const RUN: &str = "run.json";
/// The order of asks among tells, so a resume replays concurrent trials (`--workers`) exactly.
pub const ASKS: &str = "asks.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

fn io(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    Success,
    /// Trained and measured, but a `[[constraints]]` bound is violated (`violated` says which):
    /// never on the front.
    Infeasible,
    /// Crashed, diverged (NaN) or failed otherwise; `reason` says why.
    Failed,
}

/// One finished trial, as written to `trials.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialLine {
    pub id: u64,
    pub config: Config,
    /// Epochs the trial reached.
    pub budget: f64,
    /// The trial whose saved state this one continued from.
    pub continued_from: Option<u64>,
    pub status: TrialStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Objective values in the order of `RunInfo::objectives`; empty when failed.
    pub objectives: Vec<f64>,
    /// The constraints an infeasible trial violates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violated: Vec<String>,
    /// Per-layer inference energy, when `[energy] per_layer` asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_layer: Option<Vec<crate::energy::layers::LayerRow>>,
    /// Validation metrics of the trained network, when training finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Energy records of the trial's phases (training, inference), each with its sources.
    #[serde(default)]
    pub energy: Vec<EnergyRecord>,
    /// Seconds from start to finish of the trial.
    pub wall_s: f64,
    /// Unix time the trial finished.
    pub finished_unix_s: f64,
    /// The default configuration at the largest budget, trained after the search as the
    /// baseline the report compares against; not part of the optimizer's history.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline: bool,
}

impl TrialLine {
    /// Trained and measured (successful or infeasible): its objectives are real.
    pub fn measured(&self) -> bool {
        self.status != TrialStatus::Failed
    }

    /// A successful trial without metrics or energy records: for tools and tests that write
    /// logs of their own.
    pub fn success(id: u64, config: Config, budget: f64, objectives: Vec<f64>) -> TrialLine {
        TrialLine {
            id,
            config,
            budget,
            continued_from: None,
            status: TrialStatus::Success,
            reason: None,
            objectives,
            violated: Vec::new(),
            per_layer: None,
            metrics: None,
            energy: Vec::new(),
            wall_s: 1.0,
            finished_unix_s: 0.0,
            baseline: false,
        }
    }
}

/// JSON has no NaN: a diverged trial's losses are written as null and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub valid_accuracy: f64,
    #[serde(with = "nan_as_null")]
    pub valid_loss: f64,
    #[serde(with = "nan_as_null")]
    pub train_loss: f64,
    pub epochs_trained: usize,
    pub images_per_s: f64,
    /// Measured inference energy per image, joules: the mean repeated validation pass over its
    /// images (source in the trial's `inference` record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_j_per_image: Option<f64>,
    /// Op-count model energy per image, joules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcount_j_per_image: Option<f64>,
    /// Parameters (batch norm included) and weight memory in bits of the design.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_memory_bits: Option<u64>,
}

/// What the columns of the log mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Objective names, e.g. ["loss", "energy_kwh"]; all minimised.
    pub objectives: Vec<String>,
    /// Where each objective comes from, e.g. "1 - validation accuracy",
    /// "inference energy per validation pass, measured (rapl/estimate per record)".
    pub objective_sources: Vec<String>,
    /// The search space's default configuration: the baseline the report compares against.
    pub default_config: Config,
    /// Hash of the settings that must not change on resume.
    pub meta_hash: String,
    /// The default configuration's values that relative `[[constraints]]` bounds scale (a
    /// measured one is measured once, before the first trial, and kept for a resume).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub constraint_reference: crate::constraint::Values,
    /// The resolved run configuration, as TOML text.
    pub config_toml: String,
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
