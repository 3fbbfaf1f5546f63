//! Energy and emissions metering.
//!
//! Why this shape: the optimizer needs one energy number per phase (train, inference, ...) for
//! every trial, whatever the machine offers. Each hardware source implements [`Meter`], a
//! cumulative energy counter for one component (CPU, GPU or RAM); an [`EnergyTracker`] holds the
//! meters chosen for this machine and turns two readings into an [`EnergyRecord`] (joules, kWh,
//! emissions) for a named window. Windows are independent snapshots, so they nest freely.
//!
//! Sources: [`nvml`] (GPU energy counter / sampled power), [`rapl`] (CPU package counters in
//! sysfs), [`estimate`] (CPU time x per-core power and resident memory x W/GB when no counter can
//! be read). [`opcount`] is a hardware-free calculator from per-layer operation counts whose
//! results use the same record with source `opcount`.
//!
//! Measuring a phase:
//! ```no_run
//! use dsnn_hpo::energy::{EnergyConfig, EnergyTracker};
//! # fn main() -> Result<(), dsnn_hpo::energy::EnergyError> {
//! let tracker = EnergyTracker::from_config(&EnergyConfig::default())?;
//! for note in tracker.notes() {
//!     eprintln!("energy: {note}");
//! }
//! let window = tracker.start("train")?;
//! // ... work ...
//! let record = tracker.stop(window)?;
//! println!("{} J, {} kg CO2-eq", record.energy_j, record.emissions_kg);
//! # Ok(())
//! # }
//! ```
//!
//! Op-count energy of an inference pass, appended to a CodeCarbon-style CSV:
//! ```
//! use dsnn_hpo::energy::opcount::{LayerCount, pass_energy};
//! use dsnn_hpo::energy::{CsvSink, EnergyConfig, RunInfo};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = EnergyConfig::default();
//! let layers = [LayerCount {
//!     name: "fc".into(), shift: true, weight_bits: 5, macs: 1000, float_adds: 0, params: 1000,
//!     bias_adds: 0, input_elems: 0, output_elems: 0,
//! }];
//! let e = pass_energy(&layers, 64, &cfg.opcount)?;
//! // 1000 shift-adds x 0.2 pJ + 1000 x 5/32 x 640 pJ of weights = 100 200 pJ per image
//! assert!((e.per_image_j - 100_200e-12).abs() < 1e-18);
//! let record = e.to_record("inference", &cfg.carbon()?);
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("emissions.csv");
//! let mut csv = CsvSink::open(&path, RunInfo::default())?;
//! csv.append(&record)?;
//! # Ok(())
//! # }
//! ```

pub mod carbon;
pub mod config;
pub mod emissions_csv;
pub mod error;
pub mod estimate;
pub mod host;
pub mod layers;
pub mod nvml;
pub mod opcount;
pub mod probe;
pub mod rapl;
pub mod record;
pub mod repeat;
pub mod reread;
pub mod tracker;

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use carbon::Carbon;
pub use config::EnergyConfig;
pub use emissions_csv::{CsvSink, RunInfo};
pub use error::EnergyError;
pub use opcount::{LayerCount, OpCountEnergy, OpEnergies};
pub use probe::{EnergyArgs, ProbeReport, probe, run_probe};
pub use record::{ComponentEnergy, EnergyRecord};
pub use repeat::{RepeatSettings, RepeatStats};
pub use tracker::{EnergyTracker, Window};

/// Joules in one kilowatt-hour.
pub const J_PER_KWH: f64 = 3.6e6;

/// Which source the user asks for (config `source = "auto" | "nvml" | "rapl" | "estimate"`).
///
/// - `auto`: GPU from NVML when it opens, CPU from RAPL when readable else estimated, RAM estimated.
/// - `nvml`: as `auto`, but NVML must open (error otherwise).
/// - `rapl`: as `auto`, but RAPL must be readable (error otherwise).
/// - `estimate`: CPU and RAM estimated, no hardware counter touched, GPU not measured
///   (reproducible numbers on any machine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    #[default]
    Auto,
    Nvml,
    Rapl,
    Estimate,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Auto => "auto",
            Source::Nvml => "nvml",
            Source::Rapl => "rapl",
            Source::Estimate => "estimate",
        })
    }
}

/// Where a component's number in a record came from; `none` when it was not measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Nvml,
    Rapl,
    Estimate,
    Opcount,
    #[default]
    None,
}

impl SourceKind {
    /// The lowercase label written to JSON and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Nvml => "nvml",
            SourceKind::Rapl => "rapl",
            SourceKind::Estimate => "estimate",
            SourceKind::Opcount => "opcount",
            SourceKind::None => "none",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hardware part a meter covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Cpu,
    Gpu,
    Ram,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Cpu => "cpu",
            Component::Gpu => "gpu",
            Component::Ram => "ram",
        })
    }
}

/// One snapshot of a meter's cumulative counters.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// When the reading was taken.
    pub at: Instant,
    /// Joules from the meter's primary counter since the meter was opened (monotonic).
    pub counter_j: f64,
    /// Joules from integrating sampled power since the meter was opened, for meters that sample
    /// (NVML); used where the primary counter is too coarse for a short window.
    pub integrated_j: Option<f64>,
}

/// A cumulative energy counter for one component.
///
/// Why cumulative: a window is then just two readings, so any number of windows can overlap or
/// nest without the meter knowing about them. Meters keep their own state behind a lock (wrap
/// handling, power integration), hence `&self` and `Send + Sync`.
pub trait Meter: Send + Sync {
    /// The component this meter measures.
    fn component(&self) -> Component;

    /// The label written into records.
    fn source(&self) -> SourceKind;

    /// Hardware names covered (CPU model, GPU names), for the record.
    fn hardware(&self) -> Vec<String>;

    /// Current cumulative reading.
    fn read(&self) -> Result<Reading, EnergyError>;

    /// How often the tracker must call [`Meter::poll`] while a window is open to stay exact
    /// (RAPL wrap-around, power integration); `None` when the meter never needs polling.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// Background update (called from the tracker's sampling thread). Default: a plain read.
    fn poll(&self) -> Result<(), EnergyError> {
        self.read().map(|_| ())
    }

    /// Joules between two readings of this meter. Default: the primary counter's delta.
    fn energy_between(&self, start: &Reading, end: &Reading) -> f64 {
        (end.counter_j - start.counter_j).max(0.0)
    }
}
