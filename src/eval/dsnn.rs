//! The DSNN objective: a suggested configuration and a budget in epochs become a trained
//! network, its validation loss and its energy. This is where the optimizer meets burn.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::Device;

use crate::config::{EnergyModel, EnergyPhase, EnergyUnit, LossObjective, ObjectivesConfig};
use crate::constraint::{Constraints, Quantity, design_values};
use crate::data::LoadedData;
use crate::energy::layers::layer_rows;
use crate::energy::repeat::measure_repeated;
use crate::energy::{EnergyRecord, EnergyTracker, RepeatSettings, Window, opcount};
use crate::eval::{EvalError, Evaluation, Evaluator, Metrics};
use crate::opt::{Outcome, Trial};
use crate::search::workers::{CpuShare, ShareMark};
use crate::space::{Config, ParamSpec, SearchSpace, SpaceError};
use crate::store::progress;
use crate::train::{
    RunOptions, TrainConfig, TrainObserver, TrainStatus, evaluate, profile_layers, train_network,
};

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error("search space parameter '{name}' is not a training setting: {message}")]
    UnknownParameter { name: String, message: String },
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Energy(#[from] crate::energy::EnergyError),
    #[error(transparent)]
    Config(#[from] crate::train::config::ConfigError),
}

/// The paper's DSNN search space (2025 scripts: its seven optimizers, plus AdamW), with batch
/// size added; `weight_layers` bounds `shift_depth`. Defaults come from `base` (the
/// run's `[train]` section, itself defaulting to the paper's default DSNN), clamped into range.
pub fn dsnn_space(weight_layers: usize, base: &TrainConfig) -> Result<SearchSpace, SpaceError> {
    use crate::space::Value;
    let layers = weight_layers.max(1) as i64;
    let int = |v: u64, lo: i64, hi: i64| (v.min(i64::MAX as u64) as i64).clamp(lo, hi);
    let specs = vec![
        ParamSpec::categorical(
            "optimizer",
            &[
                "sgd", "adam", "adamw", "radam", "adagrad", "rmsprop", "adadelta", "ranger",
            ],
            base.optimizer.name(),
        ),
        ParamSpec::float("lr", 0.001, 0.2, base.lr.clamp(0.001, 0.2)),
        ParamSpec::float("momentum", 0.0, 0.9, base.momentum.clamp(0.0, 0.9)).active_if(
            "optimizer",
            &[Value::Str("sgd".into()), Value::Str("rmsprop".into())],
        ),
        ParamSpec::float(
            "weight_decay",
            1e-6,
            1e-2,
            base.weight_decay.clamp(1e-6, 1e-2),
        )
        .log(),
        ParamSpec::int("batch_size", 32, 256, int(base.batch_size as u64, 32, 256)).log(),
        ParamSpec::int("weight_bits", 2, 5, int(u64::from(base.weight_bits), 2, 5)),
        ParamSpec::int(
            "activation_integer_bits",
            4,
            32,
            int(u64::from(base.activation_integer_bits), 4, 32),
        ),
        ParamSpec::int(
            "activation_fraction_bits",
            4,
            32,
            int(u64::from(base.activation_fraction_bits), 4, 32),
        ),
        ParamSpec::int(
            "shift_depth",
            1,
            layers,
            int(base.shift_depth as u64, 1, layers),
        ),
        ParamSpec::categorical("shift_type", &["q", "ps"], &base.shift_type.to_string()),
        ParamSpec::categorical(
            "rounding",
            &["deterministic", "stochastic"],
            &base.rounding.to_string(),
        ),
    ];
    SearchSpace::new(specs, Some("the built-in DSNN space"))
}

/// `base` with the suggested values set: the suggestion's names are `TrainConfig` fields.
pub fn trial_config(base: &TrainConfig, config: &Config) -> Result<TrainConfig, TrialError> {
    let mut value = serde_json::to_value(base).map_err(|e| TrialError::UnknownParameter {
        name: "(base)".into(),
        message: e.to_string(),
    })?;
    if let serde_json::Value::Object(map) = &mut value {
        for (name, v) in config.iter() {
            let json = serde_json::to_value(v).map_err(|e| TrialError::UnknownParameter {
                name: name.into(),
                message: e.to_string(),
            })?;
            map.insert(name.to_string(), json);
        }
    }
    serde_json::from_value(value).map_err(|e| TrialError::UnknownParameter {
        name: config.iter().map(|(n, _)| n).collect::<Vec<_>>().join(", "),
        message: e.to_string(),
    })
}

/// The inference energy of `model`: passes over the validation split, each in a window that
/// `start` opens and `stop` closes into a record, repeated as `repeat` says (see
/// [`crate::energy::repeat`]).
pub fn measure_inference<W, E: From<crate::train::TrainError>>(
    model: &crate::model::Network,
    data: &LoadedData,
    device: &Device,
    repeat: &RepeatSettings,
    start: impl Fn() -> Result<W, E>,
    stop: impl Fn(W) -> Result<EnergyRecord, E>,
) -> Result<EnergyRecord, E> {
    measure_repeated(repeat, || {
        let w = start()?;
        evaluate(model, &data.valid, data, 256, device)?;
        stop(w)
    })
}

fn start_window(
    tracker: &EnergyTracker,
    share: Option<&CpuShare>,
    phase: &str,
) -> Result<(Window, Option<ShareMark>), TrialError> {
    let mark = share.map(CpuShare::mark).transpose()?;
    Ok((tracker.start(phase)?, mark))
}

fn stop_window(
    tracker: &EnergyTracker,
    share: Option<&CpuShare>,
    (w, mark): (Window, Option<ShareMark>),
) -> Result<EnergyRecord, TrialError> {
    let rec = tracker.stop(w)?;
    Ok(match (share, mark) {
        (Some(share), Some(mark)) => share.attribute(rec, &mark)?,
        _ => rec,
    })
}

/// The file of a progress generation that holds the trial's training energy up to it.
const SPENT: &str = "energy.json";

/// Training energy (kWh, kg) recorded with a progress generation; `None` when unreadable, and
/// then the generation is not continued (its energy would be lost from the objective).
fn read_spent(dir: &Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(dir.join(SPENT)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let kwh = v.get("train_kwh")?.as_f64()?;
    let kg = v.get("train_kg")?.as_f64()?;
    (kwh.is_finite() && kg.is_finite()).then_some((kwh, kg))
}

/// The trial's observer, plus one training energy window per progress generation: each
/// generation then carries the training energy spent up to it, which a later attempt continuing
/// it adds to its own (the windows of one attempt add up to its whole training).
struct ChainedWindows<'o, 'a> {
    inner: &'o mut (dyn TrainObserver + 'a),
    tracker: &'o EnergyTracker,
    share: Option<&'o CpuShare>,
    window: Option<(Window, Option<ShareMark>)>,
    records: Vec<EnergyRecord>,
    /// Spent before this attempt (kWh, kg).
    spent: (f64, f64),
}

impl TrainObserver for ChainedWindows<'_, '_> {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        self.inner.epoch_start(epoch, epochs, batches);
    }

    fn batch_end(&mut self, done: usize, loss: f64, images_per_s: f64) {
        self.inner.batch_end(done, loss, images_per_s);
    }

    fn epoch_end(&mut self, epoch: usize, train_loss: f64, valid_accuracy: Option<f64>) {
        self.inner.epoch_end(epoch, train_loss, valid_accuracy);
    }

    fn progress_saved(&mut self, epochs_done: usize, dir: &Path) -> std::io::Result<()> {
        let other = |e: TrialError| std::io::Error::other(e.to_string());
        if let Some(w) = self.window.take() {
            let rec = stop_window(self.tracker, self.share, w).map_err(other)?;
            self.records.push(rec);
        }
        self.window = Some(start_window(self.tracker, self.share, "train").map_err(other)?);
        let kwh = self.spent.0 + self.records.iter().map(|r| r.energy_kwh).sum::<f64>();
        let kg = self.spent.1 + self.records.iter().map(|r| r.emissions_kg).sum::<f64>();
        let json = serde_json::json!({
            "epochs": epochs_done,
            "train_kwh": kwh,
            "train_kg": kg,
        });
        std::fs::write(dir.join(SPENT), json.to_string())?;
        self.inner.progress_saved(epochs_done, dir)
    }
}

