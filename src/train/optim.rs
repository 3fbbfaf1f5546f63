//! Optimizers for training: burn's SGD (momentum, Nesterov), Adam, AdamW, AdaGrad and RMSprop,
//! plus RAdam, which burn lacks and DeepShift-PS needs to converge well.
//!
//! DeepShift gives the shift and sign parameters of PS layers no weight decay; burn applies one
//! decay to every parameter of an optimizer, so those parameters get a second, decay-free
//! instance of the same optimizer through a parameter group.

use burn::module::ParamGroup;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdaGradConfig, AdamConfig, AdamWConfig, LearningRate, ModuleOptimizer, Optimizer, RecordState,
    RmsPropConfig, SgdConfig, StateSink, StateSource,
};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
    Radam,
    Adagrad,
    Rmsprop,
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 6] = [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::Adamw,
        OptimizerKind::Radam,
        OptimizerKind::Adagrad,
        OptimizerKind::Rmsprop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Radam => "radam",
            OptimizerKind::Adagrad => "adagrad",
            OptimizerKind::Rmsprop => "rmsprop",
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        OptimizerKind::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or_else(|| {
                format!(
                    "unknown optimizer '{s}': expected sgd, adam, adamw, radam, adagrad or rmsprop"
                )
            })
    }
}

/// The optimizer hyperparameters of a trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// IDs of the parameters that must not be decayed: PS shifts and signs.
struct NoDecayCollector {
    depth_in_ps: usize,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for NoDecayCollector {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if container_type.contains("PsParams") {
            self.depth_in_ps += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type.contains("PsParams") {
            self.depth_in_ps = self.depth_in_ps.saturating_sub(1);
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.depth_in_ps > 0 {
            self.ids.push(param.id);
        }
    }
}

/// The parameters of PS layers (shift and sign) in `module`.
pub fn ps_param_ids<M: Module>(module: &M) -> Vec<ParamId> {
    let mut c = NoDecayCollector {
        depth_in_ps: 0,
        ids: Vec::new(),
    };
    module.visit(&mut c);
    c.ids
}

fn decay(wd: f64) -> Option<WeightDecayConfig> {
    (wd > 0.0).then(|| WeightDecayConfig::new(wd as f32))
}

/// Builds the optimizer for `module`: one instance with weight decay for ordinary parameters,
/// one without for PS shifts and signs.
pub fn build<M: Module>(s: &OptimizerSettings, module: &M) -> ModuleOptimizer {
    let make = |wd: f64| -> ModuleOptimizer {
        match s.kind {
            OptimizerKind::Sgd => SgdConfig::new()
                .with_weight_decay(decay(wd))
                .with_momentum((s.momentum > 0.0).then(|| {
                    // PyTorch's defaults: no dampening.
                    MomentumConfig::new()
                        .with_momentum(s.momentum)
                        .with_dampening(0.0)
                        .with_nesterov(s.nesterov)
                }))
                .init(),
            OptimizerKind::Adam => AdamConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(decay(wd))
                .init(),
            OptimizerKind::Adamw => AdamWConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(wd as f32)
                .init(),
            OptimizerKind::Radam => ModuleOptimizer::from(RAdam::new(wd)),
            OptimizerKind::Adagrad => AdaGradConfig::new()
                .with_epsilon(1e-10)
                .with_weight_decay(decay(wd))
                .init(),
            OptimizerKind::Rmsprop => RmsPropConfig::new()
                .with_alpha(0.99)
                .with_epsilon(1e-8)
                .with_momentum(s.momentum as f32)
                .with_weight_decay(decay(wd))
                .init(),
        }
    };
    let main = make(s.weight_decay);
    let ps = ps_param_ids(module);
    if ps.is_empty() || s.weight_decay <= 0.0 {
        return main;
    }
    match s.kind {
        OptimizerKind::Sgd => main.with_group(ParamGroup::from_ids(ps), sgd_without_decay(s), None),
        OptimizerKind::Adam => main.with_group(
            ParamGroup::from_ids(ps),
            AdamConfig::new().with_epsilon(1e-8).build(),
            None,
        ),
        OptimizerKind::Adamw => main.with_group(
            ParamGroup::from_ids(ps),
            AdamWConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(0.0)
                .build(),
            None,
        ),
        OptimizerKind::Radam => main.with_group(ParamGroup::from_ids(ps), RAdam::new(0.0), None),
        OptimizerKind::Adagrad => main.with_group(
            ParamGroup::from_ids(ps),
            AdaGradConfig::new().with_epsilon(1e-10).build(),
            None,
        ),
        OptimizerKind::Rmsprop => main.with_group(
            ParamGroup::from_ids(ps),
            RmsPropConfig::new()
                .with_alpha(0.99)
                .with_epsilon(1e-8)
                .with_momentum(s.momentum as f32)
                .build(),
            None,
        ),
    }
}

fn sgd_without_decay(s: &OptimizerSettings) -> burn::optim::Sgd {
    SgdConfig::new()
        .with_momentum((s.momentum > 0.0).then(|| {
            MomentumConfig::new()
                .with_momentum(s.momentum)
                .with_dampening(0.0)
                .with_nesterov(s.nesterov)
        }))
        .build()
}

/// RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"), as
/// PyTorch's `torch.optim.RAdam` computes it: Adam whose adaptive step is switched on only once
/// the variance of the adaptive learning rate is tractable (rho_t > 5), and rectified by r_t.
/// Weight decay is L2, added to the gradient.
#[derive(Debug, Clone)]
pub struct RAdam {
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

impl RAdam {
    pub fn new(weight_decay: f64) -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay,
        }
    }

    /// The step's scalars: 1/(1-b1^t), and r_t * sqrt(1-b2^t) once rho_t > 5 (else the step is
    /// plain momentum SGD).
    fn factors(&self, t: usize) -> (f64, Option<f64>) {
        let t = t as f64;
        let (b1, b2) = (self.beta_1, self.beta_2);
        let bias1 = 1.0 - b1.powf(t);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powf(t) / (1.0 - b2.powf(t));
        if rho_t > 5.0 {
            let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            let bias2_sqrt = (1.0 - b2.powf(t)).sqrt();
            (1.0 / bias1, Some(r * bias2_sqrt))
        } else {
            (1.0 / bias1, None)
        }
    }
}

/// First and second moments and the step count (kept as a one-element tensor so the state
/// needs nothing but tensors to be saved and restored).
#[derive(Clone)]
pub struct RAdamState<const D: usize> {
    pub step: Tensor<1>,
    pub moment_1: Tensor<D>,
    pub moment_2: Tensor<D>,
}

impl<const D: usize> RecordState for RAdamState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "step", self.step.to_data());
        out.push_tensor(prefix, "moment_1", self.moment_1.to_data());
        out.push_tensor(prefix, "moment_2", self.moment_2.to_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let mut take = |leaf: &str| -> Option<TensorData> { src.take_tensor(prefix, leaf) };
        let step = take("step")?;
        let m1 = take("moment_1")?;
        let m2 = take("moment_2")?;
        Some(Self {
            step: Tensor::from_data(step, device),
            moment_1: Tensor::from_data(m1, device),
            moment_2: Tensor::from_data(m2, device),
        })
    }
}

