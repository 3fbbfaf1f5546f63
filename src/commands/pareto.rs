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
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "storage",
        conflicts_with = "storage"
    )]
    pub run: Option<PathBuf>,
    /// Or a study in a store: `--storage URL --study NAME`.
    #[arg(long, value_name = "URL", requires = "study")]
    pub storage: Option<String>,
    #[arg(long, value_name = "NAME", requires = "storage")]
    pub study: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also draw every evaluated trial (shaded by budget), the front and the default
    /// configuration to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

pub fn run(args: &ParetoArgs, out: &mut dyn Write) -> Result<(), Error> {
    let run = match (&args.run, &args.storage, &args.study) {
        (Some(dir), _, _) => Run::load(dir)?,
        (None, Some(url), Some(name)) => {
            let mut s = crate::store::open(url)?;
            let rec = s.study(name)?;
            let lines = crate::store::finished_lines(s.as_mut(), name)?;
            let label = format!("study \"{name}\" in {}", s.url());
            Run::from_records(&label, rec.study.info, lines)?
        }
        _ => {
            return Err(Error::Flag {
                flag: "pareto",
                value: "(no --run)".into(),
                expected: "give --run DIR, or --storage URL --study NAME",
            });
        }
    };
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
