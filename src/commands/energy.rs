//! `dsnn-hpo energy`: which energy sources work here, and the energy of one inference pass.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::energy::Source;
use crate::energy::probe::run_probe_with;
use crate::error::Error;

#[derive(Debug, Args)]
pub struct EnergyCmdArgs {
    /// Report which energy sources work on this machine, and why the others do not.
    #[arg(long)]
    pub probe: bool,
    /// Run configuration (TOML): measure one inference pass of its [train] network over the
    /// validation split of its [data], with the meters of its [energy] section.
    #[arg(long, value_name = "FILE", conflicts_with = "probe")]
    pub config: Option<PathBuf>,
    /// Override a key of the run configuration, e.g. `--set energy.country=DEU`.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    pub sets: Vec<String>,
    /// Force a source, overriding the config's `energy.source`.
    #[arg(long, value_enum)]
    pub source: Option<Source>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "dsnn")]
#[derive(serde::Serialize)]
struct InferenceEnergy {
    images: usize,
    /// Measured (or estimated) on this machine; each component names its source.
    measured: crate::energy::EnergyRecord,
    /// What shift hardware would spend by the op-count model; source "opcount".
    opcount: crate::energy::EnergyRecord,
    opcount_per_image_j: f64,
}

pub fn run(args: &EnergyCmdArgs, out: &mut dyn Write) -> Result<(), Error> {
    match &args.config {
        None => {
            let mut cfg = crate::energy::EnergyConfig::default();
            if let Some(s) = args.source {
                cfg.source = s;
            }
            if !args.probe {
                return Err(Error::Flag {
                    flag: "energy",
                    value: "(no --probe or --config)".into(),
                    expected: "give --probe to list sources or --config FILE to measure a pass",
                });
            }
            run_probe_with(&cfg, args.json, out)?;
            Ok(())
        }
        Some(path) => measure_inference(path, args, out),
    }
}

#[cfg(not(feature = "dsnn"))]
fn measure_inference(
    _: &std::path::Path,
    _: &EnergyCmdArgs,
    _: &mut dyn Write,
) -> Result<(), Error> {
    Err(Error::Flag {
        flag: "--config",
        value: "(inference pass)".into(),
        expected: "this build has no burn: rebuild with the default `dsnn` feature",
    })
}

#[cfg(feature = "dsnn")]
fn measure_inference(
    path: &std::path::Path,
    args: &EnergyCmdArgs,
    out: &mut dyn Write,
) -> Result<(), Error> {
    use crate::config::RunConfig;
    use crate::energy::{EnergyTracker, OpCountEnergy, opcount};
    use crate::model::Network;
    let mut cfg = RunConfig::load(path, &args.sets)?;
    if let Some(s) = args.source {
        cfg.energy.source = s;
    }
    let choice: crate::device::DeviceChoice = cfg.device.parse()?;
    let device = choice.device()?;
    let data = cfg.data.load()?;
    let spec = cfg.train.net_spec(data.dims(), data.num_classes())?;
    device.seed(cfg.train.seed);
    let model = Network::init(&spec, &device);
    let tracker = EnergyTracker::from_config(&cfg.energy)?;
    for note in tracker.notes() {
        eprintln!("energy: {note}");
    }
    let window = tracker.start("inference")?;
    crate::train::evaluate(&model, &data.valid, &data, 256, &device)?;
    let measured = tracker.stop(window)?;
    let images = data.valid.len();
    let op: OpCountEnergy =
        opcount::pass_energy(&spec.layer_counts(), images as u64, &cfg.energy.opcount)?;
    let report = InferenceEnergy {
        images,
        opcount: op.to_record("inference", tracker.carbon()),
        opcount_per_image_j: op.per_image_j,
        measured,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let m = &report.measured;
    writeln!(
        out,
        "inference pass over {} validation images of {} ({} shift layers of {})",
        images,
        spec.model,
        spec.totals().shift_layers,
        spec.totals().weight_layers
    )?;
    writeln!(
        out,
        "measured   {:.3e} kWh = {:.3} J in {:.2} s  (cpu: {}, gpu: {}, ram: {}); {:.3e} kg CO2-eq at {} g/kWh, PUE {}",
        m.energy_kwh,
        m.energy_j,
        m.duration_s,
        m.cpu.source,
        m.gpu.source,
        m.ram.source,
        m.emissions_kg,
        m.intensity_g_per_kwh,
        m.pue
    )?;
    let o = &report.opcount;
    writeln!(
        out,
        "op-count   {:.3e} kWh = {:.6} J ({:.3e} J per image; source: opcount, 45 nm per-operation energies)",
        o.energy_kwh, o.energy_j, report.opcount_per_image_j
    )?;
    Ok(())
}
