//! The facade of `dsnn-hpo optimize`: builds the search space, the optimizer, the DSNN
//! objective and the run directory, then runs the ask / evaluate / log / tell loop.
//!
//! Trials run on `[search] workers` threads (see [`crate::workers`]); this loop alone asks, logs
//! and tells, so the optimizer needs no locking.
//!
//! Resume: the optimizer is rebuilt from the same configuration and seed, and the run's asks
//! (`asks.jsonl`: each trial id with the number of outcomes told before it was asked) and
//! tells (`trials.jsonl`, in finishing order) are replayed in the order they happened, so the
//! optimizer reaches the state it had when the run stopped, however the workers interleaved.
//! Trials that were asked but never finished (running at the kill) are evaluated anew. Each
//! finished trial is logged before the optimizer is told, so none is lost or repeated.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::RunConfig;
use crate::constraint::{Constraints, Quantity, Values, design_values};
use crate::data::LoadedData;
use crate::device::DeviceChoice;
use crate::energy::{CsvSink, EnergyTracker};
use crate::error::Error;
use crate::eval::Evaluator;
use crate::eval::command::CommandObjective;
use crate::eval::problems::{Problem, ProblemEvaluator};
use crate::opt::{Ask, Budgets, KnownConstraint, Outcome, Smbo, SmboSettings, Strategy, Trial};
use crate::progress::EpochBar;
use crate::report::export::write_front;
use crate::report::{front_of, normalised_hypervolume};
use crate::space::SearchSpace;
use crate::store::{self, AskLine, JsonlLog, Metrics, RunInfo, TrialLine, TrialLog, TrialStatus};
use crate::trial::{
    DsnnObjective, Evaluation, TrainingEnergy, dsnn_space, measure_inference, trial_config,
};
use crate::workers::{CpuShare, ThreadClocks, cpu_threads, worker_device};

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
    /// The optimizer's trials (the baseline not counted).
    pub trials: usize,
    /// The trial that trained the default configuration at the largest budget after the search.
    pub baseline: Option<u64>,
    pub failed: usize,
    /// Trials that violated a `[[constraints]]` bound (never on the front).
    pub infeasible: usize,
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

/// The settings a resumed run must share with the original: everything but the stop criteria
/// and the number of workers.
fn meta_hash(cfg: &RunConfig) -> Result<String, Error> {
    let mut c = cfg.clone();
    c.search.trials = 0;
    c.search.wall_time_s = None;
    c.search.energy_budget_kwh = None;
    c.search.emissions_budget_kg = None;
    c.search.workers = 1;
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
    let space = if let (true, Some(p)) = (cfg.space.is_empty(), problem_of(cfg)) {
        Ok(p.space())
    } else if cfg.space.is_empty() {
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

fn build_optimizer(
    cfg: &RunConfig,
    space: SearchSpace,
    n_objectives: usize,
    source: &Path,
) -> Result<Smbo, Error> {
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
    settings.front_fraction = cfg.search.front_fraction;
    Smbo::new(space, settings).map_err(|e| run_err(source, e.to_string()))
}

/// What a trial runs: a DSNN training, or any other [`Evaluator`] (a user's command, a built-in
/// test problem), whose objectives come from `source` (e.g. "as printed by the objective command").
enum Runner<'a> {
    Dsnn(Box<DsnnObjective<'a>>),
    Other {
        eval: Box<dyn Evaluator>,
        source: String,
    },
}

/// The built-in test problem `[objective] kind` names, if it names one.
fn problem_of(cfg: &RunConfig) -> Option<Problem> {
    Problem::ALL
        .into_iter()
        .find(|p| p.name() == cfg.objective.kind)
}

impl Runner<'_> {
    fn names(&self) -> Vec<String> {
        match self {
            Runner::Dsnn(d) => d.objective_names(),
            Runner::Other { eval, .. } => eval.objective_names(),
        }
    }

    fn sources(&self) -> Vec<String> {
        match self {
            Runner::Dsnn(d) => d.objective_sources(),
            Runner::Other { eval, source } => eval
                .objective_names()
                .iter()
                .map(|n| format!("{n} {source}"))
                .collect(),
        }
    }

    fn evaluate(&mut self, trial: &Trial) -> Result<Evaluation, Error> {
        match self {
            Runner::Dsnn(d) => Ok(d.evaluate(trial)?),
            Runner::Other { eval, .. } => Ok(Evaluation {
                outcome: eval.evaluate(trial).map_err(|e| Error::Run {
                    path: PathBuf::from("[objective]"),
                    message: e.to_string(),
                })?,
                metrics: None,
                energy: Vec::new(),
                per_layer: None,
            }),
        }
    }
}

/// What every worker needs to build its objective.
struct WorkerContext<'a> {
    cfg: &'a RunConfig,
    data: Option<&'a LoadedData>,
    tracker: &'a EnergyTracker,
    dir: &'a Path,
    config_path: &'a Path,
    multi: Option<MultiProgress>,
    workers: usize,
    /// `None` for a command objective.
    device: Option<DeviceChoice>,
    training_energy: TrainingEnergy,
    /// `[[constraints]]` with the default configuration's reference values.
    constraints: Constraints,
}

