//! The run configuration file (TOML): which data, which DSNN, how long, where energy comes
//! from. Unknown keys and wrong types are errors that name the file, line and key;
//! `--set key=value` overrides any key from the command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::constraint::ConstraintSpec;
use crate::data::DataConfig;
use crate::energy::EnergyConfig;
use crate::opt::Schedule as FidelitySchedule;
use crate::space::ParamSpec;
#[cfg(feature = "dsnn")]
use crate::train::TrainConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--set {arg}: {expected}")]
    Set { arg: String, expected: String },
}

fn d_epochs() -> usize {
    1
}
fn d_device() -> String {
    "cpu".into()
}

/// `[search]`: how long and how the optimizer searches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Trials (configuration x budget evaluations) in total.
    #[serde(default = "d_trials")]
    pub trials: usize,
    /// Stop starting new trials after this many seconds.
    #[serde(default)]
    pub wall_time_s: Option<f64>,
    /// Stop once the trials' measured energy reaches this many kWh.
    #[serde(default)]
    pub energy_budget_kwh: Option<f64>,
    /// Stop once the trials' emissions reach this many kg CO2-eq.
    #[serde(default)]
    pub emissions_budget_kg: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// `parego` (random forest + EI on ParEGO scalarisations) or `random`.
    #[serde(default = "d_strategy")]
    pub strategy: crate::opt::Strategy,
    /// Initial design size including the default configuration; absent = SMAC's rule.
    #[serde(default)]
    pub initial_design: Option<usize>,
    /// Share of model-phase proposals drawn at random instead.
    #[serde(default = "d_random_fraction")]
    pub random_fraction: f64,
    /// Share of model-phase proposals that recombine Pareto-front configurations instead.
    #[serde(default = "d_front_fraction")]
    pub front_fraction: f64,
    /// Trials evaluated at once: on the CPU the cores are divided between them, on GPUs each
    /// takes its own device.
    #[serde(default = "d_workers")]
    pub workers: usize,
    /// Which finished trials train the cost model under multi-fidelity: `one-budget` or
    /// `all-budgets` (the budget as one more input of the forest).
    #[serde(default)]
    pub model_data: crate::opt::ModelData,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            trials: d_trials(),
            wall_time_s: None,
            energy_budget_kwh: None,
            emissions_budget_kg: None,
            seed: 0,
            strategy: d_strategy(),
            initial_design: None,
            random_fraction: d_random_fraction(),
            front_fraction: d_front_fraction(),
            workers: d_workers(),
            model_data: Default::default(),
        }
    }
}

fn d_workers() -> usize {
    1
}

fn d_trials() -> usize {
    30
}
fn d_strategy() -> crate::opt::Strategy {
    crate::opt::Strategy::ParEgo
}
fn d_random_fraction() -> f64 {
    0.05
}
fn d_front_fraction() -> f64 {
    0.45
}

/// `[fidelity]`: training epochs as the budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidelityConfig {
    #[serde(default = "d_min_epochs")]
    pub min_epochs: u32,
    #[serde(default = "d_max_epochs")]
    pub max_epochs: u32,
    #[serde(default = "d_eta")]
    pub eta: u32,
    /// `hyperband` or `successive_halving`.
    #[serde(default = "d_fidelity_schedule")]
    pub schedule: FidelitySchedule,
}

impl Default for FidelityConfig {
    fn default() -> Self {
        FidelityConfig {
            min_epochs: d_min_epochs(),
            max_epochs: d_max_epochs(),
            eta: d_eta(),
            schedule: d_fidelity_schedule(),
        }
    }
}

fn d_min_epochs() -> u32 {
    1
}
fn d_max_epochs() -> u32 {
    9
}
fn d_eta() -> u32 {
    3
}
fn d_fidelity_schedule() -> FidelitySchedule {
    FidelitySchedule::Hyperband
}

/// The loss objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossObjective {
    /// 1 - validation top-1 accuracy (the paper's).
    Error,
    /// Validation cross-entropy.
    CrossEntropy,
}

/// Which energy is the second objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyPhase {
    /// One inference pass over the validation split (the paper's 2025 setup).
    Inference,
    /// The trial's training (all its epochs, those of the state it continued included).
    Training,
    /// Training plus the inference pass.
    Both,
}

/// Where the energy objective comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyModel {
    /// The energy meter: NVML, RAPL, or the labelled estimate.
    Measured,
    /// The op-count model (deterministic, hardware-free); inference only.
    Opcount,
    /// Both, as two objectives (three in all): measured and op-count inference energy.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyUnit {
    Kwh,
    /// kg CO2-eq, from the `[energy]` intensity and PUE.
    KgCo2,
}

