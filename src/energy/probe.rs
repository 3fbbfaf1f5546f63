//! `dsnn-hpo energy --probe`: which energy sources work on this machine, why the others do not,
//! and what `auto` would choose; as text or JSON.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::carbon::Carbon;
use super::config::EnergyConfig;
use super::estimate::{CpuTime, ProcCpuTime, ProcResidentMemory, ResidentMemory};
use super::nvml::NvmlMeter;
use super::rapl::RaplMeter;
use super::tracker::{Environment, cpu_power_for, describe_cpu_power};
use super::{EnergyError, Meter, Source, SourceKind};

/// Command-line arguments of `dsnn-hpo energy`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct EnergyArgs {
    /// Report which energy sources work on this machine (and why others do not), then exit.
    #[arg(long)]
    pub probe: bool,
    /// Print the probe report as JSON.
    #[arg(long, requires = "probe")]
    pub json: bool,
    /// Energy config file (TOML: source, country, intensity_g_per_kwh, pue, cpu_tdp_w,
    /// cpu_w_per_core, ram_w_per_gb, [opcount]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Force a source, overriding the config's `source`.
    #[arg(long, value_enum)]
    pub source: Option<Source>,
}

impl EnergyArgs {
    /// The config file's settings (defaults without `--config`), with `--source` applied.
    pub fn load_config(&self) -> Result<EnergyConfig, EnergyError> {
        let mut cfg = match &self.config {
            Some(p) => EnergyConfig::from_file(p)?,
            None => EnergyConfig::default(),
        };
        if let Some(s) = self.source {
            cfg.source = s;
        }
        Ok(cfg)
    }
}

/// Availability of one source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeEntry {
    /// `nvml`, `rapl` or `estimate` (CPU), `estimate` (RAM).
    pub source: SourceKind,
    /// Component the source measures: `gpu`, `cpu` or `ram`.
    pub component: String,
    pub available: bool,
    /// What was found, or why it is unavailable.
    pub detail: String,
}

/// What the probe found and what the config would select.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub entries: Vec<ProbeEntry>,
    /// Source selection asked for.
    pub requested: Source,
    /// Source per component the tracker would use: cpu, gpu, ram.
    pub selected_cpu: SourceKind,
    pub selected_gpu: SourceKind,
    pub selected_ram: SourceKind,
    /// Set when the requested source is unavailable (the tracker would refuse to start).
    pub error: Option<String>,
    pub cpu_model: String,
    pub logical_cores: usize,
    pub carbon: Carbon,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.entries {
            let state = if e.available {
                "available"
            } else {
                "unavailable"
            };
            let label = match (e.source, e.component.as_str()) {
                (SourceKind::Estimate, "ram") => "estimate (ram)".to_string(),
                (s, _) => s.to_string(),
            };
            writeln!(f, "{label}: {state}: {}", e.detail)?;
        }
        match &self.error {
            Some(err) => writeln!(f, "source = {}: error: {err}", self.requested)?,
            None => writeln!(
                f,
                "source = {} selects: cpu = {}, gpu = {}, ram = {}",
                self.requested, self.selected_cpu, self.selected_gpu, self.selected_ram
            )?,
        }
        let c = &self.carbon;
        writeln!(
            f,
            "carbon: {} g CO2-eq/kWh ({}{}), PUE {}",
            c.intensity_g_per_kwh,
            c.intensity_origin,
            c.country_name
                .as_deref()
                .map(|n| format!(", {n}"))
                .unwrap_or_default(),
            c.pue
        )
    }
}