/// Trains and measures DSNN trials.
pub struct DsnnObjective<'a> {
    pub base: TrainConfig,
    pub data: &'a LoadedData,
    pub device: Device,
    pub tracker: &'a EnergyTracker,
    pub objectives: ObjectivesConfig,
    /// The largest budget: every trial's schedule spans it, so continuing is exact.
    pub max_epochs: usize,
    /// Where trials save state for continuation (`<dir>/<trial id>`).
    pub checkpoints: PathBuf,
    pub observer: Box<dyn TrainObserver + 'a>,
    /// Per-operation energies of the op-count model.
    pub opcount: crate::energy::OpEnergies,
    /// Training energy (kWh, kg) of each trial so far, counting the states it continued from;
    /// shared between workers, since a promoted trial may run on another worker.
    training_energy: TrainingEnergy,
    /// Set when other workers share the machine: windows are attributed by CPU time.
    pub share: Option<CpuShare>,
    /// How the inference pass is repeated until its mean is known well enough.
    pub repeat: RepeatSettings,
    /// Profile each trial's inference pass per layer (`[energy] per_layer`).
    pub per_layer: bool,
    /// `[[constraints]]`, with the default configuration's values for relative bounds.
    pub constraints: Constraints,
}

/// Training energy (kWh, kg CO2-eq) per trial id.
pub type TrainingEnergy = Arc<Mutex<HashMap<u64, (f64, f64)>>>;