/// `[objective]`: what a trial runs. `dsnn` trains the configuration (the default);
/// `command` runs a user's program per trial (see `eval::command` for the protocol).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    #[serde(default = "d_objective_kind")]
    pub kind: ObjectiveKind,
    /// Program and arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A shell command line instead of `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Objective names the program prints (all minimised).
    #[serde(default = "d_objective_names")]
    pub names: Vec<String>,
    /// Seconds before a trial's process is killed and the trial fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            kind: d_objective_kind(),
            command: Vec::new(),
            shell: None,
            names: d_objective_names(),
            timeout_s: None,
        }
    }
}

/// What a trial runs: DSNN training, a user's command, or a built-in test problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    Dsnn,
    Command,
    Zdt1,
    Zdt2,
    Zdt3,
    Dtlz2,
}

impl ObjectiveKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectiveKind::Dsnn => "dsnn",
            ObjectiveKind::Command => "command",
            ObjectiveKind::Zdt1 => "zdt1",
            ObjectiveKind::Zdt2 => "zdt2",
            ObjectiveKind::Zdt3 => "zdt3",
            ObjectiveKind::Dtlz2 => "dtlz2",
        }
    }

    /// The built-in test problem, for those kinds.
    pub fn problem(self) -> Option<crate::eval::problems::Problem> {
        use crate::eval::problems::Problem;
        match self {
            ObjectiveKind::Zdt1 => Some(Problem::Zdt1),
            ObjectiveKind::Zdt2 => Some(Problem::Zdt2),
            ObjectiveKind::Zdt3 => Some(Problem::Zdt3),
            ObjectiveKind::Dtlz2 => Some(Problem::Dtlz2),
            ObjectiveKind::Dsnn | ObjectiveKind::Command => None,
        }
    }
}

fn d_objective_kind() -> ObjectiveKind {
    ObjectiveKind::Dsnn
}
fn d_objective_names() -> Vec<String> {
    vec!["loss".into(), "energy".into()]
}

/// `[objectives]`: what is minimised.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectivesConfig {
    #[serde(default = "d_loss")]
    pub loss: LossObjective,
    #[serde(default = "d_phase")]
    pub energy: EnergyPhase,
    #[serde(default = "d_model")]
    pub energy_model: EnergyModel,
    #[serde(default = "d_unit")]
    pub unit: EnergyUnit,
}

impl Default for ObjectivesConfig {
    fn default() -> Self {
        ObjectivesConfig {
            loss: d_loss(),
            energy: d_phase(),
            energy_model: d_model(),
            unit: d_unit(),
        }
    }
}

fn d_loss() -> LossObjective {
    LossObjective::Error
}
fn d_phase() -> EnergyPhase {
    EnergyPhase::Inference
}
fn d_model() -> EnergyModel {
    EnergyModel::Measured
}
fn d_unit() -> EnergyUnit {
    EnergyUnit::Kwh
}

/// `[data]`, `[train]` (the trial's hyperparameters), `[energy]`, and run settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Free-form name, used for run directories and records.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub data: DataConfig,
    #[cfg(feature = "dsnn")]
    #[serde(default)]
    pub train: TrainConfig,
    /// Without burn the training section is kept as plain TOML.
    #[cfg(not(feature = "dsnn"))]
    #[serde(default)]
    pub train: Option<toml::Table>,
    #[serde(default)]
    pub energy: EnergyConfig,
    /// Epochs for `dsnn-hpo train`.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub fidelity: FidelityConfig,
    #[serde(default)]
    pub objectives: ObjectivesConfig,
    #[serde(default)]
    pub objective: ObjectiveConfig,
    /// The search space (`[[space]]` entries); empty = the DSNN space of the paper.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space: Vec<ParamSpec>,
    /// Bounds on the designs (`[[constraints]]`), see [`crate::constraint`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<ConstraintSpec>,
    /// cpu, wgpu, wgpu:N, vulkan, vulkan:N or cuda:N.
    #[serde(default = "d_device")]
    pub device: String,
    /// `[study]`: where the study is stored and how its workers' leases behave.
    #[serde(default, skip_serializing_if = "StudyConfig::is_default")]
    pub study: StudyConfig,
}

/// `[study]`: the study store. Without `storage` the study lives in a SQLite file inside the run
/// directory (nothing to install); `postgresql://...` (or `journal://` on a shared folder) shares
/// it between machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// `sqlite:///path/study.db`, `postgresql://user@host/db` or `journal:///shared/folder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The study's name inside a store that holds many (default: the config's `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds between a worker's heartbeats.
    #[serde(default = "d_heartbeat_s")]
    pub heartbeat_s: f64,
    /// Seconds of silence after which a running trial is taken from its worker and queued again.
    #[serde(default = "d_grace_s")]
    pub grace_s: f64,
    /// How often a trial whose worker went silent is tried again before it counts as failed.
    #[serde(default = "d_max_retries")]
    pub max_retries: u32,
}

