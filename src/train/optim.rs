//! Optimizers for training: burn's SGD (momentum, Nesterov), Adam, AdamW, AdaGrad and RMSprop,
//! plus RAdam (which DeepShift-PS needs to converge well), Adadelta and Ranger (RAdam +
//! Lookahead, the paper's 2025 search space), which burn lacks and are written here.
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
    Adadelta,
    Ranger,
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 8] = [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::Adamw,
        OptimizerKind::Radam,
        OptimizerKind::Adagrad,
        OptimizerKind::Rmsprop,
        OptimizerKind::Adadelta,
        OptimizerKind::Ranger,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Radam => "radam",
            OptimizerKind::Adagrad => "adagrad",
            OptimizerKind::Rmsprop => "rmsprop",
            OptimizerKind::Adadelta => "adadelta",
            OptimizerKind::Ranger => "ranger",
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
                    "unknown optimizer '{s}': expected sgd, adam, adamw, radam, adagrad, rmsprop, adadelta or ranger"
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
            OptimizerKind::Adadelta => ModuleOptimizer::from(Adadelta::new(wd)),
            OptimizerKind::Ranger => ModuleOptimizer::from(Ranger::new(wd)),
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
        OptimizerKind::Adadelta => {
            main.with_group(ParamGroup::from_ids(ps), Adadelta::new(0.0), None)
        }
        OptimizerKind::Ranger => main.with_group(ParamGroup::from_ids(ps), Ranger::new(0.0), None),
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
        let bias1 = 1.0 - self.beta_1.powf(t as f64);
        (1.0 / bias1, rectification(self.beta_2, t, 5.0))
    }
}

/// Weight decay as L2 on the gradient (`grad + wd * w`), as PyTorch's RAdam and Adadelta apply it.
fn with_l2<const D: usize>(grad: Tensor<D>, tensor: &Tensor<D>, weight_decay: f64) -> Tensor<D> {
    if weight_decay > 0.0 {
        grad + tensor.clone().mul_scalar(weight_decay)
    } else {
        grad
    }
}

/// RAdam's variance rectification r_t * sqrt(1 - b2^t) at step `t` (1, 2, ...), or `None`
/// while the approximated SMA length rho_t is at most `threshold` (Liu et al., ICLR 2020):
/// shared by RAdam and Ranger, which differ only in what they do around it.
fn rectification(b2: f64, t: usize, threshold: f64) -> Option<f64> {
    let t = t as f64;
    let b2_t = b2.powf(t);
    let rho_inf = 2.0 / (1.0 - b2) - 1.0;
    let rho_t = rho_inf - 2.0 * t * b2_t / (1.0 - b2_t);
    (rho_t > threshold).then(|| {
        let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            .sqrt();
        r * (1.0 - b2_t).sqrt()
    })
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
        let grad = with_l2(grad, &tensor, self.weight_decay);
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

/// Adadelta (Zeiler 2012), as PyTorch's `torch.optim.Adadelta` computes it (the authors' code
/// uses it with their `lr` and `weight_decay` and PyTorch's defaults rho = 0.9, eps = 1e-6):
/// v = rho v + (1 - rho) g^2; delta = sqrt(u + eps) / sqrt(v + eps) * g;
/// u = rho u + (1 - rho) delta^2; w -= lr * delta. Weight decay is L2, added to the gradient.
#[derive(Debug, Clone)]
pub struct Adadelta {
    pub rho: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

impl Adadelta {
    pub fn new(weight_decay: f64) -> Self {
        Self {
            rho: 0.9,
            epsilon: 1e-6,
            weight_decay,
        }
    }
}

/// The running averages of squared gradients and of squared updates.
#[derive(Clone)]
pub struct AdadeltaState<const D: usize> {
    pub square_avg: Tensor<D>,
    pub acc_delta: Tensor<D>,
}

impl<const D: usize> RecordState for AdadeltaState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "square_avg", self.square_avg.to_data());
        out.push_tensor(prefix, "acc_delta", self.acc_delta.to_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let mut take = |leaf: &str| -> Option<TensorData> { src.take_tensor(prefix, leaf) };
        let square_avg = take("square_avg")?;
        let acc_delta = take("acc_delta")?;
        Some(Self {
            square_avg: Tensor::from_data(square_avg, device),
            acc_delta: Tensor::from_data(acc_delta, device),
        })
    }
}

