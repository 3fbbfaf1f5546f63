use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use dsnn_hpo::cli::Cli;
use dsnn_hpo::error::Error;

fn main() -> ExitCode {
    #[cfg(feature = "dsnn")]
    dsnn_hpo::train::malloc::keep_freed_memory();
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match dsnn_hpo::commands::run(cli.command, &mut out) {
        Ok(()) => {
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        // A closed pipe (`dsnn-hpo describe | head`) is not a failure.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("dsnn-hpo: error: {e}");
            ExitCode::from(2)
        }
    }
}
