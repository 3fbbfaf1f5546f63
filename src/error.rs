//! The application's error type: every failure a user can cause, with a message that names the
//! file, field or value and what was expected.

use std::path::PathBuf;

use crate::arch::ArchError;
use crate::config::ConfigFileError;
use crate::data::DataError;
use crate::energy::EnergyError;
use crate::shift::SettingsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Energy(#[from] EnergyError),
    #[cfg(feature = "dsnn")]
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[cfg(feature = "dsnn")]
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[cfg(feature = "dsnn")]
    #[error(transparent)]
    TrainConfig(#[from] crate::train::config::ConfigError),
    #[error(transparent)]
    Bench(#[from] crate::commands::bench::BenchError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[cfg(feature = "dsnn")]
    #[error(transparent)]
    Trial(#[from] crate::eval::dsnn::TrialError),
    /// `path` names the thing: a run directory, a configuration file, a study.
    #[error("{path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error("{flag} {value}: {expected}")]
    Flag {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}