fn d_heartbeat_s() -> f64 {
    30.0
}
fn d_grace_s() -> f64 {
    300.0
}
fn d_max_retries() -> u32 {
    2
}

impl Default for StudyConfig {
    fn default() -> Self {
        StudyConfig {
            storage: None,
            name: None,
            heartbeat_s: d_heartbeat_s(),
            grace_s: d_grace_s(),
            max_retries: d_max_retries(),
        }
    }
}

impl StudyConfig {
    fn is_default(&self) -> bool {
        *self == StudyConfig::default()
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.heartbeat_s.is_finite() && self.heartbeat_s > 0.0) {
            return Err(format!(
                "[study] heartbeat_s = {}: expected a positive number of seconds",
                self.heartbeat_s
            ));
        }
        if !(self.grace_s.is_finite() && self.grace_s >= 2.0 * self.heartbeat_s) {
            return Err(format!(
                "[study] grace_s = {}: expected at least twice heartbeat_s ({}), or a busy worker's trial is taken from it",
                self.grace_s, self.heartbeat_s
            ));
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.len() > 200)
        {
            return Err(format!(
                "[study] name = \"{name}\": expected 1 to 200 characters"
            ));
        }
        Ok(())
    }
}

impl RunConfig {
    /// Reads `path` and applies `sets` (each `key=value`, dotted keys for sections:
    /// `train.lr=0.05`, `data.path=/data/cifar`, `epochs=3`).
    pub fn load(path: &Path, sets: &[String]) -> Result<RunConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_with_sets(&text, path, sets)
    }

    pub fn from_str_with_sets(
        text: &str,
        path: &Path,
        sets: &[String],
    ) -> Result<RunConfig, ConfigFileError> {
        let parse_err = |e: toml::de::Error| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        // Parsed once as written, so that mistakes in the file are reported with their line.
        let cfg: RunConfig = toml::from_str(text).map_err(parse_err)?;
        if sets.is_empty() {
            return cfg.validated(path);
        }
        let mut doc: toml::Table = toml::from_str(text).map_err(parse_err)?;
        for arg in sets {
            apply_set(&mut doc, arg)?;
        }
        let cfg: RunConfig = RunConfig::deserialize(toml::Value::Table(doc)).map_err(|e| {
            ConfigFileError::Parse {
                path: path.to_path_buf(),
                message: format!("after --set: {}", e.to_string().trim_end()),
            }
        })?;
        cfg.validated(path)
    }

    fn validated(self, path: &Path) -> Result<RunConfig, ConfigFileError> {
        let fail = |message: String| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message,
        };
        self.data.validate().map_err(|e| fail(e.to_string()))?;
        self.energy.validate().map_err(|e| fail(e.to_string()))?;
        self.study.validate().map_err(fail)?;
        #[cfg(feature = "dsnn")]
        self.train
            .validate()
            .map_err(|e| fail(format!("[train] {e}")))?;
        if self.epochs == 0 {
            return Err(fail("epochs = 0: expected a positive integer".into()));
        }
        let f = &self.fidelity;
        if f.eta < 2 {
            return Err(fail(format!(
                "[fidelity] eta = {}: expected an integer >= 2 (the factor between budgets)",
                f.eta
            )));
        }
        if f.min_epochs == 0 || f.max_epochs < f.min_epochs {
            return Err(fail(format!(
                "[fidelity] min_epochs = {}, max_epochs = {}: expected 1 <= min_epochs <= max_epochs",
                f.min_epochs, f.max_epochs
            )));
        }
        let s = &self.search;
        if s.trials == 0 || s.trials >= 1_000_000 {
            return Err(fail(format!(
                "[search] trials = {}: expected a positive integer below 1000000",
                s.trials
            )));
        }
        if s.workers == 0 {
            return Err(fail(
                "[search] workers = 0: expected a positive integer (trials evaluated at once)"
                    .into(),
            ));
        }
        if !(0.0..=1.0).contains(&s.random_fraction) {
            return Err(fail(format!(
                "[search] random_fraction = {}: expected a number in [0, 1]",
                s.random_fraction
            )));
        }
        if !(0.0..=1.0).contains(&s.front_fraction) || s.random_fraction + s.front_fraction > 1.0 {
            return Err(fail(format!(
                "[search] front_fraction = {}: expected a number in [0, 1 - random_fraction]",
                s.front_fraction
            )));
        }
        for (key, v) in [
            ("wall_time_s", s.wall_time_s),
            ("energy_budget_kwh", s.energy_budget_kwh),
            ("emissions_budget_kg", s.emissions_budget_kg),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(fail(format!(
                    "[search] {key} = {v}: expected a positive number"
                )));
            }
        }
        let o = &self.objective;
        if o.kind == ObjectiveKind::Command {
            {
                if o.command.is_empty() == o.shell.is_none() {
                    return Err(fail(
                        "[objective] kind = \"command\" needs exactly one of command = [program, args...] or shell = \"command line\"".into(),
                    ));
                }
                if o.names.is_empty() {
                    return Err(fail("[objective] names is empty: expected the objective names the command prints".into()));
                }
                if self.space.is_empty() {
                    return Err(fail("[objective] kind = \"command\" needs a [[space]]: the built-in space is for DSNN training".into()));
                }
                if let Some(t) = o.timeout_s.filter(|t| !(t.is_finite() && *t > 0.0)) {
                    return Err(fail(format!(
                        "[objective] timeout_s = {t}: expected a positive number"
                    )));
                }
            }
        }
        match self.objectives.energy_model {
            EnergyModel::Opcount | EnergyModel::Both
                if self.objectives.energy != EnergyPhase::Inference =>
            {
                let model = if self.objectives.energy_model == EnergyModel::Both {
                    "both"
                } else {
                    "opcount"
                };
                return Err(fail(format!(
                    "[objectives] energy_model = \"{model}\" with energy = \"{}\": the op-count model has no training side; set energy = \"inference\"",
                    match self.objectives.energy {
                        EnergyPhase::Training => "training",
                        _ => "both",
                    }
                )));
            }
            _ => {}
        }
        for (i, c) in self.constraints.iter().enumerate() {
            c.validate(i).map_err(fail)?;
        }
        if !self.constraints.is_empty() && o.kind != ObjectiveKind::Dsnn {
            return Err(fail(format!(
                "[[constraints]] apply to DSNN designs: [objective] kind = \"{}\" has no parameters, weight memory or inference energy to bound",
                o.kind.name()
            )));
        }
        Ok(self)
    }
}

