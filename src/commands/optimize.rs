//! `dsnn-hpo optimize`: search DSNN configurations for the best loss/energy trade-offs.

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;

use crate::config::RunConfig;
use crate::error::Error;
use crate::search::{OptimizeOptions, optimize};

#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// Run configuration (TOML): [data], [train] (base values), [[space]], [search],
    /// [fidelity], [objectives], [energy].
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a key, e.g. `--set search.trials=10 --set data.path=/data/cifar`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run directory (default runs/<config name>-<unix time>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub run_dir: Option<PathBuf>,
    /// Continue a run that was stopped or killed; its configuration is read from the run.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Trials evaluated at once (overrides `[search] workers`): on the CPU the cores are
    /// divided between them, on GPUs each takes the next device index.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Study store (overrides `[study] storage`): `sqlite:///path/study.db`,
    /// `postgresql://user@host/db` or `journal:///shared/folder`; default: a SQLite file inside the run directory. Workers on
    /// other machines join with `dsnn-hpo worker --storage URL --study NAME`.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// The study's name in the store (overrides `[study] name`; default: the config's `name`).
    #[arg(long, value_name = "NAME")]
    pub study: Option<String>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: &OptimizeArgs, out: &mut dyn Write) -> Result<(), Error> {
    let (cfg, run_dir, config_path, resume) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            // The run keeps its own resolved configuration; --set may extend its stop criteria.
            let info = crate::store::read_run_info(dir)?;
            let path = dir.join("run.json");
            let cfg = RunConfig::from_str_with_sets(&info.config_toml, &path, &args.sets)?;
            (cfg, dir.clone(), path, true)
        }
        (None, Some(path)) => {
            let cfg = RunConfig::load(path, &args.sets)?;
            let dir = match &args.run_dir {
                Some(d) => d.clone(),
                None => {
                    let name = cfg.name.clone().unwrap_or_else(|| {
                        path.file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "run".into())
                    });
                    let stamp = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    PathBuf::from("runs").join(format!("{name}-{stamp}"))
                }
            };
            (cfg, dir, path.clone(), false)
        }
        (None, None) => {
            return Err(Error::Flag {
                flag: "optimize",
                value: "(no --config)".into(),
                expected: "give --config FILE for a new run or --resume DIR",
            });
        }
    };
    let mut cfg = cfg;
    if let Some(n) = args.workers {
        if n == 0 {
            return Err(Error::Flag {
                flag: "--workers",
                value: n.to_string(),
                expected: "a positive number of trials to evaluate at once",
            });
        }
        cfg.search.workers = n;
    }
    if let Some(url) = &args.storage {
        cfg.study.storage = Some(url.clone());
    }
    if let Some(name) = &args.study {
        cfg.study.name = Some(name.clone());
    }
    let summary = optimize(
        &cfg,
        &OptimizeOptions {
            run_dir: run_dir.clone(),
            resume,
            quiet: args.quiet,
            config_path,
        },
    )?;
    writeln!(
        out,
        "run {}: {} trials ({} failed, {} infeasible), stopped: {:?}; front of {} (trials {:?}), hypervolume {:.4} (normalised, reference 1.1)",
        run_dir.display(),
        summary.trials,
        summary.failed,
        summary.infeasible,
        summary.stop,
        summary.front.len(),
        summary.front,
        summary.hypervolume
    )?;
    if summary.stop == crate::report::summary::StopReason::Interrupted {
        return Err(Error::Run {
            path: run_dir.clone(),
            message: format!(
                "interrupted; finished trials are kept: continue with dsnn-hpo optimize --resume {}",
                run_dir.display()
            ),
        });
    }
    let e = &summary.search_energy;
    writeln!(
        out,
        "search energy {:.3e} kWh, {:.3e} kg CO2-eq (cpu: {}, gpu: {}, ram: {}); trials' energy {:.3e} kWh",
        e.energy_kwh,
        e.emissions_kg,
        e.cpu.source,
        e.gpu.source,
        e.ram.source,
        summary.trials_energy_kwh
    )?;
    // The front as `pareto` prints it, and its plot beside the other run files.
    let run = crate::report::Run::load(&run_dir)?;
    let report = crate::report::Report::new(&run);
    let plot = run_dir.join("front.svg");
    crate::report::svg::write_svg(&report, &plot)?;
    writeln!(out)?;
    crate::report::table::write_table(&report, out)?;
    writeln!(
        out,
        "plot: {}; again, or as CSV/JSON: dsnn-hpo pareto --run {} [--format csv|json]",
        plot.display(),
        run_dir.display()
    )?;
    Ok(())
}