impl Optimizer for RAdam {
    type State<const D: usize> = RAdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let grad = if self.weight_decay > 0.0 {
            grad + tensor.clone().mul_scalar(self.weight_decay)
        } else {
            grad
        };
        let (b1, b2) = (self.beta_1, self.beta_2);
        let (t, m1, m2) = match state {
            Some(s) => {
                let t = s.step.into_scalar::<f32>() as usize + 1;
                let m1 = s.moment_1.mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1);
                let m2 = s.moment_2.mul_scalar(b2) + grad.square().mul_scalar(1.0 - b2);
                (t, m1, m2)
            }
            None => (
                1,
                grad.clone().mul_scalar(1.0 - b1),
                grad.square().mul_scalar(1.0 - b2),
            ),
        };
        let (inv_bias1, adaptive) = self.factors(t);
        let m_hat = m1.clone().mul_scalar(inv_bias1);
        let update = match adaptive {
            // PyTorch: m_hat * r_t * sqrt(1 - b2^t) / (sqrt(v_t) + eps).
            Some(scale) => m_hat.mul_scalar(scale) / m2.clone().sqrt().add_scalar(self.epsilon),
            None => m_hat,
        };
        let new = tensor - update.mul_scalar(lr);
        let device = new.device();
        let state = RAdamState {
            step: Tensor::from_data(TensorData::new(vec![t as f32], [1]), &device),
            moment_1: m1,
            moment_2: m2,
        };
        (new, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        RAdamState {
            step: state.step.to_device(device),
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Backbone, InputShape, NetSpec};
    use crate::model::Network;
    use crate::shift::{ShiftKind, ShiftSettings};

    fn scalar(v: f32) -> Tensor<1> {
        Tensor::from_data(TensorData::new(vec![v], [1]), &Device::flex())
    }

    #[test]
    fn radam_by_hand_with_a_constant_gradient() {
        // g = 0.5, lr = 0.1, w0 = 1. For t <= 5 rho_t <= 5: the step is the bias-corrected
        // momentum m_hat = g. At t = 6 the adaptive step switches on: m_hat * r_6 * sqrt(1-b2^6)
        // / (sqrt(v_6) + eps) = r_6 (up to eps), since v_6 = (1 - b2^6) g^2.
        let opt = RAdam::new(0.0);
        let (mut w, mut state) = (scalar(1.0), None);
        let mut after = Vec::new();
        for _ in 0..6 {
            let (nw, ns) = opt.step(0.1, w, scalar(0.5), state);
            after.push(nw.clone().into_scalar::<f32>());
            w = nw;
            state = ns;
        }
        assert!((after[0] - 0.95).abs() < 1e-6, "{after:?}");
        assert!((after[4] - 0.75).abs() < 1e-6, "{after:?}");
        let (b2, t) = (0.999f64, 6.0f64);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho = rho_inf - 2.0 * t * b2.powf(t) / (1.0 - b2.powf(t));
        assert!(rho > 5.0 && rho < 6.0);
        let r = ((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
            .sqrt();
        let expected = 0.75 - 0.1 * r;
        assert!(
            (after[5] as f64 - expected).abs() < 1e-5,
            "{} vs {expected}",
            after[5]
        );
    }

    #[test]
    fn radam_weight_decay_is_l2_on_the_gradient() {
        // t = 1: the step is lr * (g + wd * w).
        let (w, _) = RAdam::new(0.1).step(0.5, scalar(2.0), scalar(1.0), None);
        assert!((w.into_scalar::<f32>() - (2.0 - 0.5 * 1.2)).abs() < 1e-6);
    }

    #[test]
    fn only_ps_shift_and_sign_escape_weight_decay() {
        let settings = ShiftSettings {
            kind: ShiftKind::Ps,
            ..Default::default()
        };
        let spec = NetSpec::build(
            Backbone::SmallCnn,
            InputShape::new(1, 28, 28),
            10,
            settings,
            3,
        )
        .unwrap();
        let net = Network::init(&spec, &Device::flex());
        // Three PS layers (conv2, fc1, fc2), each with a shift and a sign tensor.
        assert_eq!(ps_param_ids(&net).len(), 6);
        let q = NetSpec::build(
            Backbone::SmallCnn,
            InputShape::new(1, 28, 28),
            10,
            ShiftSettings {
                kind: ShiftKind::Q,
                ..Default::default()
            },
            3,
        )
        .unwrap();
        assert!(ps_param_ids(&Network::init(&q, &Device::flex())).is_empty());
    }
}