/// Sets a dotted key in a TOML table. The value is read as TOML (numbers, booleans, quoted
/// strings, arrays); anything else is taken as a plain string, so `data.path=/x/y` works.
pub fn apply_set(doc: &mut toml::Table, arg: &str) -> Result<(), ConfigFileError> {
    let fail = |expected: &str| ConfigFileError::Set {
        arg: arg.to_string(),
        expected: expected.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| fail("expected key=value, e.g. train.lr=0.05"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(fail("expected a key such as epochs or train.lr"));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let (last, sections) = parts
        .split_last()
        .ok_or_else(|| fail("expected a key such as epochs or train.lr"))?;
    let mut table = doc;
    for section in sections {
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(fail(&format!("'{section}' is a value, not a section"))),
        };
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_overrides_nested_keys_and_types() {
        let mut doc: toml::Table = toml::from_str("epochs = 1\n[train]\nlr = 0.1\n").unwrap();
        apply_set(&mut doc, "train.lr=0.05").unwrap();
        apply_set(&mut doc, "epochs=3").unwrap();
        apply_set(&mut doc, "data.path=/tmp/x y").unwrap();
        assert_eq!(doc["train"]["lr"].as_float(), Some(0.05));
        assert_eq!(doc["epochs"].as_integer(), Some(3));
        assert_eq!(doc["data"]["path"].as_str(), Some("/tmp/x y"));
        assert!(apply_set(&mut doc, "epochs").is_err());
        assert!(apply_set(&mut doc, "epochs.x=1").is_err());
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let e = RunConfig::from_str_with_sets("epochs = 2\nepoch = 3\n", Path::new("a.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.toml") && e.contains("line 2") && e.contains("epoch"),
            "{e}"
        );
        let e = RunConfig::from_str_with_sets("epochs = \"two\"\n", Path::new("b.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml") && e.contains("line 1"), "{e}");
        let e = RunConfig::from_str_with_sets("", Path::new("c.toml"), &["epochs=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs = 0"), "{e}");
    }

    #[cfg(feature = "dsnn")]
    #[test]
    fn train_optimizer_and_shift_regularizer_values_are_checked() {
        let parse = |text: &str| RunConfig::from_str_with_sets(text, Path::new("t.toml"), &[]);
        let c = parse("[train]\noptimizer = \"ranger\"\nshift_regularizer = false\n").unwrap();
        assert_eq!(
            c.train.optimizer,
            crate::train::optim::OptimizerKind::Ranger
        );
        assert!(!c.train.shift_regularizer);
        let c = parse("[train]\noptimizer = \"adadelta\"\n").unwrap();
        assert_eq!(
            c.train.optimizer,
            crate::train::optim::OptimizerKind::Adadelta
        );
        assert!(c.train.shift_regularizer, "on by default");
        let e = parse("[train]\nshift_regularizer = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shift_regularizer") && e.contains("line 2"),
            "{e}"
        );
        let e = parse("[train]\noptimizer = \"lamb\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("optimizer") && e.contains("ranger"), "{e}");
    }
}
