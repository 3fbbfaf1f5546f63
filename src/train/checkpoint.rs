//! Saving a trial after `b` epochs and continuing it later: the model, the optimizer state, the
//! epoch and the configuration it belongs to. The RNG needs no saving: every epoch reseeds from
//! (seed, epoch).
//!
//! Files are written to a temporary name and renamed, so a killed run never leaves a
//! half-written checkpoint that a later continuation would trust.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::model::Network;

const MODEL: &str = "model.bpk";
const OPTIM: &str = "optimizer.bpk";
const STATE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(
        "checkpoint {path} belongs to another configuration: it was saved for {saved}, this trial is {current}"
    )]
    Mismatch {
        path: PathBuf,
        saved: String,
        current: String,
    },
}

fn io(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    epoch: usize,
    config: TrainConfig,
}

/// The configuration's identity for continuation: everything but the schedule horizon must
/// match, and that too.
fn same_trial(a: &TrainConfig, b: &TrainConfig) -> bool {
    a == b
}

pub fn save(
    dir: &Path,
    cfg: &TrainConfig,
    model: &Network,
    optim: &ModuleOptimizer,
    epoch: usize,
) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = |name: &str| dir.join(format!(".{name}.tmp"));
    model
        .valid()
        .into_record()
        .save(tmp(MODEL))
        .map_err(|e| io(&dir.join(MODEL), format!("{e:?}")))?;
    optim
        .to_record()
        .save(tmp(OPTIM))
        .map_err(|e| io(&dir.join(OPTIM), format!("{e:?}")))?;
    let state = State {
        epoch,
        config: cfg.clone(),
    };
    let text = serde_json::to_string_pretty(&state).map_err(|e| io(&dir.join(STATE), e))?;
    fs::write(tmp(STATE), text).map_err(|e| io(&dir.join(STATE), e))?;
    // The state file goes last: its presence marks a complete checkpoint.
    for name in [MODEL, OPTIM, STATE] {
        fs::rename(tmp(name), dir.join(name)).map_err(|e| io(&dir.join(name), e))?;
    }
    Ok(())
}

/// Loads a checkpoint's model into a freshly built `model` of the same configuration; returns
/// it with the epoch it was saved at.
pub fn load_model(
    dir: &Path,
    cfg: &TrainConfig,
    model: Network,
) -> Result<(Network, usize), CheckpointError> {
    let state_path = dir.join(STATE);
    let text = fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| io(&state_path, e))?;
    if !same_trial(&state.config, cfg) {
        return Err(CheckpointError::Mismatch {
            path: dir.to_path_buf(),
            saved: serde_json::to_string(&state.config).unwrap_or_default(),
            current: serde_json::to_string(cfg).unwrap_or_default(),
        });
    }
    let record =
        ModuleRecord::load(dir.join(MODEL)).map_err(|e| io(&dir.join(MODEL), format!("{e:?}")))?;
    let model = model
        .try_load_record(record)
        .map_err(|e| io(&dir.join(MODEL), format!("{e:?}")))?
        .train();
    Ok((model, state.epoch))
}

/// Loads the optimizer state into `optim`, which must have been built for the model
/// `load_model` returned (parameter groups match by parameter id).
pub fn load_optimizer(
    dir: &Path,
    optim: ModuleOptimizer,
) -> Result<ModuleOptimizer, CheckpointError> {
    let record = OptimizerRecord::load(dir.join(OPTIM))
        .map_err(|e| io(&dir.join(OPTIM), format!("{e:?}")))?;
    Ok(optim.load_record(record))
}