impl Optimizer for Adadelta {
    type State<const D: usize> = AdadeltaState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let grad = with_l2(grad, &tensor, self.weight_decay);
        let rho = self.rho;
        let (square_avg, acc_delta) = match state {
            Some(s) => (
                s.square_avg.mul_scalar(rho) + grad.clone().square().mul_scalar(1.0 - rho),
                s.acc_delta,
            ),
            None => (
                grad.clone().square().mul_scalar(1.0 - rho),
                tensor.zeros_like(),
            ),
        };
        let std = square_avg.clone().add_scalar(self.epsilon).sqrt();
        let delta = acc_delta.clone().add_scalar(self.epsilon).sqrt() / std * grad;
        let acc_delta = acc_delta.mul_scalar(rho) + delta.clone().square().mul_scalar(1.0 - rho);
        let new = tensor - delta.mul_scalar(lr);
        (
            new,
            Some(AdadeltaState {
                square_avg,
                acc_delta,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdadeltaState {
            square_avg: state.square_avg.to_device(device),
            acc_delta: state.acc_delta.to_device(device),
        }
    }
}

/// Ranger (Less Wright's RAdam + Lookahead, version 9.3.19), as the authors' fork has it in
/// `optim/ranger.py`, with its settings: betas (0.95, 0.999), eps 1e-5, the adaptive step from
/// N_sma > 5 on, and Lookahead with alpha 0.5 every k = 6 steps. Per parameter: the RAdam step
/// (weight decay decoupled: w -= lr * wd * w before it, as that code does; without the
/// adaptive step, plain bias-corrected momentum), then every k-th step the slow weights move
/// alpha of the way to the fast ones and the fast weights are set to them. The slow weights
/// start as the weights before the first step.
#[derive(Debug, Clone)]
pub struct Ranger {
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub n_sma_threshold: f64,
    pub alpha: f64,
    pub k: usize,
    pub weight_decay: f64,
}

impl Ranger {
    pub fn new(weight_decay: f64) -> Self {
        Self {
            beta_1: 0.95,
            beta_2: 0.999,
            epsilon: 1e-5,
            n_sma_threshold: 5.0,
            alpha: 0.5,
            k: 6,
            weight_decay,
        }
    }

    /// The step size of step `t` and whether the adaptive (second-moment) step is on.
    fn step_size(&self, t: usize) -> (f64, bool) {
        let inv_bias1 = 1.0 / (1.0 - self.beta_1.powf(t as f64));
        match rectification(self.beta_2, t, self.n_sma_threshold) {
            Some(r) => (r * inv_bias1, true),
            None => (inv_bias1, false),
        }
    }
}

/// RAdam's moments and step count plus Lookahead's slow weights.
#[derive(Clone)]
pub struct RangerState<const D: usize> {
    pub radam: RAdamState<D>,
    pub slow: Tensor<D>,
}

impl<const D: usize> RecordState for RangerState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.radam.state_flatten(prefix, out);
        out.push_tensor(prefix, "slow", self.slow.to_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let radam = RAdamState::state_unflatten(prefix, src, device)?;
        let slow = src.take_tensor(prefix, "slow")?;
        Some(Self {
            radam,
            slow: Tensor::from_data(slow, device),
        })
    }
}

impl Optimizer for Ranger {
    type State<const D: usize> = RangerState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (b1, b2) = (self.beta_1, self.beta_2);
        let (t, m1, m2, slow) = match state {
            Some(s) => {
                let r = s.radam;
                let t = r.step.into_scalar::<f32>() as usize + 1;
                let m2 = r.moment_2.mul_scalar(b2) + grad.clone().square().mul_scalar(1.0 - b2);
                let m1 = r.moment_1.mul_scalar(b1) + grad.mul_scalar(1.0 - b1);
                (t, m1, m2, s.slow)
            }
            None => (
                1,
                grad.clone().mul_scalar(1.0 - b1),
                grad.square().mul_scalar(1.0 - b2),
                tensor.clone(),
            ),
        };
        let (step_size, adaptive) = self.step_size(t);
        let mut w = tensor;
        if self.weight_decay != 0.0 {
            w = w.clone() + w.mul_scalar(-self.weight_decay * lr);
        }
        w = if adaptive {
            let denom = m2.clone().sqrt().add_scalar(self.epsilon);
            w + (m1.clone() / denom).mul_scalar(-step_size * lr)
        } else {
            w + m1.clone().mul_scalar(-step_size * lr)
        };
        let (w, slow) = if self.k > 0 && t.is_multiple_of(self.k) {
            let slow = slow.clone() + (w - slow).mul_scalar(self.alpha);
            (slow.clone(), slow)
        } else {
            (w, slow)
        };
        let device = w.device();
        let state = RangerState {
            radam: RAdamState {
                step: Tensor::from_data(TensorData::new(vec![t as f32], [1]), &device),
                moment_1: m1,
                moment_2: m2,
            },
            slow,
        };
        (w, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        RangerState {
            radam: <RAdam as Optimizer>::to_device(state.radam, device),
            slow: state.slow.to_device(device),
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

    fn vec3(v: [f32; 3]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [3]), &Device::flex())
    }

