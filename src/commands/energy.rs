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
    /// Measure the trained network saved by `dsnn-hpo train --save DIR` (same configuration)
    /// instead of a freshly initialised one.
    #[arg(long, value_name = "DIR", requires = "config")]
    pub state: Option<PathBuf>,
    /// Per-layer energy: each layer's op counts and op-count energy, and its share of the
    /// measured energy (time share of a profiled pass).
    #[arg(long, requires = "config")]
    pub per_layer: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "dsnn")]
#[derive(serde::Serialize)]
struct InferenceEnergy {
    images: usize,
    /// Measured (or estimated) on this machine, all passes together; each component names its
    /// source, `repeat` has the passes' mean, spread and 95% CI.
    measured: crate::energy::EnergyRecord,
    /// Mean measured pass per image, joules.
    measured_per_image_j: f64,
    /// What shift hardware would spend by the op-count model; source "opcount".
    opcount: crate::energy::EnergyRecord,
    opcount_per_image_j: f64,
    /// With `--per-layer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    per_layer: Option<Vec<crate::energy::layers::LayerRow>>,
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
    use crate::energy::layers::layer_rows;
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
    let model = match &args.state {
        None => Network::init(&spec, &device),
        Some(dir) => {
            let ad = device.clone().autodiff();
            let (m, _) =
                crate::train::checkpoint::load_model(dir, &cfg.train, Network::init(&spec, &ad))
                    .map_err(crate::train::TrainError::from)?;
            burn::module::Module::valid(&m)
        }
    };
    let tracker = EnergyTracker::from_config(&cfg.energy)?;
    for note in tracker.notes() {
        eprintln!("energy: {note}");
    }
    let images = data.valid.len();
    let measured = crate::eval::dsnn::measure_inference(
        &model,
        &data,
        &device,
        &cfg.energy.repeat(),
        || Ok::<_, Error>(tracker.start("inference")?),
        |w| Ok(tracker.stop(w)?),
    )?;
    let measured_per_image_j = measured.pass_j() / images.max(1) as f64;
    let op: OpCountEnergy =
        opcount::pass_energy(&spec.layer_counts(), images as u64, &cfg.energy.opcount)?;
    let per_layer = if args.per_layer {
        let (layer_s, other_s) = crate::train::profile_layers(
            &model,
            spec.layers.len(),
            &data.valid,
            &data,
            256,
            &device,
        )?;
        Some(layer_rows(
            &spec,
            &op,
            &layer_s,
            other_s,
            measured_per_image_j,
        ))
    } else {
        None
    };
    let report = InferenceEnergy {
        images,
        opcount: op.to_record("inference", tracker.carbon()),
        opcount_per_image_j: op.per_image_j,
        measured,
        measured_per_image_j,
        per_layer,
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
    let rep = m.repeat.as_ref();
    writeln!(
        out,
        "measured   {:.3e} kWh = {:.4} J per pass ±{:.1}% (95% CI, {} passes after {} warm-up{}), {:.3e} J per image  (cpu: {}, gpu: {}, ram: {})",
        m.pass_kwh(),
        m.pass_j(),
        rep.map_or(f64::INFINITY, |r| r.rel_ci95 * 100.0),
        rep.map_or(1, |r| r.passes),
        rep.map_or(0, |r| r.warmup_passes),
        match rep {
            Some(r) if !r.target_met =>
                format!("; target ±{:.1}% not reached", r.target_rel_ci * 100.0),
            _ => String::new(),
        },
        report.measured_per_image_j,
        m.cpu.source,
        m.gpu.source,
        m.ram.source,
    )?;
    if let Some(r) = rep {
        writeln!(
            out,
            "           passes {:.4}..{:.4} J (spread {:.1}%), sd {:.4} J; all passes together {:.3} J in {:.2} s, {:.3e} kg CO2-eq at {} g/kWh, PUE {}",
            r.min_j,
            r.max_j,
            (r.max_j / r.min_j - 1.0) * 100.0,
            r.sd_j,
            m.energy_j,
            m.duration_s,
            m.emissions_kg,
            m.intensity_g_per_kwh,
            m.pue
        )?;
    }
    let o = &report.opcount;
    writeln!(
        out,
        "op-count   {:.3e} kWh = {:.6} J ({:.3e} J per image; source: opcount, 45 nm per-operation energies)",
        o.energy_kwh, o.energy_j, report.opcount_per_image_j
    )?;
    if let Some(rows) = &report.per_layer {
        write_layers(rows, m, out)?;
    }
    Ok(())
}

/// The per-layer table: op counts and op-count energy next to the measured share.
#[cfg(feature = "dsnn")]
fn write_layers(
    rows: &[crate::energy::layers::LayerRow],
    measured: &crate::energy::EnergyRecord,
    out: &mut dyn Write,
) -> Result<(), Error> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:<9} {:<5} {:>12} {:>9} {:>14} {:>7} {:>14}",
        "layer", "kind", "type", "MACs/image", "params", "opcount J/img", "time", "measured J/img"
    )?;
    for r in rows {
        let kind = if r.kind == "other" {
            "-"
        } else if r.shift {
            "shift"
        } else {
            "float"
        };
        writeln!(
            out,
            "{:<16} {:<9} {:<5} {:>12} {:>9} {:>14.3e} {:>6.1}% {:>14.3e}",
            r.name,
            r.kind,
            kind,
            r.macs,
            r.params,
            r.opcount_j_per_image,
            r.time_share * 100.0,
            r.measured_j_per_image
        )?;
    }
    writeln!(
        out,
        "measured J/img = the layer's share of a profiled pass's time (device synchronised after each layer) x the mean measured energy per image (source cpu: {}, gpu: {}, ram: {}); other = activations, pooling, shortcuts; opcount = Horowitz 45 nm per-operation energies",
        measured.cpu.source, measured.gpu.source, measured.ram.source
    )?;
    Ok(())
}
