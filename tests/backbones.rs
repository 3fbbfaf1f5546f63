//! VGG19 and GoogLeNet as burn networks: built from their layer tables, the same parameters as
//! the tables, every table row run in order, and gradients through the whole network.
#![cfg(feature = "dsnn")]

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Gradients, Tensor};
use dsnn_hpo::arch::{Backbone, InputShape, LayerKind, NetSpec};
use dsnn_hpo::model::{Laps, Network};
use dsnn_hpo::shift::{ShiftKind, ShiftSettings};
mod common;
use common::rng_lock;

/// burn's backend RNG is process-wide: tests that draw from it hold this lock.
fn spec(model: Backbone, kind: ShiftKind, depth: usize) -> NetSpec {
    let settings = ShiftSettings {
        kind,
        ..Default::default()
    };
    NetSpec::build(model, InputShape::new(3, 32, 32), 10, settings, depth).unwrap()
}

/// Batch norm's running mean and variance, which burn counts as parameters and the table
/// (like PyTorch's `parameters()`) does not.
fn running_stats(spec: &NetSpec) -> u64 {
    spec.layers
        .iter()
        .map(|l| match l.kind {
            LayerKind::BatchNorm { features } => 2 * features as u64,
            _ => 0,
        })
        .sum()
}

#[test]
fn burn_parameters_equal_the_tables() {
    let _rng = rng_lock();
    let device = Device::flex();
    for (model, params) in [
        (Backbone::Vgg19, 20_035_018),
        (Backbone::Googlenet, 6_166_250),
    ] {
        for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Q, 999), (ShiftKind::Ps, 999)] {
            let spec = spec(model, kind, depth);
            let t = spec.totals();
            assert_eq!(t.params, params);
            let net = Network::init(&spec, &device);
            // PS keeps a shift and a sign per weight of its shift layers: trainable > params.
            assert_eq!(
                net.num_params() as u64,
                t.trainable + running_stats(&spec),
                "{model} {kind:?} depth {depth}"
            );
        }
    }
}

/// Records the per-image shape of every tensor handed to `layer`.
struct Shapes(Vec<Vec<usize>>);

impl Laps for Shapes {
    fn layer<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        self.0.push(t.dims()[1..].to_vec());
        t
    }
    fn other<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        t
    }
}

#[test]
fn the_forward_pass_runs_the_table_rows_in_order() {
    let _rng = rng_lock();
    let device = Device::flex();
    for model in [Backbone::Vgg19, Backbone::Googlenet] {
        let spec = spec(model, ShiftKind::Q, 0);
        let net = Network::init(&spec, &device).valid();
        let x = Tensor::<4>::zeros([1, 3, 32, 32], &device);
        let mut laps = Shapes(Vec::new());
        let logits = net.forward_with(x, &mut laps);
        assert_eq!(logits.dims(), [1, 10]);
        let table: Vec<Vec<usize>> = spec.layers.iter().map(|l| l.output.clone()).collect();
        assert_eq!(laps.0, table, "{model}");
    }
}

/// Counts parameters with a gradient and checks every gradient is finite.
struct GradCheck<'a> {
    grads: &'a Gradients,
    with_grad: usize,
    nonzero: usize,
    non_finite: Vec<String>,
    path: Vec<String>,
}

impl ModuleVisitor for GradCheck<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = param.val().grad(self.grads) else {
            return;
        };
        let v = g.into_data().try_to_vec::<f32>().unwrap();
        self.with_grad += 1;
        if v.iter().any(|x| *x != 0.0) {
            self.nonzero += 1;
        }
        if !v.iter().all(|x| x.is_finite()) {
            self.non_finite.push(self.path.join("."));
        }
    }
}

#[test]
fn forward_and_backward_on_a_tiny_batch_at_depth_0_and_all() {
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(7);
    for model in [Backbone::Vgg19, Backbone::Googlenet] {
        for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Ps, 999)] {
            let spec = spec(model, kind, depth);
            let net = Network::init(&spec, &device);
            let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let logits = net.forward(x.clone());
            assert_eq!(logits.dims(), [2, 10], "{model} depth {depth}");
            let grads = (logits.clone() * logits).sum().backward();
            let gx = x
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert!(gx.iter().all(|v| v.is_finite()), "{model} depth {depth}");
            assert!(
                gx.iter().any(|v| *v != 0.0),
                "{model} depth {depth}: no input gradient"
            );
            let mut check = GradCheck {
                grads: &grads,
                with_grad: 0,
                nonzero: 0,
                non_finite: Vec::new(),
                path: Vec::new(),
            };
            net.visit(&mut check);
            assert!(check.non_finite.is_empty(), "{:?}", check.non_finite);
            // At least one trained tensor per weight layer and per batch norm got a gradient.
            let rows = spec.layers.iter().filter(|l| l.params() > 0).count();
            assert!(
                check.with_grad >= rows && check.nonzero >= rows,
                "{model} depth {depth}: {} tensors with gradients ({} nonzero), {rows} rows with parameters",
                check.with_grad,
                check.nonzero
            );
        }
    }
}
