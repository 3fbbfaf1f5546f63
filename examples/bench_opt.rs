//! Optimizer benchmark without the DSNN build:
//! `cargo run --release --no-default-features --example bench_opt -- --problem all --evals 100 --seeds 5`.

use std::process::ExitCode;

use clap::Parser;
use dsnn_hpo::commands::bench::{self, BenchArgs};

#[derive(Parser)]
#[command(about = "Hypervolume and time per suggestion of the optimizer on ZDT1-3 and DTLZ2")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match bench::run(&cli.bench, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_opt: {e}");
            ExitCode::from(2)
        }
    }
}
