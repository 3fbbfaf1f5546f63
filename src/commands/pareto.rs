//! `dsnn-hpo pareto`: the report of a search, its Pareto front against the default DSNN.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::Error;
use crate::report::{Report, Run, export, svg, table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns with the sources in the footer and the improvements below.
    Table,
    /// One row per front point (and the default), objective sources as columns.
    Csv,
    /// The whole report: objectives with sources, rows, default, comparison.
    Json,
}

#[derive(Debug, Args)]
pub struct ParetoArgs {
    /// Run directory written by `dsnn-hpo optimize` (holds run.json and trials.jsonl).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also draw every evaluated trial (shaded by budget), the front and the default
    /// configuration to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

pub fn run(args: &ParetoArgs, out: &mut dyn Write) -> Result<(), Error> {
    let run = Run::load(&args.run)?;
    let report = Report::new(&run);
    if let Some(path) = &args.plot {
        svg::write_svg(&report, path)?;
    }
    match args.format {
        Format::Table => table::write_table(&report, out)?,
        Format::Csv => export::write_csv(&report, out)?,
        Format::Json => export::write_json(&report, out)?,
    }
    if let (Some(path), Format::Table) = (&args.plot, args.format) {
        writeln!(out, "Plot: {}", path.display())?;
    }
    Ok(())
}
