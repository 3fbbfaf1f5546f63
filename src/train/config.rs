//! The hyperparameters of one DSNN trial, with the paper's default DSNN as defaults.

use serde::{Deserialize, Serialize};

use super::optim::{OptimizerKind, OptimizerSettings};
use crate::arch::{Activation, ArchError, Backbone, InputShape, NetSpec};
use crate::shift::{Rounding, SettingsError, ShiftKind, ShiftSettings};

/// Learning-rate schedule over the training horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// lr * (1 + cos(pi * step / total)) / 2, per step.
    Cosine,
}

impl Schedule {
    pub fn lr(self, base: f64, step: usize, total: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let frac = if total == 0 {
                    0.0
                } else {
                    (step as f64 / total as f64).min(1.0)
                };
                base * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} = {value}: {expected}")]
    Value {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Shift(#[from] SettingsError),
    #[error(transparent)]
    Arch(#[from] ArchError),
}

fn d_model() -> Backbone {
    Backbone::Resnet20
}
fn d_depth() -> usize {
    usize::MAX
}
fn d_kind() -> ShiftKind {
    ShiftKind::Ps
}
fn d_bits() -> u32 {
    5
}
fn d_round() -> Rounding {
    Rounding::Deterministic
}
fn d_act() -> u32 {
    16
}
fn d_opt() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn d_lr() -> f64 {
    0.1
}
fn d_momentum() -> f64 {
    0.9
}
fn d_wd() -> f64 {
    1e-4
}
fn d_true() -> bool {
    true
}
fn d_batch() -> usize {
    128
}
fn d_schedule() -> Schedule {
    Schedule::Cosine
}

/// One trial's configuration. Field names are the search space's parameter names, so a
/// suggested configuration (a JSON object) deserializes straight into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "d_model")]
    pub model: Backbone,
    /// `relu` or `silu` for efficientnet-b0 (absent = relu, the fork's); any other model
    /// accepts only the activation it is built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// Drop connect (Tan & Le) for efficientnet-b0 and efficientnetv2-b0: the largest drop
    /// probability of a residual branch, in [0, 1); 0 = off. See [`crate::model::DropConnect`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drop_connect: f64,
    /// Weight layers converted to shift layers, from the output end (see README).
    /// The default (absent) converts every layer, the paper's default DSNN.
    #[serde(default = "d_depth", skip_serializing_if = "is_all")]
    pub shift_depth: usize,
    #[serde(default = "d_kind")]
    pub shift_type: ShiftKind,
    #[serde(default = "d_bits")]
    pub weight_bits: u32,
    #[serde(default = "d_round")]
    pub rounding: Rounding,
    #[serde(default = "d_act")]
    pub activation_integer_bits: u32,
    #[serde(default = "d_act")]
    pub activation_fraction_bits: u32,
    #[serde(default = "d_opt")]
    pub optimizer: OptimizerKind,
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Used by sgd and rmsprop.
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Never applied to PS shifts and signs by the optimizer (as in DeepShift); it reaches the
    /// shifts through [`TrainConfig::shift_regularizer`].
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// DeepShift-PS's shift regularizer: `weight_decay * 0.5 * sum((2^P)^2)` over the raw PS
    /// shift parameters P added to the training loss (see [`super::regularizer`]). On by
    /// default, as in the authors' code; no effect without PS layers or with weight_decay = 0.
    #[serde(default = "d_true")]
    pub shift_regularizer: bool,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_schedule")]
    pub schedule: Schedule,
    /// Epochs the schedule spans; absent = the trial's own budget. The optimizer sets it to the
    /// largest budget so a continued trial follows the schedule a straight run would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_epochs: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_all(d: &usize) -> bool {
    *d == usize::MAX
}

impl Default for TrainConfig {
    fn default() -> Self {
        // Every field has a serde default; an empty object is the default configuration.
        match serde_json::from_value(serde_json::json!({})) {
            Ok(c) => c,
            Err(_) => unreachable_default(),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_default() -> ! {
    panic!("TrainConfig defaults do not deserialize")
}

impl TrainConfig {
    pub fn shift_settings(&self) -> ShiftSettings {
        ShiftSettings {
            kind: self.shift_type,
            weight_bits: self.weight_bits,
            rounding: self.rounding,
            activation_integer_bits: self.activation_integer_bits,
            activation_fraction_bits: self.activation_fraction_bits,
        }
    }

    pub fn optimizer_settings(&self) -> OptimizerSettings {
        OptimizerSettings {
            kind: self.optimizer,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.shift_settings().validate()?;
        let bad = |field, value: f64, expected| ConfigError::Value {
            field,
            value: value.to_string(),
            expected,
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("lr", self.lr, "expected a positive number"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(bad(
                "momentum",
                self.momentum,
                "expected a number in [0, 1)",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight_decay",
                self.weight_decay,
                "expected a non-negative number",
            ));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", 0.0, "expected a positive integer"));
        }
        if !(0.0..1.0).contains(&self.drop_connect) {
            return Err(bad(
                "drop_connect",
                self.drop_connect,
                "expected a probability in [0, 1) (0 = off)",
            ));
        }
        if self.drop_connect > 0.0 && !self.model.has_drop_connect() {
            return Err(bad(
                "drop_connect",
                self.drop_connect,
                "drop connect applies to efficientnet-b0 and efficientnetv2-b0 only: remove it or set 0",
            ));
        }
        if let Some(a) = self.activation
            && !self.model.activations().contains(&a)
        {
            return Err(ArchError::Activation {
                model: self.model,
                activation: a,
            }
            .into());
        }
        Ok(())
    }

    /// The layer table of this configuration for images of `dims` = [C, H, W].
    pub fn net_spec(&self, dims: [usize; 3], classes: usize) -> Result<NetSpec, ConfigError> {
        Ok(NetSpec::build_with(
            self.model,
            InputShape::new(dims[0], dims[1], dims[2]),
            classes,
            self.shift_settings(),
            self.shift_depth,
            self.activation
                .unwrap_or_else(|| self.model.activations()[0]),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_default_dsnn() {
        let c = TrainConfig::default();
        assert_eq!(c.shift_type, ShiftKind::Ps);
        assert_eq!((c.weight_bits, c.activation_integer_bits), (5, 16));
        assert_eq!(c.shift_depth, usize::MAX);
        assert_eq!((c.lr, c.weight_decay, c.batch_size), (0.1, 1e-4, 128));
        assert!(c.shift_regularizer, "on, as in the authors' code");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = serde_json::from_value::<TrainConfig>(serde_json::json!({"learning_rate": 0.1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `learning_rate`"), "{e}");
        let c = TrainConfig {
            momentum: 1.5,
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "momentum = 1.5: expected a number in [0, 1)"
        );
    }

    #[test]
    fn efficientnet_options_are_checked_against_the_model() {
        let silu = TrainConfig {
            model: Backbone::EfficientnetB0,
            activation: Some(Activation::Silu),
            drop_connect: 0.2,
            ..Default::default()
        };
        assert!(silu.validate().is_ok());
        let spec = silu.net_spec([3, 32, 32], 10).unwrap();
        assert_eq!(spec.activation, Activation::Silu);
        let resnet = TrainConfig {
            drop_connect: 0.2,
            ..Default::default()
        };
        assert_eq!(
            resnet.validate().unwrap_err().to_string(),
            "drop_connect = 0.2: drop connect applies to efficientnet-b0 and efficientnetv2-b0 only: remove it or set 0"
        );
        let too_much = TrainConfig {
            drop_connect: 1.0,
            ..silu.clone()
        };
        assert!(
            too_much
                .validate()
                .unwrap_err()
                .to_string()
                .contains("[0, 1)")
        );
        let v2_relu = TrainConfig {
            model: Backbone::Efficientnetv2B0,
            activation: Some(Activation::Relu),
            ..Default::default()
        };
        assert_eq!(
            v2_relu.validate().unwrap_err().to_string(),
            "activation = \"relu\" does not apply to efficientnetv2-b0: efficientnetv2-b0 is built with \"silu\""
        );
        let parsed: TrainConfig = serde_json::from_value(serde_json::json!(
            {"model": "efficientnet-b0", "activation": "silu", "drop_connect": 0.2}
        ))
        .unwrap();
        assert_eq!(parsed, silu);
        // Off by default and left out of stored configurations, which stay as they were.
        let text = serde_json::to_string(&TrainConfig::default()).unwrap();
        assert!(!text.contains("\"activation\"") && !text.contains("drop_connect"));
    }

    #[test]
    fn cosine_schedule_by_hand() {
        let s = Schedule::Cosine;
        assert_eq!(s.lr(0.1, 0, 100), 0.1);
        assert!((s.lr(0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(s.lr(0.1, 100, 100).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.1, 70, 100), 0.1);
    }
}
