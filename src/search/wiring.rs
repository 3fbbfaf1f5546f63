//! From a run configuration to the pieces of a search: its space, its optimizer, its objective
//! (a DSNN training, a user's command, a test problem) and its constraints.

use std::path::Path;

use crate::config::RunConfig;
use crate::constraint::{Constraints, Quantity, Values, design_values};
use crate::data::LoadedData;
use crate::device::DeviceChoice;
use crate::energy::EnergyTracker;
use crate::error::Error;
use crate::eval::command::CommandObjective;
use crate::eval::dsnn::{dsnn_space, measure_inference, trial_config};
use crate::eval::problems::Problem;
use crate::opt::{Budgets, KnownConstraint, Smbo, SmboSettings};
use crate::space::SearchSpace;

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
pub fn meta_hash(cfg: &RunConfig) -> Result<String, Error> {
    let mut c = cfg.clone();
    c.search.trials = 0;
    c.search.wall_time_s = None;
    c.search.energy_budget_kwh = None;
    c.search.emissions_budget_kg = None;
    c.search.workers = 1;
    Ok(fnv1a(&serde_json::to_string(&c)?))
}

pub(crate) fn run_err(path: &Path, message: impl Into<String>) -> Error {
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

pub fn build_optimizer(
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
    settings.strategy = cfg.search.strategy;
    settings.initial_design = cfg.search.initial_design;
    settings.random_fraction = cfg.search.random_fraction;
    settings.front_fraction = cfg.search.front_fraction;
    settings.model_data = cfg.search.model_data;
    Smbo::new(space, settings).map_err(|e| run_err(source, e.to_string()))
}

/// The built-in test problem `[objective] kind` names, if it names one.
pub fn problem_of(cfg: &RunConfig) -> Option<Problem> {
    cfg.objective.kind.problem()
}

pub fn command_objective(
    cfg: &RunConfig,
    source: &Path,
    checkpoints: &Path,
) -> Result<CommandObjective, Error> {
    let o = &cfg.objective;
    let built = match &o.shell {
        Some(line) => CommandObjective::shell(line, o.names.clone()),
        None => CommandObjective::new(o.command.clone(), o.names.clone()),
    };
    let mut c = built.map_err(|e| run_err(source, e.to_string()))?;
    if let Some(t) = o.timeout_s {
        c = c.with_timeout(std::time::Duration::from_secs_f64(t));
    }
    Ok(c.with_progress(checkpoints))
}

/// `[[constraints]]` with the default configuration's values for relative bounds: known-ahead
/// ones from its layer table; its inference energy per image measured once (repeated passes, on
/// its freshly built network: float emulation spends the same whatever the weights) before the
/// first trial, or taken from the run being resumed, so a resume judges as the run did.
pub fn constraints_of(
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
pub fn known_constraint(
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