    /// The gradient of step `t` (1, 2, ...) in the reference runs below.
    fn varying_grad(t: usize) -> Tensor<1> {
        let t = t as f32;
        vec3([0.5 * t, -0.3 + 0.2 * t, 0.1 * (-1.0f32).powi(t as i32)])
    }

    /// Steps `opt` from w0 = [1, -0.5, 2] with [`varying_grad`]; the weights after each step.
    fn run_steps<O: Optimizer>(opt: &O, lr: f64, steps: usize) -> Vec<Vec<f32>> {
        let (mut w, mut state) = (vec3([1.0, -0.5, 2.0]), None);
        let mut after = Vec::new();
        for t in 1..=steps {
            let (nw, ns) = opt.step(lr, w, varying_grad(t), state);
            after.push(nw.to_data().try_to_vec::<f32>().unwrap());
            w = nw;
            state = ns;
        }
        after
    }

    fn assert_close(got: &[Vec<f32>], expected: &[[f32; 3]], tol: f32) {
        assert_eq!(got.len(), expected.len());
        for (step, (g, e)) in got.iter().zip(expected).enumerate() {
            for (a, b) in g.iter().zip(e) {
                assert!((a - b).abs() <= tol, "step {}: {g:?} vs {e:?}", step + 1);
            }
        }
    }

    #[test]
    fn adadelta_matches_pytorch_with_weight_decay() {
        // Reference: PyTorch 2 `torch.optim.Adadelta([p], lr=0.5, weight_decay=0.1)` (rho 0.9,
        // eps 1e-6), float32, p = [1, -0.5, 2], p.grad = varying_grad(t) before each step.
        let expected = [
            [0.998_418_87, -0.498_419_23, 1.998_419_6],
            [0.996_433, -0.499_162_32, 1.996_288_4],
            [0.994_056_64, -0.501_160_44, 1.995_323_1],
        ];
        assert_close(&run_steps(&Adadelta::new(0.1), 0.5, 3), &expected, 1e-6);
    }