impl<'a> WorkerContext<'a> {
    /// Worker `w`'s objective.
    fn runner(
        &self,
        w: usize,
        share: Option<CpuShare>,
        observer: Box<dyn crate::train::TrainObserver + 'a>,
    ) -> Result<Runner<'a>, Error> {
        match (self.data, self.device) {
            (Some(data), Some(device)) => {
                let device = worker_device(device, w, self.workers).device()?;
                let mut d = DsnnObjective::new(
                    self.cfg.train.clone(),
                    data,
                    device,
                    self.tracker,
                    self.cfg.objectives.clone(),
                    self.cfg.fidelity.max_epochs as usize,
                    self.dir.join("checkpoints"),
                    observer,
                    self.cfg.energy.opcount.clone(),
                )
                .with_training_energy(self.training_energy.clone());
                d.share = share;
                d.repeat = self.cfg.energy.repeat();
                d.per_layer = self.cfg.energy.per_layer;
                d.constraints = self.constraints.clone();
                Ok(Runner::Dsnn(Box::new(d)))
            }
            _ => Ok(match problem_of(self.cfg) {
                Some(problem) => Runner::Other {
                    eval: Box::new(ProblemEvaluator { problem }),
                    source: format!("of the test problem {} (computed)", problem.name()),
                },
                None => Runner::Other {
                    eval: Box::new(command_objective(self.cfg, self.config_path)?),
                    source: "as printed by the objective command".into(),
                },
            }),
        }
    }

    fn on_gpu(&self) -> bool {
        self.device.is_some_and(DeviceChoice::is_gpu)
    }
}

/// A trial a worker finished (or could not run).
struct Finished {
    worker: usize,
    trial: Trial,
    result: Result<Evaluation, Error>,
    wall_s: f64,
}

/// Worker `w`: evaluates the trials it is sent until the sender hangs up. With several workers
/// on the CPU it runs inside its own rayon pool, so burn's kernels use only its cores.
fn run_worker(ctx: &WorkerContext<'_>, w: usize, jobs: Receiver<Trial>, done: Sender<Finished>) {
    let clocks = ThreadClocks::default();
    let body = move |clocks: ThreadClocks| {
        let share = if ctx.workers > 1 {
            match CpuShare::new(clocks) {
                Ok(s) => Some(s),
                Err(e) => return fail_first(w, &jobs, &done, e.into()),
            }
        } else {
            None
        };
        let observer: Box<dyn crate::train::TrainObserver> = match &ctx.multi {
            Some(m) => Box::new(EpochBar::new(m.clone(), false)),
            None => Box::new(crate::train::Quiet),
        };
        let mut runner = match ctx.runner(w, share, observer) {
            Ok(r) => r,
            Err(e) => return fail_first(w, &jobs, &done, e),
        };
        while let Ok(trial) = jobs.recv() {
            let t0 = Instant::now();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.evaluate(&trial)))
                    .unwrap_or_else(|panic| {
                        // A crash inside the training stack is this trial's failure, not the run's.
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        Ok(Evaluation {
                            outcome: Outcome::Failed {
                                reason: format!("crashed: {what}"),
                            },
                            metrics: None,
                            energy: Vec::new(),
                            per_layer: None,
                        })
                    });
            let f = Finished {
                worker: w,
                trial,
                result,
                wall_s: t0.elapsed().as_secs_f64(),
            };
            if done.send(f).is_err() {
                break;
            }
        }
    };
    // A pool that cannot be built (no threads left) leaves the worker on the global pool.
    let pool = (ctx.workers > 1 && !ctx.on_gpu())
        .then(|| {
            let c = clocks.clone();
            rayon::ThreadPoolBuilder::new()
                .num_threads(cpu_threads(ctx.workers))
                .thread_name(move |i| format!("worker{w}-{i}"))
                .start_handler(move |_| c.register_current())
                .build()
                .ok()
        })
        .flatten();
    match pool {
        Some(pool) => pool.install(move || body(clocks)),
        None => {
            clocks.register_current();
            body(clocks);
        }
    }
}

