//! DeepShift-PS's shift regularizer, as the authors' code adds it to the training loss
//! (`shift_l2_norm` in their fork's `cifar10_momf_dsnn.py` and siblings):
//! `weight_decay * 0.5 * sum((2**shift)**2)` over every PS shift parameter, when
//! `weight_decay > 0`. The shift parameters themselves get no weight decay in the optimizer (see
//! [`super::optim`]); this term is how weight decay reaches them.
//!
//! The term uses the raw (float, unrounded) shift parameter, as the fork does: it iterates over
//! the optimizer's shift group, i.e. the `nn.Parameter`s, not the rounded shifts the forward pass
//! uses. Its gradient is therefore `weight_decay * ln 2 * (2^P)^2` per element P.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Sums `(2^P)^2 = exp(2 ln 2 * P)` over the shift parameters of PS layers.
struct ShiftSquares {
    in_shift: usize,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for ShiftSquares {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type.contains("PsParams") && name == "shift" {
            self.in_shift += 1;
        }
    }

    fn exit_module(&mut self, name: &str, container_type: &str) {
        if container_type.contains("PsParams") && name == "shift" {
            self.in_shift = self.in_shift.saturating_sub(1);
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.in_shift == 0 {
            return;
        }
        let squares = param
            .val()
            .mul_scalar(2.0 * std::f64::consts::LN_2)
            .exp()
            .sum();
        self.sum = Some(match self.sum.take() {
            Some(s) => s + squares,
            None => squares,
        });
    }
}

/// `weight_decay * 0.5 * sum((2^P)^2)` over the PS shift parameters P of `module`; none when
/// `weight_decay` is not positive or `module` has no PS layer (Q and float layers have no
/// shift parameters).
pub fn shift_l2_norm<M: Module>(module: &M, weight_decay: f64) -> Option<Tensor<1>> {
    if weight_decay <= 0.0 {
        return None;
    }
    let mut v = ShiftSquares {
        in_shift: 0,
        sum: None,
    };
    module.visit(&mut v);
    v.sum.map(|s| s.mul_scalar(weight_decay * 0.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Backbone, InputShape, NetSpec};
    use crate::model::Network;
    use crate::shift::{ShiftKind, ShiftSettings};
    use burn::tensor::Device;
    use burn::tensor::Gradients;

    fn net(kind: ShiftKind, device: &Device) -> Network {
        let settings = ShiftSettings {
            kind,
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
        Network::init(&spec, device)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.to_data().try_to_vec::<f32>().unwrap()
    }

    /// Every PS shift parameter's values, and its gradient in `grads` (if given).
    struct Shifts<'a> {
        grads: Option<&'a Gradients>,
        in_shift: bool,
        found: Vec<(Vec<f32>, Option<Vec<f32>>)>,
    }
    impl ModuleVisitor for Shifts<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.in_shift = container_type.contains("PsParams") && name == "shift";
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.in_shift {
                let g = self
                    .grads
                    .and_then(|grads| param.val().grad(grads))
                    .map(values);
                self.found.push((values(param.val()), g));
            }
            self.in_shift = false;
        }
    }

    fn shifts(n: &Network, grads: Option<&Gradients>) -> Vec<(Vec<f32>, Option<Vec<f32>>)> {
        let mut s = Shifts {
            grads,
            in_shift: false,
            found: Vec::new(),
        };
        n.visit(&mut s);
        s.found
    }

    #[test]
    fn value_is_half_weight_decay_times_the_sum_of_squared_powers() {
        let device = Device::flex();
        let n = net(ShiftKind::Ps, &device);
        let found = shifts(&n, None);
        assert_eq!(found.len(), 3, "conv2, fc1, fc2");
        let expected: f64 = 1e-3
            * 0.5
            * found
                .iter()
                .flat_map(|(v, _)| v.iter())
                .map(|&p| 2f64.powf(p as f64).powi(2))
                .sum::<f64>();
        let got = shift_l2_norm(&n, 1e-3).unwrap().into_scalar::<f32>() as f64;
        assert!(
            (got - expected).abs() <= 1e-5 * expected,
            "{got} {expected}"
        );
        assert!(shift_l2_norm(&n, 0.0).is_none());
        assert!(shift_l2_norm(&net(ShiftKind::Q, &device), 1e-3).is_none());
    }

    #[test]
    fn gradient_of_a_shift_is_weight_decay_ln2_times_the_squared_power() {
        let device = Device::flex().autodiff();
        let n = net(ShiftKind::Ps, &device);
        let wd = 0.01;
        let grads = shift_l2_norm(&n, wd).unwrap().backward();
        let found = shifts(&n, Some(&grads));
        assert_eq!(found.len(), 3);
        for (values, g) in found {
            let g = g.expect("every shift has a gradient");
            for (p, gp) in values.iter().zip(&g) {
                let want = wd * std::f64::consts::LN_2 * 2f64.powf(*p as f64).powi(2);
                assert!(
                    (*gp as f64 - want).abs() <= 1e-6 * want.max(1e-3),
                    "{gp} {want}"
                );
            }
        }
    }

    /// Gradients of the shifts of `n` for the training objective of `cfg`, the "loss" being the
    /// sum of the logits of a fixed input (deterministic rounding: the same every call).
    fn objective_grads(cfg: &crate::train::TrainConfig, n: &Network) -> Vec<(Vec<f32>, Vec<f32>)> {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(
            burn::tensor::TensorData::new(
                (0..2 * 28 * 28)
                    .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                    .collect::<Vec<_>>(),
                [2, 1, 28, 28],
            ),
            &device,
        );
        let loss = n.forward(x).sum();
        let grads = crate::train::training_objective(cfg, n, loss).backward();
        shifts(n, Some(&grads))
            .into_iter()
            .map(|(v, g)| (v, g.expect("every shift has a gradient")))
            .collect()
    }

    #[test]
    fn the_training_objective_adds_the_term_to_the_shift_gradients_unless_disabled() {
        use crate::train::TrainConfig;
        let device = Device::flex().autodiff();
        let n = net(ShiftKind::Ps, &device);
        let wd = 0.01;
        let on = TrainConfig {
            weight_decay: wd,
            ..TrainConfig::default()
        };
        let off = TrainConfig {
            shift_regularizer: false,
            ..on.clone()
        };
        let no_decay = TrainConfig {
            weight_decay: 0.0,
            ..on.clone()
        };
        let with = objective_grads(&on, &n);
        let without = objective_grads(&off, &n);
        assert_eq!(without, objective_grads(&no_decay, &n), "wd = 0: no term");
        let mut nonzero = 0;
        for ((p, g_on), (_, g_off)) in with.iter().zip(&without) {
            for ((p, a), b) in p.iter().zip(g_on).zip(g_off) {
                let term = wd * std::f64::consts::LN_2 * 2f64.powf(*p as f64).powi(2);
                let tol = 1e-5 * (a.abs().max(b.abs()) as f64).max(term).max(1e-3);
                assert!(((a - b) as f64 - term).abs() <= tol, "{a} - {b} vs {term}");
                nonzero += usize::from(*b != 0.0);
            }
        }
        assert!(nonzero > 0, "the logits' gradient reaches the shifts too");
    }
}
