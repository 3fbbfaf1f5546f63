//! Appends records to a CSV with CodeCarbon's `emissions.csv` columns, so CodeCarbon's tools
//! (and anyone used to them) can read our runs, plus our own trailing columns `cpu_source,
//! gpu_source, ram_source, phase` so the origin of every number is kept. Units follow
//! CodeCarbon: energies in kWh, powers in W, emissions in kg CO2-eq, duration in s, RAM in GiB.
//! Columns that describe CodeCarbon's own environment (python_version, codecarbon_version,
//! region, cloud, coordinates) are left empty.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::record::EnergyRecord;
use super::{EnergyError, SourceKind};

/// CodeCarbon's `emissions.csv` header, in order.
pub const CODECARBON_COLUMNS: [&str; 32] = [
    "timestamp",
    "project_name",
    "run_id",
    "experiment_id",
    "duration",
    "emissions",
    "emissions_rate",
    "cpu_power",
    "gpu_power",
    "ram_power",
    "cpu_energy",
    "gpu_energy",
    "ram_energy",
    "energy_consumed",
    "country_name",
    "country_iso_code",
    "region",
    "cloud_provider",
    "cloud_region",
    "os",
    "python_version",
    "codecarbon_version",
    "cpu_count",
    "cpu_model",
    "gpu_count",
    "gpu_model",
    "longitude",
    "latitude",
    "ram_total_size",
    "tracking_mode",
    "on_cloud",
    "pue",
];

/// Our trailing columns (CodeCarbon's readers ignore extra columns).
pub const EXTRA_COLUMNS: [&str; 4] = ["cpu_source", "gpu_source", "ram_source", "phase"];

/// The full header: CodeCarbon's columns, then ours.
pub fn header() -> Vec<&'static str> {
    CODECARBON_COLUMNS
        .iter()
        .chain(EXTRA_COLUMNS.iter())
        .copied()
        .collect()
}

/// Identifies the run in the CSV's `project_name`, `run_id` and `experiment_id` columns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub project_name: String,
    pub run_id: String,
    pub experiment_id: String,
}

/// `platform.platform()`-like OS string: `Linux-<kernel release>-<arch>`.
fn os_string() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let os = match std::env::consts::OS {
        "linux" => "Linux",
        other => other,
    };
    if release.is_empty() {
        format!("{os}-{}", std::env::consts::ARCH)
    } else {
        format!("{os}-{release}-{}", std::env::consts::ARCH)
    }
}

/// CodeCarbon's `gpu_model` style: `2 x NVIDIA H100, 1 x NVIDIA A100`.
pub fn gpu_model_column(names: &[String]) -> String {
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for n in names {
        match groups.iter_mut().find(|(g, _)| *g == n.as_str()) {
            Some((_, c)) => *c += 1,
            None => groups.push((n.as_str(), 1)),
        }
    }
    groups
        .iter()
        .map(|(n, c)| format!("{c} x {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One CSV row for `rec`, in [`header`] order.
pub fn row(rec: &EnergyRecord, run: &RunInfo, os: &str) -> Vec<String> {
    let hw_counter = |s: SourceKind| matches!(s, SourceKind::Rapl | SourceKind::Nvml);
    let tracking_mode = if hw_counter(rec.cpu.source) || hw_counter(rec.gpu.source) {
        "machine"
    } else {
        "process"
    };
    vec![
        rec.timestamp.clone(),
        run.project_name.clone(),
        run.run_id.clone(),
        run.experiment_id.clone(),
        rec.duration_s.to_string(),
        rec.emissions_kg.to_string(),
        rec.emissions_rate_kg_per_s.to_string(),
        rec.cpu.power_w.to_string(),
        rec.gpu.power_w.to_string(),
        rec.ram.power_w.to_string(),
        rec.cpu.energy_kwh.to_string(),
        rec.gpu.energy_kwh.to_string(),
        rec.ram.energy_kwh.to_string(),
        rec.energy_kwh.to_string(),
        rec.country_name.clone().unwrap_or_default(),
        rec.country_iso_code.clone().unwrap_or_default(),
        String::new(),
        String::new(),
        String::new(),
        os.to_string(),
        String::new(),
        String::new(),
        rec.cpu_count.to_string(),
        rec.cpu_model.clone(),
        rec.gpu_models.len().to_string(),
        gpu_model_column(&rec.gpu_models),
        String::new(),
        String::new(),
        rec.ram_total_gib.to_string(),
        tracking_mode.to_string(),
        "N".to_string(),
        rec.pue.to_string(),
        rec.cpu.source.to_string(),
        rec.gpu.source.to_string(),
        rec.ram.source.to_string(),
        rec.phase.clone(),
    ]
}

/// Appends records to an emissions CSV; the header is written once, when the file is new or
/// empty. Every row is flushed so a crash loses nothing already measured.
pub struct CsvSink {
    path: PathBuf,
    writer: ::csv::Writer<File>,
    run: RunInfo,
    os: String,
}

impl CsvSink {
    /// Opens `path` for appending. An existing non-empty file must start with our header
    /// (otherwise [`EnergyError::CsvHeader`]: appending would misalign columns).
    pub fn open(path: &Path, run: RunInfo) -> Result<CsvSink, EnergyError> {
        let expected = header().join(",");
        let write_err = |e: std::io::Error| EnergyError::Write {
            what: path.display().to_string(),
            source: e,
        };
        let needs_header = match File::open(path) {
            Ok(f) => {
                let mut first = String::new();
                BufReader::new(f)
                    .read_line(&mut first)
                    .map_err(|e| EnergyError::Read {
                        path: path.to_path_buf(),
                        source: e,
                    })?;
                let first = first.trim_end_matches(['\r', '\n']);
                if !first.is_empty() && first != expected {
                    return Err(EnergyError::CsvHeader {
                        path: path.to_path_buf(),
                        found: first.to_string(),
                        expected,
                    });
                }
                first.is_empty()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                return Err(EnergyError::Read {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(write_err)?;
        let mut writer = ::csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        let csv_err = |e: ::csv::Error| EnergyError::Csv {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        if needs_header {
            writer.write_record(header()).map_err(csv_err)?;
            writer.flush().map_err(write_err)?;
        }
        Ok(CsvSink {
            path: path.to_path_buf(),
            writer,
            run,
            os: os_string(),
        })
    }

    /// Appends one record and flushes.
    pub fn append(&mut self, rec: &EnergyRecord) -> Result<(), EnergyError> {
        self.writer
            .write_record(row(rec, &self.run, &self.os))
            .map_err(|e| EnergyError::Csv {
                path: self.path.clone(),
                source: Box::new(e),
            })?;
        self.writer.flush().map_err(|e| EnergyError::Write {
            what: self.path.display().to_string(),
            source: e,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_models_grouped() {
        let n = |s: &str| s.to_string();
        assert_eq!(
            gpu_model_column(&[n("H100"), n("A100"), n("H100")]),
            "2 x H100, 1 x A100"
        );
        assert_eq!(gpu_model_column(&[]), "");
    }

    #[test]
    fn row_matches_header_length() {
        let rec = EnergyRecord::new(
            "x",
            std::time::UNIX_EPOCH,
            1.0,
            Default::default(),
            &Default::default(),
            &Default::default(),
        );
        assert_eq!(
            row(&rec, &RunInfo::default(), "Linux").len(),
            header().len()
        );
        assert_eq!(header().len(), 36);
    }
}