/// Hands back the first trial a worker that could not start receives, with the reason.
fn fail_first(w: usize, jobs: &Receiver<Trial>, done: &Sender<Finished>, e: Error) {
    if let Ok(trial) = jobs.recv() {
        let _ = done.send(Finished {
            worker: w,
            trial,
            result: Err(e),
            wall_s: 0.0,
        });
    }
}

/// Baseline trials are numbered from here, apart from the optimizer's own.
pub const BASELINE_IDS: u64 = 1_000_000;

/// The default configuration at `max_budget`, continuing its furthest successful trial, when
/// no successful trial of it reached that budget yet.
fn baseline_trial(
    lines: &[TrialLine],
    default: &crate::space::Config,
    max_budget: f64,
    dir: &Path,
) -> Option<Trial> {
    let ok = |l: &&TrialLine| l.measured() && l.config == *default;
    if lines.iter().filter(ok).any(|l| l.budget >= max_budget) {
        return None;
    }
    let continues = lines
        .iter()
        .filter(ok)
        .filter(|l| dir.join("checkpoints").join(l.id.to_string()).exists())
        .max_by(|a, b| a.budget.total_cmp(&b.budget))
        .map(|l| l.id);
    let n = lines.iter().filter(|l| l.baseline).count() as u64;
    Some(Trial {
        id: BASELINE_IDS + n,
        config: default.clone(),
        budget: max_budget,
        continues,
    })
}

