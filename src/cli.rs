//! Command-line interface: clap structs only, what the user typed. Validation of values that
//! clap cannot check (ranges across flags, file contents) happens in `commands`.

use clap::{Parser, Subcommand};

use crate::commands::bench::BenchArgs;
use crate::commands::describe::DescribeArgs;
use crate::commands::energy::EnergyCmdArgs;
#[cfg(feature = "dsnn")]
use crate::commands::optimize::OptimizeArgs;
use crate::commands::pareto::ParetoArgs;
use crate::commands::study::StudyArgs;
#[cfg(feature = "dsnn")]
use crate::commands::train::TrainArgs;
#[cfg(feature = "dsnn")]
use crate::commands::worker::WorkerArgs;

/// Find the best accuracy/energy trade-offs of Deep Shift Neural Networks.
#[derive(Debug, Parser)]
#[command(name = "dsnn-hpo", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Search DSNN configurations for the best trade-offs of loss and energy (multi-fidelity,
    /// multi-objective: Hyperband over epochs, ParEGO with a random forest).
    #[cfg(feature = "dsnn")]
    Optimize(OptimizeArgs),
    /// Join a study in a shared store (PostgreSQL, or SQLite on one machine) and evaluate its
    /// trials until it is done: start any number, on any machines, at any time.
    #[cfg(feature = "dsnn")]
    Worker(WorkerArgs),
    /// Report a search: its Pareto front as a table (or CSV, JSON), sorted by loss, the default
    /// DSNN marked and the best improvements against it; `--plot` draws the trials as SVG.
    Pareto(ParetoArgs),
    /// The studies of a store: create one for workers to join, list, show progress and running
    /// trials, export the trial log (JSON lines and CSV).
    Study(StudyArgs),
    /// Print a network's layer table: which layers are shift layers, parameters, MACs and
    /// shift-adds per image.
    Describe(DescribeArgs),
    /// Train one DSNN configuration and report validation accuracy, loss, time and energy.
    #[cfg(feature = "dsnn")]
    Train(TrainArgs),
    /// Energy sources available here (--probe), or the energy of one inference pass (--config).
    Energy(EnergyCmdArgs),
    /// Benchmark the optimizer on ZDT1-3 and DTLZ2: hypervolume per seed and median, and the
    /// optimizer's own time per suggestion; on the multi-fidelity problems (mf-*): multi- vs.
    /// single-fidelity hypervolume at equal cost in epochs.
    Bench(BenchArgs),
}
