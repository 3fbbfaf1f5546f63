//! One module per subcommand; each takes its parsed arguments and an output stream.

pub mod bench;
pub mod bench_mf;
pub mod describe;
pub mod energy;
#[cfg(feature = "dsnn")]
pub mod optimize;
pub mod pareto;
pub mod study;
#[cfg(feature = "dsnn")]
pub mod train;
#[cfg(feature = "dsnn")]
pub mod worker;

use std::io::Write;

use crate::cli::Command;
use crate::error::Error;

/// Runs one subcommand, writing its report to `out`.
pub fn run(command: Command, out: &mut dyn Write) -> Result<(), Error> {
    match command {
        #[cfg(feature = "dsnn")]
        Command::Optimize(args) => optimize::run(&args, out),
        Command::Describe(args) => describe::run(&args, out),
        #[cfg(feature = "dsnn")]
        Command::Train(args) => train::run(&args, out),
        Command::Energy(args) => energy::run(&args, out),
        #[cfg(feature = "dsnn")]
        Command::Worker(args) => worker::run(&args, out),
        Command::Pareto(args) => pareto::run(&args, out),
        Command::Study(args) => study::run(&args, out),
        Command::Bench(args) => {
            bench::run(&args, out)?;
            Ok(())
        }
    }
}