impl<'a> DsnnObjective<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base: TrainConfig,
        data: &'a LoadedData,
        device: Device,
        tracker: &'a EnergyTracker,
        objectives: ObjectivesConfig,
        max_epochs: usize,
        checkpoints: PathBuf,
        observer: Box<dyn TrainObserver + 'a>,
        opcount: crate::energy::OpEnergies,
    ) -> Self {
        Self {
            base,
            data,
            device,
            tracker,
            objectives,
            max_epochs,
            checkpoints,
            observer,
            opcount,
            training_energy: TrainingEnergy::default(),
            share: None,
            repeat: RepeatSettings::once(),
            per_layer: false,
            constraints: Constraints::default(),
        }
    }

    /// Shares the per-trial training energy with other workers' objectives.
    pub fn with_training_energy(mut self, shared: TrainingEnergy) -> Self {
        self.training_energy = shared;
        self
    }

    fn start(&self, phase: &str) -> Result<(Window, Option<ShareMark>), TrialError> {
        start_window(self.tracker, self.share.as_ref(), phase)
    }

    fn stop(&self, w: (Window, Option<ShareMark>)) -> Result<EnergyRecord, TrialError> {
        stop_window(self.tracker, self.share.as_ref(), w)
    }

    fn names(&self) -> Vec<String> {
        let loss = match self.objectives.loss {
            LossObjective::Error => "loss",
            LossObjective::CrossEntropy => "cross_entropy",
        };
        let unit = match self.objectives.unit {
            EnergyUnit::Kwh => "kwh",
            EnergyUnit::KgCo2 => "kg_co2",
        };
        let phase = match self.objectives.energy {
            EnergyPhase::Inference => "inference",
            EnergyPhase::Training => "training",
            EnergyPhase::Both => "energy",
        };
        let mut names = vec![loss.to_string(), format!("{phase}_{unit}")];
        if self.objectives.energy_model == EnergyModel::Both {
            names.push(format!("opcount_inference_{unit}"));
        }
        names
    }

    fn sources(&self) -> Vec<String> {
        let loss = match self.objectives.loss {
            LossObjective::Error => "1 - validation top-1 accuracy",
            LossObjective::CrossEntropy => "validation cross-entropy",
        };
        let what = match self.objectives.energy {
            EnergyPhase::Inference => "one inference pass over the validation split",
            EnergyPhase::Training => "the trial's training, continued-from epochs included",
            EnergyPhase::Both => "training plus one validation inference pass",
        };
        let measured = "measured by the energy meter, mean of repeated passes with its 95% CI (source per component in each record)";
        let op = "op-count model (source opcount)";
        match self.objectives.energy_model {
            EnergyModel::Measured => vec![loss.to_string(), format!("{what}, {measured}")],
            EnergyModel::Opcount => vec![loss.to_string(), format!("{what}, {op}")],
            EnergyModel::Both => vec![
                loss.to_string(),
                format!("{what}, {measured}"),
                format!("{what}, {op}"),
            ],
        }
    }

    /// Remembers the training energy of trials finished before a resume.
    pub fn restore_training_energy(&mut self, id: u64, kwh: f64, kg: f64) {
        if let Ok(mut map) = self.training_energy.lock() {
            map.insert(id, (kwh, kg));
        }
    }

    fn in_unit(&self, kwh: f64, kg: f64) -> f64 {
        match self.objectives.unit {
            EnergyUnit::Kwh => kwh,
            EnergyUnit::KgCo2 => kg,
        }
    }

    /// Trains and measures one trial; `Err` only for what should stop the run (I/O, meters).
    pub fn run_trial(&mut self, trial: &Trial) -> Result<Evaluation, TrialError> {
        let mut cfg = trial_config(&self.base, &trial.config)?;
        cfg.schedule_epochs = Some(self.max_epochs);
        cfg.validate()?;
        let epochs = trial.epochs().max(1) as usize;
        // A progress generation of this very trial (an earlier attempt crashed, was killed or
        // preempted) goes further than the state it continues: training resumes there, and the
        // training energy counts what that attempt spent.
        let progress_dir = progress::dir(&self.checkpoints, trial.id);
        let own = progress::newest(&progress_dir)
            .filter(|(n, p)| (*n as usize) < epochs && p.join("state.json").exists())
            .and_then(|(_, p)| Some((read_spent(&p)?, p)));
        let (resume, (prev_kwh, prev_kg)) = match own {
            Some((spent, p)) => (Some(p), spent),
            None => {
                let parent = trial
                    .continues
                    .map(|p| self.checkpoints.join(p.to_string()))
                    .filter(|d| d.join("state.json").exists());
                // The state this trial continues already paid for its epochs.
                let spent = match (&parent, trial.continues) {
                    (Some(_), Some(p)) => self
                        .training_energy
                        .lock()
                        .ok()
                        .and_then(|m| m.get(&p).copied())
                        .unwrap_or((0.0, 0.0)),
                    _ => (0.0, 0.0),
                };
                (parent, spent)
            }
        };
        let save = (epochs < self.max_epochs).then(|| self.checkpoints.join(trial.id.to_string()));
        let opts = RunOptions {
            resume_from: resume.as_deref(),
            save_to: save.as_deref(),
            progress_to: Some(&progress_dir),
            evaluate_test: false,
        };
        let mut chain = ChainedWindows {
            inner: self.observer.as_mut(),
            tracker: self.tracker,
            share: self.share.as_ref(),
            window: Some(start_window(self.tracker, self.share.as_ref(), "train")?),
            records: Vec::new(),
            spent: (prev_kwh, prev_kg),
        };
        let result = train_network(&cfg, self.data, &self.device, epochs, &opts, &mut chain);
        let window = chain.window.take();
        let mut train_records = std::mem::take(&mut chain.records);
        if let Some(w) = window {
            train_records.push(stop_window(self.tracker, self.share.as_ref(), w)?);
        }
        let (report, model) = match result {
            Ok(r) => r,
            // A configuration that cannot train (e.g. a network too deep for the input) is a
            // failed trial; the search goes on.
            Err(e) => {
                return Ok(Evaluation {
                    outcome: Outcome::Failed {
                        reason: e.to_string(),
                    },
                    metrics: None,
                    energy: train_records,
                    per_layer: None,
                });
            }
        };
        let train_kwh = prev_kwh + train_records.iter().map(|r| r.energy_kwh).sum::<f64>();
        let train_kg = prev_kg + train_records.iter().map(|r| r.emissions_kg).sum::<f64>();
        if let Ok(mut map) = self.training_energy.lock() {
            map.insert(trial.id, (train_kwh, train_kg));
        }
        let mut energy = train_records;
        let metrics = Metrics {
            valid_accuracy: report.valid_accuracy,
            valid_loss: report.valid_loss,
            train_loss: report.train_loss,
            epochs_trained: report.epochs,
            start_epoch: report.start_epoch,
            images_per_s: report.images_per_s,
            ..Metrics::default()
        };
        let model = match (report.status, model) {
            (TrainStatus::Completed, Some(m)) => m,
            _ => {
                return Ok(Evaluation {
                    outcome: Outcome::Failed {
                        reason: report.reason.unwrap_or_else(|| "training diverged".into()),
                    },
                    metrics: Some(metrics),
                    energy,
                    per_layer: None,
                });
            }
        };
        let images = self.data.valid.len() as u64;
        let spec = cfg.net_spec(self.data.dims(), self.data.num_classes())?;
        // Both views of inference energy, whichever is optimized, so the report can show and
        // compare them: the meter (repeated passes) and the op-count model.
        let measured = measure_inference(
            &model,
            self.data,
            &self.device,
            &self.repeat,
            || self.start("inference"),
            |w| self.stop(w),
        )?;
        let op = opcount::pass_energy(&spec.layer_counts(), images, &self.opcount)?;
        let op_rec = op.to_record("inference", self.tracker.carbon());
        let (inf_kwh, inf_kg) = (measured.pass_kwh(), measured.pass_kg());
        let (op_kwh, op_kg) = (op_rec.energy_kwh, op_rec.emissions_kg);
        let per_image = measured.pass_j() / images.max(1) as f64;
        energy.push(measured);
        energy.push(op_rec);
        let per_layer = if self.per_layer {
            // Its own window, so the profiled pass counts in the trial's energy too.
            let w = self.start("profile")?;
            let (layer_s, other_s) = profile_layers(
                &model,
                spec.layers.len(),
                &self.data.valid,
                self.data,
                256,
                &self.device,
            )?;
            energy.push(self.stop(w)?);
            Some(layer_rows(&spec, &op, &layer_s, other_s, per_image))
        } else {
            None
        };
        let mut values = design_values(&spec, &self.opcount)?;
        values.insert(Quantity::InferenceJPerImage, per_image);
        values.insert(Quantity::Accuracy, report.valid_accuracy);
        let metrics = Metrics {
            inference_j_per_image: Some(per_image),
            opcount_j_per_image: Some(op.per_image_j),
            params: Some(spec.totals().params),
            weight_memory_bits: Some(spec.weight_memory_bits()),
            ..metrics
        };
        let loss = match self.objectives.loss {
            LossObjective::Error => report.valid_error,
            LossObjective::CrossEntropy => report.valid_loss,
        };
        let objectives = match self.objectives.energy_model {
            EnergyModel::Measured => vec![
                loss,
                match self.objectives.energy {
                    EnergyPhase::Inference => self.in_unit(inf_kwh, inf_kg),
                    EnergyPhase::Training => self.in_unit(train_kwh, train_kg),
                    EnergyPhase::Both => self.in_unit(train_kwh + inf_kwh, train_kg + inf_kg),
                },
            ],
            EnergyModel::Opcount => vec![loss, self.in_unit(op_kwh, op_kg)],
            EnergyModel::Both => vec![
                loss,
                self.in_unit(inf_kwh, inf_kg),
                self.in_unit(op_kwh, op_kg),
            ],
        };
        let violated = self.constraints.violations(&values);
        let outcome = if violated.is_empty() {
            Outcome::Success { objectives }
        } else {
            Outcome::Infeasible {
                objectives,
                violated,
            }
        };
        // The parent's state is not needed once this trial has continued it.
        if let (Some(p), Some(_)) = (trial.continues, &resume) {
            let _ = std::fs::remove_dir_all(self.checkpoints.join(p.to_string()));
        }
        Ok(Evaluation {
            outcome,
            metrics: Some(metrics),
            energy,
            per_layer,
        })
    }
}

