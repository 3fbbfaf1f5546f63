//! The facade of `dsnn-hpo optimize`: builds the search space, the optimizer, the DSNN
//! objective and the run directory, then runs the ask / evaluate / log / tell loop.
//!
//! Resume: the optimizer is rebuilt from the same configuration and seed and the trial log is
//! replayed through it: each `ask()` that the log answers is told the logged outcome, so the
//! optimizer reaches the state it had when the run stopped; the first trial the log lacks
//! (one that was running when the run was killed) is evaluated anew. Each finished trial is
//! logged before the optimizer is told, so none is lost or repeated.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::RunConfig;
use crate::data::LoadedData;
use crate::device::DeviceChoice;
use crate::energy::{CsvSink, EnergyTracker};
use crate::error::Error;
use crate::eval::Evaluator;
use crate::eval::command::CommandObjective;
use crate::opt::{Ask, Budgets, Outcome, Smbo, SmboSettings, Strategy, Trial};
use crate::progress::EpochBar;
use crate::report::export::write_front;
use crate::report::{front_of, normalised_hypervolume};
use crate::space::SearchSpace;
use crate::store::{self, Metrics, RunInfo, TrialLine, TrialLog, TrialStatus};
use crate::trial::{DsnnObjective, Evaluation, dsnn_space, trial_config};

/// How the optimize command was asked to run.
pub struct OptimizeOptions {
    pub run_dir: PathBuf,
    pub resume: bool,
    pub quiet: bool,
    /// Where the configuration came from, for error messages.
    pub config_path: PathBuf,
}

/// Why the search stopped.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    TrialsDone,
    WallTime,
    EnergyBudget,
    EmissionsBudget,
}

/// `summary.json`: the search as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub trials: usize,
    pub failed: usize,
    pub stop: StopReason,
    pub front: Vec<u64>,
    /// Hypervolume of the front, objectives min-max normalised over successful trials,
    /// reference point 1.1 per objective.
    pub hypervolume: f64,
    pub wall_s: f64,
    /// The search's own energy (this process, all phases), with its sources.
    pub search_energy: crate::energy::EnergyRecord,
    /// Sum of the trials' measured energy records.
    pub trials_energy_kwh: f64,
    pub trials_emissions_kg: f64,
}

