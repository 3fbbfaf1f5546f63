//! `dsnn-hpo worker`: joins a study in a shared store and evaluates its trials until it is done.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::error::Error;
use crate::search::{WorkerOptions, work};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The study store: `postgresql://user@host/db` (many machines), `journal:///shared/folder`
    /// (many machines sharing a folder, no server) or `sqlite:///path/study.db` (processes of
    /// one machine, not on a network filesystem).
    #[arg(long, value_name = "URL")]
    pub storage: String,
    /// The study's name in the store (`dsnn-hpo study list` shows them).
    #[arg(long, value_name = "NAME")]
    pub study: String,
    /// Stop after this many trials finished here (the study goes on with other workers).
    #[arg(long, value_name = "N")]
    pub max_trials: Option<usize>,
    /// This machine's device (overrides the study's): cpu, wgpu:N, cuda:N, ...
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// This machine's copy of the study's data set (checked against the study's fingerprint).
    #[arg(long, value_name = "PATH")]
    pub data_path: Option<PathBuf>,
    /// Trials evaluated at once by this process.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub workers: usize,
    /// Folder for saved states while trials run (default: a new temporary folder of this process,
    /// removed at exit).
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: &WorkerArgs, out: &mut dyn Write) -> Result<(), Error> {
    if args.workers == 0 || args.max_trials == Some(0) {
        return Err(Error::Flag {
            flag: if args.workers == 0 {
                "--workers"
            } else {
                "--max-trials"
            },
            value: "0".into(),
            expected: "a positive number",
        });
    }
    let report = work(&WorkerOptions {
        storage: args.storage.clone(),
        study: args.study.clone(),
        max_trials: args.max_trials,
        device: args.device.clone(),
        data_path: args.data_path.clone(),
        workers: args.workers,
        checkpoints: args.checkpoints.clone(),
        quiet: args.quiet,
    })?;
    writeln!(
        out,
        "worker stopped: {:?}; the study has {} finished trials",
        report.stop, report.study_trials
    )?;
    if report.stop == crate::report::summary::StopReason::Interrupted {
        return Err(Error::Run {
            path: PathBuf::from(format!("study \"{}\"", args.study)),
            message: "worker interrupted; its running trials were handed back".into(),
        });
    }
    Ok(())
}