impl Evaluator for DsnnObjective<'_> {
    fn objective_names(&self) -> Vec<String> {
        self.names()
    }

    fn objective_sources(&self) -> Vec<String> {
        self.sources()
    }

    fn evaluate(&mut self, trial: &Trial) -> Result<Outcome, EvalError> {
        self.evaluate_fully(trial).map(|e| e.outcome)
    }

    fn evaluate_fully(&mut self, trial: &Trial) -> Result<Evaluation, EvalError> {
        self.run_trial(trial)
            .map_err(|e| EvalError::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Backbone;

    #[test]
    fn the_shift_depth_bound_is_the_networks_weight_layer_count() {
        // As the run wires it (search/wiring.rs): the table of the configured model.
        for (model, layers) in [
            (Backbone::Resnet20, 20.0),
            (Backbone::Mobilenetv2, 58.0),
            (Backbone::EfficientnetB0, 84.0),
            (Backbone::Efficientnetv2B0, 170.0),
        ] {
            let base = TrainConfig {
                model,
                ..TrainConfig::default()
            };
            let spec = base.net_spec([3, 32, 32], 10).unwrap();
            let space = dsnn_space(spec.totals().weight_layers, &base).unwrap();
            let depth = space
                .specs()
                .iter()
                .find(|p| p.name == "shift_depth")
                .unwrap();
            assert_eq!(
                (depth.low, depth.high),
                (Some(1.0), Some(layers)),
                "{model}"
            );
        }
    }
}
