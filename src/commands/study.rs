//! `dsnn-hpo study create|list|show|export`: the studies of a store.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::error::Error;
use crate::report::export::write_front;
use crate::store::{self, EventKind, Store, TrialLine, TrialStatus};

#[derive(Debug, Args)]
pub struct StudyArgs {
    #[command(subcommand)]
    pub action: StudyAction,
}

#[derive(Debug, Subcommand)]
pub enum StudyAction {
    /// Create a study from a run configuration, for `dsnn-hpo worker`s to join.
    #[cfg(feature = "dsnn")]
    Create {
        #[arg(long, value_name = "URL")]
        storage: String,
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The study's name (default: `[study] name`, else the config's `name`).
        #[arg(long, value_name = "NAME")]
        study: Option<String>,
        /// Override a key of the configuration, e.g. `--set search.trials=200`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// The store's studies, with their trials finished, running and queued.
    List {
        #[arg(long, value_name = "URL")]
        storage: String,
    },
    /// One study: its settings, progress and running trials (who runs them, how long silent).
    Show {
        #[arg(long, value_name = "URL")]
        storage: String,
        #[arg(long, value_name = "NAME")]
        study: String,
    },
    /// Write a study's records to a folder: run.json, trials.jsonl, trials.csv, the front files;
    /// `dsnn-hpo pareto --run DIR` reports it.
    Export {
        #[arg(long, value_name = "URL")]
        storage: String,
        #[arg(long, value_name = "NAME")]
        study: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

pub fn run(args: &StudyArgs, out: &mut dyn Write) -> Result<(), Error> {
    match &args.action {
        #[cfg(feature = "dsnn")]
        StudyAction::Create {
            storage,
            config,
            study,
            sets,
        } => {
            let mut cfg = crate::config::RunConfig::load(config, sets)?;
            cfg.study.storage = Some(storage.clone());
            if let Some(name) = study {
                cfg.study.name = Some(name.clone());
            }
            let (_, name) = crate::search::study_location(&cfg, Path::new("."));
            let rec = crate::search::create_study(&cfg, config, storage, &name)?;
            writeln!(
                out,
                "created study \"{}\" in {} ({} trials, objectives {}); start workers with:\n  dsnn-hpo worker --storage {} --study {}",
                rec.study.name,
                store::url::hide_password(storage),
                cfg.search.trials,
                rec.study.info.objectives.join(", "),
                store::url::hide_password(storage),
                rec.study.name
            )?;
            Ok(())
        }
        StudyAction::List { storage } => {
            let mut s = store::open(storage)?;
            let names = s.studies()?;
            if names.is_empty() {
                writeln!(out, "no studies in {}", s.url())?;
            }
            for name in names {
                let c = counts(s.as_mut(), &name)?;
                writeln!(
                    out,
                    "{name}: {} finished ({} failed), {} running, {} queued",
                    c.finished, c.failed, c.running, c.queued
                )?;
            }
            Ok(())
        }
        StudyAction::Show { storage, study } => {
            let mut s = store::open(storage)?;
            let rec = s.study(study)?;
            let c = counts(s.as_mut(), study)?;
            let st = &rec.study;
            writeln!(out, "study \"{}\" in {}", st.name, s.url())?;
            writeln!(out, "  created by dsnn-hpo {}", st.version)?;
            writeln!(out, "  objectives: {}", st.info.objectives.join(", "))?;
            if let Some(f) = &st.data_fingerprint {
                writeln!(out, "  data: {f}")?;
            }
            writeln!(
                out,
                "  leases: heartbeat every {} s, taken after {} s of silence, retried {} time(s)",
                st.leases.heartbeat_s, st.leases.grace_s, st.leases.max_retries
            )?;
            writeln!(
                out,
                "  trials: {} finished ({} failed, {} infeasible), {} running, {} queued",
                c.finished, c.failed, c.infeasible, c.running, c.queued
            )?;
            for r in s.running(study)? {
                writeln!(
                    out,
                    "  running: trial {} ({} epochs, attempt {}) on {}, last heartbeat {:.0} s ago",
                    r.lease.trial.id,
                    r.lease.trial.epochs(),
                    r.lease.attempt,
                    r.lease.owner,
                    r.silent_s
                )?;
            }
            Ok(())
        }
        StudyAction::Export {
            storage,
            study,
            out: dir,
        } => {
            let mut s = store::open(storage)?;
            let rec = s.study(study)?;
            let lines = store::finished_lines(s.as_mut(), study)?;
            export(dir, &rec.study.info, &lines)?;
            writeln!(
                out,
                "exported {} trials of study \"{study}\" to {} (run.json, trials.jsonl, trials.csv, front.json, front.csv); report: dsnn-hpo pareto --run {}",
                lines.len(),
                dir.display(),
                dir.display()
            )?;
            Ok(())
        }
    }
}

struct Counts {
    finished: usize,
    failed: usize,
    infeasible: usize,
    running: usize,
    queued: usize,
}

fn counts(s: &mut dyn Store, study: &str) -> Result<Counts, Error> {
    let mut c = Counts {
        finished: 0,
        failed: 0,
        infeasible: 0,
        running: s.running(study)?.len(),
        queued: s.queued(study)?.len(),
    };
    for e in s.events(study, 0)? {
        if let EventKind::Tell { line } = e.kind {
            c.finished += 1;
            match line.status {
                TrialStatus::Failed => c.failed += 1,
                TrialStatus::Infeasible => c.infeasible += 1,
                TrialStatus::Success => {}
            }
        }
    }
    Ok(c)
}

/// Writes a study's records as a run directory (plus `trials.csv`).
pub fn export(dir: &Path, info: &store::RunInfo, lines: &[TrialLine]) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Run {
        path: dir.to_path_buf(),
        message: format!("cannot create the export folder: {e}"),
    })?;
    store::write_run_info(dir, info)?;
    store::write_trials(dir, lines)?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["id", "budget", "status", "continued_from", "baseline"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(info.objectives.iter().cloned());
    header.extend(["config", "reason", "wall_s"].map(String::from));
    let csv_err = |e: csv::Error| Error::Run {
        path: dir.join("trials.csv"),
        message: e.to_string(),
    };
    w.write_record(&header).map_err(csv_err)?;
    for l in lines {
        let mut row = vec![
            l.id.to_string(),
            l.budget.to_string(),
            format!("{:?}", l.status).to_lowercase(),
            l.continued_from.map(|c| c.to_string()).unwrap_or_default(),
            l.baseline.to_string(),
        ];
        for k in 0..info.objectives.len() {
            row.push(
                l.objectives
                    .get(k)
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            );
        }
        row.push(serde_json::to_string(&l.config)?);
        row.push(l.reason.clone().unwrap_or_default());
        row.push(l.wall_s.to_string());
        w.write_record(&row).map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Run {
        path: dir.join("trials.csv"),
        message: e.to_string(),
    })?;
    store::write_atomic(&dir.join("trials.csv"), &bytes)?;
    write_front(dir, info, lines)?;
    Ok(())
}