/// A stable 64-bit FNV-1a hash: std's hasher may change between Rust releases, and run
/// directories must compare across builds.
fn fnv1a(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The settings a resumed run must share with the original: everything but the stop criteria.
fn meta_hash(cfg: &RunConfig) -> Result<String, Error> {
    let mut c = cfg.clone();
    c.search.trials = 0;
    c.search.wall_time_s = None;
    c.search.energy_budget_kwh = None;
    c.search.emissions_budget_kg = None;
    Ok(fnv1a(&serde_json::to_string(&c)?))
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn run_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Run {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The search space of the run: the config's `[[space]]`, or the built-in DSNN space.
pub fn search_space(
    cfg: &RunConfig,
    data: Option<&LoadedData>,
    source: &Path,
) -> Result<SearchSpace, Error> {
    let space = if cfg.space.is_empty() {
        let Some(data) = data else {
            return Err(run_err(source, "a command objective needs a [[space]]"));
        };
        let spec = cfg.train.net_spec(data.dims(), data.num_classes())?;
        dsnn_space(spec.totals().weight_layers, &cfg.train)
    } else {
        SearchSpace::new(cfg.space.clone(), Some(&source.display().to_string()))
    }
    .map_err(|e| run_err(source, e.to_string()))?;
    if data.is_some() {
        // Every parameter must be a training setting: try the default configuration.
        trial_config(&cfg.train, &space.default_config())
            .map_err(|e| run_err(source, e.to_string()))?;
    }
    Ok(space)
}

fn build_optimizer(cfg: &RunConfig, space: SearchSpace, source: &Path) -> Result<Smbo, Error> {
    let n_objectives = if cfg.objective.kind == "dsnn" {
        2
    } else {
        cfg.objective.names.len()
    };
    let f = &cfg.fidelity;
    let budgets = Budgets {
        min: f64::from(f.min_epochs),
        max: f64::from(f.max_epochs),
        eta: f64::from(f.eta),
        schedule: f.schedule,
        integer: true,
    };
    let mut settings = SmboSettings::new(n_objectives, cfg.search.trials, budgets, cfg.search.seed);
    settings.strategy = if cfg.search.strategy == "random" {
        Strategy::Random
    } else {
        Strategy::ParEgo
    };
    settings.initial_design = cfg.search.initial_design;
    settings.random_fraction = cfg.search.random_fraction;
    Smbo::new(space, settings).map_err(|e| run_err(source, e.to_string()))
}

/// What a trial runs: a DSNN training or a user's command.
enum Runner<'a> {
    Dsnn(Box<DsnnObjective<'a>>),
    Command(CommandObjective),
}

impl Runner<'_> {
    fn names(&self) -> Vec<String> {
        match self {
            Runner::Dsnn(d) => d.objective_names(),
            Runner::Command(c) => c.objective_names(),
        }
    }

    fn sources(&self) -> Vec<String> {
        match self {
            Runner::Dsnn(d) => d.objective_sources(),
            Runner::Command(c) => c
                .objective_names()
                .iter()
                .map(|n| format!("{n} as printed by the objective command"))
                .collect(),
        }
    }

    fn evaluate(&mut self, trial: &Trial) -> Result<Evaluation, Error> {
        match self {
            Runner::Dsnn(d) => Ok(d.evaluate(trial)?),
            Runner::Command(c) => Ok(Evaluation {
                outcome: c.evaluate(trial).map_err(|e| Error::Run {
                    path: PathBuf::from("[objective]"),
                    message: e.to_string(),
                })?,
                metrics: None,
                energy: Vec::new(),
            }),
        }
    }
}

fn command_objective(cfg: &RunConfig, source: &Path) -> Result<CommandObjective, Error> {
    let o = &cfg.objective;
    let built = match &o.shell {
        Some(line) => CommandObjective::shell(line, o.names.clone()),
        None => CommandObjective::new(o.command.clone(), o.names.clone()),
    };
    let mut c = built.map_err(|e| run_err(source, e.to_string()))?;
    if let Some(t) = o.timeout_s {
        c = c.with_timeout(std::time::Duration::from_secs_f64(t));
    }
    Ok(c)
}

/// Runs (or resumes) a search; returns its summary.
pub fn optimize(cfg: &RunConfig, opts: &OptimizeOptions) -> Result<Summary, Error> {
    let started = Instant::now();
    let dir = &opts.run_dir;
    let hash = meta_hash(cfg)?;
    if opts.resume {
        let info = store::read_run_info(dir)?;
        if info.meta_hash != hash {
            return Err(run_err(
                dir,
                "was started with a different configuration (only [search] trials, wall_time_s, \
                 energy_budget_kwh and emissions_budget_kg may change on resume); start a new run \
                 with another --run-dir",
            ));
        }
    } else if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(run_err(
            dir,
            "exists and is not empty: continue it with --resume, or choose another --run-dir",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| run_err(dir, e.to_string()))?;

    let is_dsnn = cfg.objective.kind == "dsnn";
    let data = if is_dsnn {
        Some(cfg.data.load()?)
    } else {
        None
    };
    let space = search_space(cfg, data.as_ref(), &opts.config_path)?;
    let default_config = space.default_config();
    let mut smbo = build_optimizer(cfg, space, &opts.config_path)?;
    let tracker = EnergyTracker::from_config(&cfg.energy)?;
    if !opts.quiet {
        for note in tracker.notes() {
            eprintln!("energy: {note}");
        }
        if let Some(d) = &data {
            eprintln!("data: {}", d.describe());
        }
    }
    let search_window = tracker.start("search")?;

    let multi = (!opts.quiet).then(MultiProgress::new);
    let observer: Box<dyn crate::train::TrainObserver> = match &multi {
        Some(m) => Box::new(EpochBar::new(m.clone(), false)),
        None => Box::new(crate::train::Quiet),
    };
    let mut objective = match &data {
        Some(data) => {
            let choice: DeviceChoice = cfg.device.parse()?;
            Runner::Dsnn(Box::new(DsnnObjective::new(
                cfg.train.clone(),
                data,
                choice.device()?,
                &tracker,
                cfg.objectives.clone(),
                cfg.fidelity.max_epochs as usize,
                dir.join("checkpoints"),
                observer,
                cfg.energy.opcount.clone(),
            )))
        }
        None => Runner::Command(command_objective(cfg, &opts.config_path)?),
    };
    let info = RunInfo {
        objectives: objective.names(),
        objective_sources: objective.sources(),
        default_config,
        meta_hash: hash,
        config_toml: toml::to_string(cfg).unwrap_or_default(),
    };
    store::write_run_info(dir, &info)?;

    // Replay what an earlier run finished.
    let mut lines = store::read_trials(dir)?;
    let mut replayed = 0usize;
    let mut pending: Option<Trial> = None;
    let (mut energy_kwh, mut emissions_kg) = (0.0f64, 0.0f64);
    while replayed < lines.len() {
        match smbo.ask() {
            Ask::Trial(t) => {
                let Some(line) = lines.iter().find(|l| l.id == t.id) else {
                    pending = Some(t);
                    break;
                };
                if line.config != t.config || line.budget != t.budget {
                    return Err(run_err(
                        dir,
                        format!(
                            "trial {} in trials.jsonl does not match what the optimizer asks on replay; the log belongs to another configuration or version",
                            t.id
                        ),
                    ));
                }
                let train = line.energy.iter().find(|r| r.phase == "train");
                if let Some(r) = train {
                    let (pk, pg) = line
                        .continued_from
                        .and_then(|p| lines.iter().find(|l| l.id == p))
                        .and_then(|l| l.energy.iter().find(|r| r.phase == "train"))
                        .map_or((0.0, 0.0), |r| (r.energy_kwh, r.emissions_kg));
                    if let Runner::Dsnn(d) = &mut objective {
                        d.restore_training_energy(t.id, r.energy_kwh + pk, r.emissions_kg + pg);
                    }
                }
                for r in &line.energy {
                    if r.phase != "inference" || !r.cpu.source.to_string().contains("opcount") {
                        energy_kwh += r.energy_kwh;
                        emissions_kg += r.emissions_kg;
                    }
                }
                smbo.tell(t.id, outcome_of(line))
                    .map_err(|e| run_err(dir, e.to_string()))?;
                replayed += 1;
            }
            Ask::Wait | Ask::Done => break,
        }
    }
    if replayed < lines.len() {
        return Err(run_err(
            dir,
            format!(
                "trials.jsonl has {} trials but only {replayed} replay: the log belongs to another configuration",
                lines.len()
            ),
        ));
    }

    let mut log = TrialLog::open(dir)?;
    let mut csv = CsvSink::open(
        &dir.join("emissions.csv"),
        crate::energy::RunInfo {
            project_name: "dsnn-hpo".into(),
            run_id: info.meta_hash.clone(),
            experiment_id: cfg.name.clone().unwrap_or_else(|| "optimize".into()),
        },
    )?;
    let total = cfg.search.trials;
    let main_bar = multi.as_ref().map(|m| {
        let bar = m.add(ProgressBar::new(total as u64));
        if let Ok(style) =
            ProgressStyle::with_template("trials [{bar:30}] {pos}/{len}  {msg}  ({elapsed})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(lines.len() as u64);
        bar
    });
    let mut stop = StopReason::TrialsDone;
    loop {
        if cfg
            .search
            .wall_time_s
            .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit)
        {
            stop = StopReason::WallTime;
            break;
        }
        if cfg
            .search
            .energy_budget_kwh
            .is_some_and(|b| energy_kwh >= b)
        {
            stop = StopReason::EnergyBudget;
            break;
        }
        if cfg
            .search
            .emissions_budget_kg
            .is_some_and(|b| emissions_kg >= b)
        {
            stop = StopReason::EmissionsBudget;
            break;
        }
        let trial = match pending.take() {
            Some(t) => t,
            None => match smbo.ask() {
                Ask::Trial(t) => t,
                Ask::Wait | Ask::Done => break,
            },
        };
        if let Some(bar) = &main_bar {
            bar.set_message(format!(
                "trial {} ({} epochs{})",
                trial.id,
                trial.epochs(),
                trial
                    .continues
                    .map(|p| format!(", continues {p}"))
                    .unwrap_or_default()
            ));
        }
        let t0 = Instant::now();
        let Evaluation {
            outcome,
            metrics,
            energy,
        } = objective.evaluate(&trial)?;
        let outcome = match outcome {
            Outcome::Success { objectives } if objectives.iter().any(|v| !v.is_finite()) => {
                Outcome::Failed {
                    reason: format!("objective values {objectives:?} are not finite"),
                }
            }
            o => o,
        };
        for r in &energy {
            csv.append(r)?;
            if r.cpu.source.to_string() != "opcount" {
                energy_kwh += r.energy_kwh;
                emissions_kg += r.emissions_kg;
            }
        }
        let line = line_of(
            &trial,
            &outcome,
            metrics,
            energy,
            t0.elapsed().as_secs_f64(),
        );
        log.append(&line)?;
        if let (Some(reason), Some(m)) = (&line.reason, &multi) {
            let _ = m.println(format!("trial {} failed: {reason}", trial.id));
        }
        lines.push(line);
        smbo.tell(trial.id, outcome)
            .map_err(|e| run_err(dir, e.to_string()))?;
        write_front(dir, &info, &lines)?;
        if let Some(bar) = &main_bar {
            let front = front_of(&lines);
            bar.set_position(lines.len() as u64);
            bar.set_message(format!(
                "front {}  HV {:.3}  energy {:.2e} kWh",
                front.len(),
                normalised_hypervolume(&lines, &front),
                energy_kwh
            ));
        }
    }
    if let Some(bar) = main_bar {
        bar.finish();
    }
    let search_energy = tracker.stop(search_window)?;
    let failed = lines
        .iter()
        .filter(|l| l.status == TrialStatus::Failed)
        .count();
    if !lines.is_empty() && failed == lines.len() {
        let reasons: Vec<&str> = lines.iter().filter_map(|l| l.reason.as_deref()).collect();
        return Err(run_err(
            dir,
            format!(
                "every trial failed ({} of {}); first reason: {}",
                failed,
                lines.len(),
                reasons.first().copied().unwrap_or("unknown")
            ),
        ));
    }
    let _ = std::fs::remove_dir_all(dir.join("checkpoints"));
    let front = front_of(&lines);
    let summary = Summary {
        trials: lines.len(),
        failed,
        stop,
        front: front.iter().map(|t| t.id).collect(),
        hypervolume: normalised_hypervolume(&lines, &front),
        wall_s: started.elapsed().as_secs_f64(),
        search_energy,
        trials_energy_kwh: energy_kwh,
        trials_emissions_kg: emissions_kg,
    };
    store::write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

fn outcome_of(line: &TrialLine) -> Outcome {
    match line.status {
        TrialStatus::Success => Outcome::Success {
            objectives: line.objectives.clone(),
        },
        TrialStatus::Failed => Outcome::Failed {
            reason: line.reason.clone().unwrap_or_default(),
        },
    }
}

fn line_of(
    trial: &Trial,
    outcome: &Outcome,
    metrics: Option<Metrics>,
    energy: Vec<crate::energy::EnergyRecord>,
    wall_s: f64,
) -> TrialLine {
    let (status, objectives, reason) = match outcome {
        Outcome::Success { objectives } => (TrialStatus::Success, objectives.clone(), None),
        Outcome::Failed { reason } => (TrialStatus::Failed, Vec::new(), Some(reason.clone())),
    };
    TrialLine {
        id: trial.id,
        config: trial.config.clone(),
        budget: trial.budget,
        continued_from: trial.continues,
        status,
        reason,
        objectives,
        metrics,
        energy,
        wall_s,
        finished_unix_s: now_unix(),
    }
}
