//! `dsnn-hpo train`: train one configuration, show progress, print and save a summary.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use indicatif::MultiProgress;
use serde::Serialize;

use crate::config::RunConfig;
use crate::device::DeviceChoice;
use crate::energy::{EnergyRecord, EnergyTracker};
use crate::error::Error;
use crate::progress::EpochBar;
use crate::train::{RunOptions, TrainConfig, TrainObserver, TrainReport, TrainStatus, train};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run configuration (TOML with [data], [train], [energy], epochs, device).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Override a key, e.g. `--set train.lr=0.05 --set data.path=/data/cifar`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Epochs to train (overrides the config's `epochs`).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Save the trained state here (continue it later with --resume); report.json goes there.
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Continue a state saved with --save (same configuration) up to --epochs.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Also report accuracy on the held-out test split (never used for optimization).
    #[arg(long)]
    pub evaluate_test: bool,
    /// Backend: cpu, wgpu, wgpu:N, vulkan, vulkan:N or cuda:N (overrides the config's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What `train` writes: the trial's configuration, its result and its energy.
#[derive(Debug, Serialize)]
pub struct TrainSummary<'a> {
    pub config: &'a TrainConfig,
    pub data: String,
    pub device: String,
    pub report: TrainReport,
    /// Energy of the whole run (training and validation), with its source per component.
    pub energy: EnergyRecord,
}

pub fn run(args: &TrainArgs, out: &mut dyn Write) -> Result<(), Error> {
    let mut cfg = RunConfig::load(&args.config, &args.sets)?;
    if let Some(e) = args.epochs {
        if e == 0 {
            return Err(Error::Flag {
                flag: "--epochs",
                value: "0".into(),
                expected: "expected a positive integer",
            });
        }
        cfg.epochs = e;
    }
    let choice: DeviceChoice = args.device.as_deref().unwrap_or(&cfg.device).parse()?;
    let device = choice.device()?;
    let data = cfg.data.load()?;
    let tracker = EnergyTracker::from_config(&cfg.energy)?;
    for note in tracker.notes() {
        eprintln!("energy: {note}");
    }
    if !args.quiet {
        if let Some(note) = &data.load_note {
            eprintln!("data: {note}");
        }
        eprintln!("data: {}", data.describe());
    }
    let mut bars = EpochBar::new(MultiProgress::new(), true);
    let mut quiet = crate::train::Quiet;
    let observer: &mut dyn TrainObserver = if args.quiet || args.json {
        &mut quiet
    } else {
        &mut bars
    };
    let opts = RunOptions {
        resume_from: args.resume.as_deref(),
        save_to: args.save.as_deref(),
        progress_to: None,
        evaluate_test: args.evaluate_test,
    };
    let window = tracker.start("train")?;
    let report = train(&cfg.train, &data, &device, cfg.epochs, &opts, observer)?;
    let energy = tracker.stop(window)?;
    let summary = TrainSummary {
        config: &cfg.train,
        data: data.describe(),
        device: choice.to_string(),
        report,
        energy,
    };
    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(dir) = &args.save {
        let path = dir.join("report.json");
        std::fs::write(&path, format!("{json}\n")).map_err(|e| Error::Write {
            path: path.clone(),
            source: e,
        })?;
    }
    if args.json {
        writeln!(out, "{json}")?;
    } else {
        write_summary(&summary, out)?;
    }
    if summary.report.status == TrainStatus::Diverged {
        return Err(Error::Diverged(
            summary.report.reason.clone().unwrap_or_default(),
        ));
    }
    Ok(())
}

fn write_summary(s: &TrainSummary<'_>, out: &mut dyn Write) -> std::io::Result<()> {
    let r = &s.report;
    writeln!(out, "status            {:?}", r.status)?;
    if let Some(reason) = &r.reason {
        writeln!(out, "reason            {reason}")?;
    }
    writeln!(
        out,
        "epochs            {} (started at {})",
        r.epochs, r.start_epoch
    )?;
    writeln!(
        out,
        "valid accuracy    {:.4}  (error {:.4})",
        r.valid_accuracy, r.valid_error
    )?;
    writeln!(
        out,
        "valid loss        {:.4}  (cross-entropy)",
        r.valid_loss
    )?;
    writeln!(out, "train loss        {:.4}  (last epoch)", r.train_loss)?;
    if let (Some(a), Some(l)) = (r.test_accuracy, r.test_loss) {
        writeln!(out, "test accuracy     {a:.4}  (loss {l:.4})")?;
    }
    writeln!(
        out,
        "time              {:.1} s  ({:.1} s training)",
        r.wall_s, r.train_s
    )?;
    writeln!(out, "throughput        {:.1} images/s", r.images_per_s)?;
    let e = &s.energy;
    writeln!(
        out,
        "energy            {:.3e} kWh = {:.1} J  (cpu: {}, gpu: {}, ram: {})",
        e.energy_kwh, e.energy_j, e.cpu.source, e.gpu.source, e.ram.source
    )?;
    writeln!(
        out,
        "emissions         {:.3e} kg CO2-eq  ({} g/kWh, PUE {})",
        e.emissions_kg, e.intensity_g_per_kwh, e.pue
    )?;
    Ok(())
}