    /// Reference for the Ranger tests: the authors' fork's `optim/ranger.py` run under PyTorch
    /// 2 (`Ranger([p], lr=0.1, weight_decay=wd)`, its defaults alpha 0.5, k 6, N_sma_threshold
    /// 5, betas (0.95, 0.999), eps 1e-5), float32, p = [1, -0.5, 2], p.grad = varying_grad(t).
    #[test]
    fn ranger_matches_the_forks_ranger_with_weight_decay() {
        // Steps 1-5 are momentum steps (N_sma <= 5), step 6 the first adaptive one and the
        // first Lookahead sync, step 12 the second.
        let expected = [
            [0.94, -0.485, 1.99],
            [0.854_958_95, -0.480_406_43, 1.969_843_6],
            [0.744_700_4, -0.486_285_98, 1.953_484_4],
            [0.609_049_9, -0.502_704_5, 1.933_693_2],
            [0.447_835_9, -0.529_726_86, 1.916_366_7],
            [0.720_469_83, -0.513_268_8, 1.948_568_5],
            [0.710_189_6, -0.510_898_77, 1.929_554_8],
            [0.699_433_2, -0.509_139_7, 1.910_160_1],
            [0.688_257_6, -0.507_937_8, 1.891_556_5],
            [0.676_704_76, -0.507_251_1, 1.872_515_4],
            [0.664_807_4, -0.507_046_3, 1.854_289],
            [0.686_530_7, -0.510_282_2, 1.892_083_4],
            [0.673_678_7, -0.510_932_1, 1.873_654_2],
        ];
        assert_close(&run_steps(&Ranger::new(0.1), 0.1, 13), &expected, 2e-6);
    }

    #[test]
    fn ranger_matches_the_forks_ranger_without_weight_decay() {
        let expected = [
            [0.95, -0.49, 2.01],
            [0.874_358_95, -0.490_256_43, 2.009_743_7],
            [0.772_649_94, -0.500_94, 2.013_083],
            [0.644_446_5, -0.522_221_4, 2.012_826_7],
            [0.489_323, -0.554_270_8, 2.014_837_3],
            [0.743_452_55, -0.528_189_4, 2.007_385_7],
            [0.740_377_07, -0.530_952_04, 2.007_857_8],
        ];
        assert_close(&run_steps(&Ranger::new(0.0), 0.1, 7), &expected, 2e-6);
    }

    #[test]
    fn ranger_lookahead_syncs_every_k_steps() {
        // alpha = 0: the slow weights never move, so every k-th step puts the weights back at
        // the start exactly, and only then.
        let opt = Ranger {
            alpha: 0.0,
            k: 3,
            ..Ranger::new(0.0)
        };
        for (i, w) in run_steps(&opt, 0.1, 9).iter().enumerate() {
            let synced = (i + 1) % 3 == 0;
            assert_eq!(w == &vec![1.0, -0.5, 2.0], synced, "step {}: {w:?}", i + 1);
        }
        // alpha = 1: Lookahead keeps the fast weights (up to the rounding of s + (w - s)).
        let plain = run_steps(&Ranger { alpha: 1.0, ..opt }, 0.1, 9);
        let no_sync = run_steps(&Ranger { k: 1000, ..opt }, 0.1, 9);
        assert_close(
            &plain,
            &no_sync
                .iter()
                .map(|w| [w[0], w[1], w[2]])
                .collect::<Vec<_>>(),
            1e-6,
        );
    }

    #[test]
    fn new_kinds_parse_and_name() {
        for k in OptimizerKind::ALL {
            assert_eq!(k.name().parse::<OptimizerKind>(), Ok(k));
        }
        assert_eq!("Ranger".parse(), Ok(OptimizerKind::Ranger));
        assert_eq!("adadelta".parse(), Ok(OptimizerKind::Adadelta));
        let e = "lamb".parse::<OptimizerKind>().unwrap_err();
        assert!(e.contains("adadelta or ranger"), "{e}");
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