/// The stop criterion that is met, if any.
fn stop_reason(
    cfg: &RunConfig,
    started: Instant,
    energy_kwh: f64,
    emissions_kg: f64,
) -> Option<StopReason> {
    let s = &cfg.search;
    if s.wall_time_s
        .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit)
    {
        Some(StopReason::WallTime)
    } else if s.energy_budget_kwh.is_some_and(|b| energy_kwh >= b) {
        Some(StopReason::EnergyBudget)
    } else if s.emissions_budget_kg.is_some_and(|b| emissions_kg >= b) {
        Some(StopReason::EmissionsBudget)
    } else {
        None
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

/// `[[constraints]]` with the default configuration's values for relative bounds: known-ahead
/// ones from its layer table; its inference energy per image measured once (repeated passes, on
/// its freshly built network: float emulation spends the same whatever the weights) before the
/// first trial, or taken from the run being resumed, so a resume judges as the run did.
fn constraints_of(
    cfg: &RunConfig,
    data: &LoadedData,
    default: &crate::space::Config,
    previous: Option<&Values>,
    tracker: &EnergyTracker,
    device: DeviceChoice,
) -> Result<Constraints, Error> {
    let mut c = Constraints::new(cfg.constraints.clone());
    let needed = c.relative_quantities();
    if needed.is_empty() {
        return Ok(c);
    }
    let train = trial_config(&cfg.train, default)?;
    let spec = train.net_spec(data.dims(), data.num_classes())?;
    c.reference = design_values(&spec, &cfg.energy.opcount)?;
    if needed.contains(&Quantity::InferenceJPerImage) {
        let known = previous.and_then(|p| p.get(&Quantity::InferenceJPerImage).copied());
        let value = match known {
            Some(v) => v,
            None => {
                let device = device.device()?;
                device.seed(train.seed);
                let model = crate::model::Network::init(&spec, &device);
                let rec = measure_inference(
                    &model,
                    data,
                    &device,
                    &cfg.energy.repeat(),
                    || Ok::<_, Error>(tracker.start("reference")?),
                    |w| Ok(tracker.stop(w)?),
                )?;
                rec.pass_j() / data.valid.len().max(1) as f64
            }
        };
        c.reference.insert(Quantity::InferenceJPerImage, value);
    }
    Ok(c)
}

/// The predicate the optimizer proposes under: a configuration whose known-ahead quantities
/// (from its layer table) meet every such constraint. One the table cannot be built for is let
/// through: its trial fails with the reason.
fn known_constraint(
    cfg: &RunConfig,
    data: &LoadedData,
    constraints: &Constraints,
) -> Option<KnownConstraint> {
    if !constraints.has_known_ahead() {
        return None;
    }
    let (base, dims, classes) = (cfg.train.clone(), data.dims(), data.num_classes());
    let energies = cfg.energy.opcount.clone();
    let constraints = constraints.clone();
    Some(std::sync::Arc::new(move |config: &crate::space::Config| {
        let values = trial_config(&base, config)
            .ok()
            .and_then(|t| t.net_spec(dims, classes).ok())
            .and_then(|spec| design_values(&spec, &energies).ok());
        values.is_none_or(|v| constraints.known_violations(&v).is_empty())
    }))
}

/// Runs (or resumes) a search; returns its summary.
pub fn optimize(cfg: &RunConfig, opts: &OptimizeOptions) -> Result<Summary, Error> {
    let started = Instant::now();
    let dir = &opts.run_dir;
    let hash = meta_hash(cfg)?;
    let mut previous_reference = None;
    if opts.resume {
        let info = store::read_run_info(dir)?;
        previous_reference = Some(info.constraint_reference.clone());
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
    let workers = cfg.search.workers.max(1);
    let device: Option<DeviceChoice> = if is_dsnn {
        Some(cfg.device.parse()?)
    } else {
        None
    };
    let constraints = match (&data, device) {
        (Some(data), Some(device)) if !cfg.constraints.is_empty() => constraints_of(
            cfg,
            data,
            &default_config,
            previous_reference.as_ref(),
            &tracker,
            device,
        )?,
        _ => Constraints::default(),
    };
    let ctx = WorkerContext {
        cfg,
        data: data.as_ref(),
        tracker: &tracker,
        dir,
        config_path: &opts.config_path,
        multi: multi.clone(),
        workers,
        device,
        training_energy: TrainingEnergy::default(),
        constraints,
    };
    // The objective's names and sources, from a runner that evaluates nothing.
    let probe = ctx.runner(0, None, Box::new(crate::train::Quiet))?;
    let info = RunInfo {
        objectives: probe.names(),
        objective_sources: probe.sources(),
        default_config,
        meta_hash: hash,
        config_toml: toml::to_string(cfg).unwrap_or_default(),
        constraint_reference: ctx.constraints.reference.clone(),
    };
    drop(probe);
    store::write_run_info(dir, &info)?;
    let mut smbo = build_optimizer(cfg, space, info.objectives.len(), &opts.config_path)?;
    if let Some(data) = &data
        && let Some(known) = known_constraint(cfg, data, &ctx.constraints)
    {
        smbo = smbo.with_known_constraint(known);
    }

    // Replay what an earlier run finished: asks and tells in the order they happened.
    let mut lines = store::read_trials(dir)?;
    // The baseline trials were never asked or told: they are not replayed.
    let tells: Vec<TrialLine> = lines.iter().filter(|l| !l.baseline).cloned().collect();
    let mut asks = store::read_asks(dir)?;
    if asks.is_empty() {
        // A log written one trial at a time: trial k was asked after k tells.
        asks = tells
            .iter()
            .enumerate()
            .map(|(told, l)| AskLine { id: l.id, told })
            .collect();
    }
    let mut asked: BTreeMap<u64, Trial> = BTreeMap::new();
    let (mut told, mut next_ask) = (0usize, 0usize);
    let (mut energy_kwh, mut emissions_kg) = (0.0f64, 0.0f64);
    let mismatch = |what: String| {
        run_err(
            dir,
            format!("{what}; the log belongs to another configuration or version"),
        )
    };
    loop {
        if let Some(a) = asks.get(next_ask).filter(|a| a.told <= told) {
            match smbo.ask() {
                Ask::Trial(t) if t.id == a.id => {
                    asked.insert(t.id, t);
                    next_ask += 1;
                }
                _ => {
                    return Err(mismatch(format!(
                        "asks.jsonl: trial {} is not what the optimizer asks on replay",
                        a.id
                    )));
                }
            }
        } else if let Some(line) = tells.get(told) {
            let Some(t) = asked.remove(&line.id) else {
                return Err(mismatch(format!(
                    "trials.jsonl: trial {} finished but was never asked",
                    line.id
                )));
            };
            if line.config != t.config || line.budget != t.budget {
                return Err(mismatch(format!(
                    "trial {} in trials.jsonl does not match what the optimizer asks on replay",
                    t.id
                )));
            }
            if let Some(r) = line.energy.iter().find(|r| r.phase == "train") {
                let (pk, pg) = line
                    .continued_from
                    .and_then(|p| lines.iter().find(|l| l.id == p))
                    .and_then(|l| l.energy.iter().find(|r| r.phase == "train"))
                    .map_or((0.0, 0.0), |r| (r.energy_kwh, r.emissions_kg));
                if let Ok(mut m) = ctx.training_energy.lock() {
                    m.insert(t.id, (r.energy_kwh + pk, r.emissions_kg + pg));
                }
            }
            for r in &line.energy {
                if r.cpu.source.to_string() != "opcount" {
                    energy_kwh += r.energy_kwh;
                    emissions_kg += r.emissions_kg;
                }
            }
            smbo.tell(t.id, outcome_of(line))
                .map_err(|e| run_err(dir, e.to_string()))?;
            told += 1;
        } else {
            break;
        }
    }
    if next_ask < asks.len() {
        return Err(mismatch(format!(
            "asks.jsonl has {} asks but only {next_ask} replay",
            asks.len()
        )));
    }
    // Trials that were running when the run stopped: evaluated again, first.
    let mut queue: VecDeque<Trial> = asked.into_values().collect();
    for line in lines.iter().filter(|l| l.baseline) {
        for r in &line.energy {
            if r.cpu.source.to_string() != "opcount" {
                energy_kwh += r.energy_kwh;
                emissions_kg += r.emissions_kg;
            }
        }
    }
    let max_budget = f64::from(cfg.fidelity.max_epochs);
    let mut baseline_sent = false;

    let mut log = TrialLog::open(dir)?;
    let mut ask_log = JsonlLog::open_asks(dir)?;
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
    let mut fatal: Option<Error> = None;
    let (done_tx, done_rx) = mpsc::channel::<Finished>();
    std::thread::scope(|s| -> Result<(), Error> {
        let mut jobs = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = mpsc::channel::<Trial>();
            jobs.push(tx);
            let done = done_tx.clone();
            let ctx = &ctx;
            s.spawn(move || run_worker(ctx, w, rx, done));
        }
        drop(done_tx);
        let mut idle: Vec<usize> = (0..workers).rev().collect();
        let mut running: BTreeMap<u64, String> = BTreeMap::new();
        let mut stopping = false;
        loop {
            while !stopping && !idle.is_empty() {
                if let Some(reason) = stop_reason(cfg, started, energy_kwh, emissions_kg) {
                    stop = reason;
                    stopping = true;
                    break;
                }
                let trial = match queue.pop_front() {
                    Some(t) => t,
                    None => match smbo.ask() {
                        Ask::Trial(t) => {
                            ask_log.append(&AskLine {
                                id: t.id,
                                told: lines.iter().filter(|l| !l.baseline).count(),
                            })?;
                            t
                        }
                        Ask::Wait => break,
                        Ask::Done => {
                            stopping = true;
                            break;
                        }
                    },
                };
                let label = format!(
                    "{} ({} ep{})",
                    trial.id,
                    trial.epochs(),
                    trial
                        .continues
                        .map(|p| format!(" from {p}"))
                        .unwrap_or_default()
                );
                let Some(w) = idle.pop() else { break };
                let id = trial.id;
                if jobs[w].send(trial).is_err() {
                    fatal.get_or_insert_with(|| run_err(dir, format!("worker {w} stopped")));
                    stopping = true;
                    break;
                }
                running.insert(id, label);
            }
            if let Some(bar) = &main_bar {
                let front = front_of(&lines);
                bar.set_message(format!(
                    "running {}  front {}  HV {:.3}  energy {:.2e} kWh",
                    running.values().cloned().collect::<Vec<_>>().join(", "),
                    front.len(),
                    normalised_hypervolume(&lines, &front),
                    energy_kwh
                ));
            }
            if running.is_empty() {
                // The search is done: train the default configuration at the largest budget
                // (continuing its saved state), unless the search already did.
                let baseline = (!baseline_sent
                    && fatal.is_none()
                    && stop == StopReason::TrialsDone
                    && lines.iter().any(TrialLine::measured))
                .then(|| baseline_trial(&lines, &info.default_config, max_budget, dir))
                .flatten();
                baseline_sent = true;
                match (baseline, idle.pop()) {
                    (Some(t), Some(w)) => {
                        running.insert(t.id, format!("{} (default, {} ep)", t.id, t.epochs()));
                        if jobs[w].send(t).is_err() {
                            break;
                        }
                        continue;
                    }
                    _ => break,
                }
            }
            let Ok(f) = done_rx.recv() else { break };
            idle.push(f.worker);
            running.remove(&f.trial.id);
            let Evaluation {
                outcome,
                metrics,
                energy,
                per_layer,
            } = match f.result {
                Ok(e) => e,
                Err(e) => {
                    // The run cannot go on (I/O, meters); finish what is running, then stop.
                    fatal.get_or_insert(e);
                    stopping = true;
                    continue;
                }
            };
            let outcome = match outcome {
                Outcome::Success { objectives } | Outcome::Infeasible { objectives, .. }
                    if objectives.iter().any(|v| !v.is_finite()) =>
                {
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
            let mut line = line_of(&f.trial, &outcome, metrics, energy, f.wall_s);
            line.per_layer = per_layer;
            log.append(&line)?;
            if let (Some(reason), Some(m)) = (&line.reason, &multi) {
                let _ = m.println(format!("trial {} failed: {reason}", f.trial.id));
            }
            let baseline = line.baseline;
            lines.push(line);
            if !baseline {
                smbo.tell(f.trial.id, outcome)
                    .map_err(|e| run_err(dir, e.to_string()))?;
            }
            write_front(dir, &info, &lines)?;
            if let Some(bar) = &main_bar {
                bar.set_position(lines.len() as u64);
            }
        }
        Ok(())
    })?;
    if let Some(e) = fatal {
        return Err(e);
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
        trials: lines.iter().filter(|l| !l.baseline).count(),
        baseline: lines.iter().rev().find(|l| l.baseline).map(|l| l.id),
        failed,
        infeasible: lines
            .iter()
            .filter(|l| l.status == TrialStatus::Infeasible)
            .count(),
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
        TrialStatus::Infeasible => Outcome::Infeasible {
            objectives: line.objectives.clone(),
            violated: line.violated.clone(),
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
    let (status, objectives, reason, violated) = match outcome {
        Outcome::Success { objectives } => {
            (TrialStatus::Success, objectives.clone(), None, Vec::new())
        }
        Outcome::Infeasible {
            objectives,
            violated,
        } => (
            TrialStatus::Infeasible,
            objectives.clone(),
            None,
            violated.clone(),
        ),
        Outcome::Failed { reason } => (
            TrialStatus::Failed,
            Vec::new(),
            Some(reason.clone()),
            Vec::new(),
        ),
    };
    TrialLine {
        id: trial.id,
        config: trial.config.clone(),
        budget: trial.budget,
        continued_from: trial.continues,
        status,
        reason,
        objectives,
        violated,
        per_layer: None,
        metrics,
        energy,
        wall_s,
        finished_unix_s: now_unix(),
        baseline: trial.id >= BASELINE_IDS,
    }
}
