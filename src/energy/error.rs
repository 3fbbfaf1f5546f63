//! One error enum for the energy module: every message names the file, field or value at fault
//! and what was expected, so a user can fix the problem without reading the source.

use std::path::PathBuf;

/// Everything that can go wrong while opening meters, reading counters, loading the energy
/// config or writing records.
#[derive(Debug, thiserror::Error)]
pub enum EnergyError {
    /// NVML could not be opened or has no usable GPU (driver missing, no permission, ...).
    #[error("nvml: unavailable: {reason}")]
    NvmlUnavailable { reason: String },

    /// An NVML call failed on an opened GPU.
    #[error("nvml: {call} failed on GPU {index}: {reason}")]
    Nvml {
        call: &'static str,
        index: u32,
        reason: String,
    },

    /// No readable RAPL package domain (no powercap tree, no package zone, unreadable counter).
    #[error("rapl: unavailable: {reason}")]
    RaplUnavailable { reason: String },

    /// A file that exists could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file could be read but its content is not what the kernel documents.
    #[error("{}: cannot parse {what} from {value:?}: expected {expected}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        value: String,
        expected: &'static str,
    },

    /// A field of the energy config (or of an op-count input) has a value out of range.
    #[error("{field} = {value}: {expected}")]
    Invalid {
        field: String,
        value: String,
        expected: String,
    },

    /// A country code that is not in the built-in carbon-intensity table.
    #[error(
        "country = {code:?}: unknown country code; expected an ISO 3166 alpha-3 (or alpha-2) code \
         from the built-in table ({known}), or set intensity_g_per_kwh explicitly"
    )]
    UnknownCountry { code: String, known: String },

    /// The energy config file is not valid TOML for [`crate::energy::EnergyConfig`].
    #[error("energy config {}: {source}", path.display())]
    ConfigToml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },

    /// A forced source (config `source = ...`) cannot be used on this machine.
    #[error("energy source {source_name:?} was requested but is unavailable: {reason}")]
    ForcedSourceUnavailable { source_name: String, reason: String },

    /// Writing the emissions CSV failed.
    #[error("emissions csv {}: {source}", path.display())]
    Csv {
        path: PathBuf,
        source: Box<csv::Error>,
    },

    /// The emissions CSV exists with a header that is not ours: appending would mix columns.
    #[error(
        "emissions csv {}: existing header does not match; found {found:?}, expected {expected:?} \
         (write to a new file or remove the old one)",
        path.display()
    )]
    CsvHeader {
        path: PathBuf,
        found: String,
        expected: String,
    },

    /// The background power-sampling thread could not be started.
    #[error("cannot start the energy sampling thread: {0}")]
    Thread(std::io::Error),

    /// A window was stopped on a tracker other than the one that started it.
    #[error("window {phase:?} was started by another EnergyTracker; stop it on the same tracker")]
    ForeignWindow { phase: String },

    /// Other I/O on an output (probe report, CSV file creation).
    #[error("cannot write {what}: {source}")]
    Write {
        what: String,
        source: std::io::Error,
    },
}
