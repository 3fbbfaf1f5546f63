//! The application's error type: every failure a user can cause, with a message that names the
//! file, field or value and what was expected.

use crate::arch::ArchError;
use crate::shift::SettingsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{flag} {value}: {expected}")]
    Flag {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}