/// Probes every source with `cfg`'s parameters in `env`.
pub fn probe_in(cfg: &EnergyConfig, env: &Environment) -> Result<ProbeReport, EnergyError> {
    cfg.validate()?;
    let carbon = cfg.carbon()?;
    let cpu_model = super::host::cpu_model();
    let cores = env.logical_cores.max(1);
    let mut entries = Vec::new();

    let nvml = if env.use_nvml {
        NvmlMeter::open_visible(env.cuda_visible_devices.as_deref())
    } else {
        Err(EnergyError::NvmlUnavailable {
            reason: "NVML disabled in this environment".into(),
        })
    };
    let nvml_ok = nvml.is_ok();
    entries.push(match nvml {
        Ok(m) => {
            let names = m.hardware();
            let mut detail = format!("{} visible GPU(s): {}", names.len(), names.join(", "));
            for n in m.notes() {
                detail.push_str(&format!("; {n}"));
            }
            ProbeEntry {
                source: SourceKind::Nvml,
                component: "gpu".into(),
                available: true,
                detail,
            }
        }
        Err(e) => ProbeEntry {
            source: SourceKind::Nvml,
            component: "gpu".into(),
            available: false,
            detail: strip_prefix(&e.to_string(), "nvml: unavailable: "),
        },
    });

    let rapl = RaplMeter::open(&env.powercap_root);
    let rapl_ok = rapl.is_ok();
    entries.push(match rapl {
        Ok(m) => ProbeEntry {
            source: SourceKind::Rapl,
            component: "cpu".into(),
            available: true,
            detail: format!(
                "{} under {}",
                m.domain_names().join(", "),
                env.powercap_root.display()
            ),
        },
        Err(e) => ProbeEntry {
            source: SourceKind::Rapl,
            component: "cpu".into(),
            available: false,
            detail: strip_prefix(&e.to_string(), "rapl: unavailable: "),
        },
    });

    let power = cpu_power_for(cfg, cores);
    let cpu_time = ProcCpuTime::open().and_then(|p| p.cpu_time());
    let est_ok = cpu_time.is_ok();
    entries.push(ProbeEntry {
        source: SourceKind::Estimate,
        component: "cpu".into(),
        available: est_ok,
        detail: match cpu_time {
            Ok(_) => describe_cpu_power(&power, &cpu_model),
            Err(e) => e.to_string(),
        },
    });
    let rss = ProcResidentMemory::open().and_then(|p| p.resident_bytes());
    let ram_ok = rss.is_ok();
    entries.push(ProbeEntry {
        source: SourceKind::Estimate,
        component: "ram".into(),
        available: ram_ok,
        detail: match rss {
            Ok(_) => format!(
                "{} W per GiB of this process's resident memory",
                cfg.ram_w_per_gb
            ),
            Err(e) => e.to_string(),
        },
    });

    let cpu_sel = match cfg.source {
        Source::Estimate => SourceKind::Estimate,
        Source::Rapl => SourceKind::Rapl,
        Source::Auto | Source::Nvml if rapl_ok => SourceKind::Rapl,
        Source::Auto | Source::Nvml => SourceKind::Estimate,
    };
    let gpu_sel = match cfg.source {
        Source::Estimate => SourceKind::None,
        _ if nvml_ok => SourceKind::Nvml,
        _ => SourceKind::None,
    };
    let error = match cfg.source {
        Source::Nvml if !nvml_ok => Some("nvml was requested but is unavailable".to_string()),
        Source::Rapl if !rapl_ok => Some("rapl was requested but is unavailable".to_string()),
        _ if cpu_sel == SourceKind::Estimate && !est_ok => {
            Some("the CPU estimate cannot read this process's CPU time".to_string())
        }
        _ if !ram_ok => Some("the RAM estimate cannot read resident memory".to_string()),
        _ => None,
    };
    Ok(ProbeReport {
        entries,
        requested: cfg.source,
        selected_cpu: cpu_sel,
        selected_gpu: gpu_sel,
        selected_ram: SourceKind::Estimate,
        error,
        cpu_model,
        logical_cores: cores,
        carbon,
    })
}

fn strip_prefix(s: &str, prefix: &str) -> String {
    s.strip_prefix(prefix).unwrap_or(s).to_string()
}

/// Probes this machine with the default config.
pub fn probe() -> Result<ProbeReport, EnergyError> {
    probe_in(&EnergyConfig::default(), &Environment::default())
}

/// Writes the probe report with `cfg`'s parameters as text or pretty JSON.
pub fn run_probe_with(
    cfg: &EnergyConfig,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), EnergyError> {
    let report = probe_in(cfg, &Environment::default())?;
    write_report(&report, json, out)
}

/// `dsnn-hpo energy --probe [--json]` with the default config.
pub fn run_probe(json: bool, out: &mut dyn Write) -> Result<(), EnergyError> {
    run_probe_with(&EnergyConfig::default(), json, out)
}

/// Writes a report as text or pretty JSON.
pub fn write_report(
    report: &ProbeReport,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), EnergyError> {
    let write_err = |e: std::io::Error| EnergyError::Write {
        what: "probe report".into(),
        source: e,
    };
    if json {
        let text = serde_json::to_string_pretty(report).map_err(|e| EnergyError::Write {
            what: "probe report".into(),
            source: e.into(),
        })?;
        writeln!(out, "{text}").map_err(write_err)
    } else {
        write!(out, "{report}").map_err(write_err)
    }
}
