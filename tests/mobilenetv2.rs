//! MobileNetV2 as burn builds it from the layer table: sizes, gradients, and the fused CPU
//! convolution (grouped and depthwise, float and shift) against burn's.
#![cfg(feature = "dsnn")]

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use dsnn_hpo::arch::{Backbone, InputShape, NetSpec};
use dsnn_hpo::model::{ConvLayer, DenseLayer, Network};
use dsnn_hpo::shift::layer::ShiftParams;
use dsnn_hpo::shift::{Rounding, ShiftKind, ShiftSettings};

/// burn's backend RNG is process-wide: tests that seed or draw from it hold this lock.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn settings(kind: ShiftKind) -> ShiftSettings {
    ShiftSettings {
        kind,
        weight_bits: 5,
        rounding: Rounding::Deterministic,
        activation_integer_bits: 16,
        activation_fraction_bits: 16,
    }
}

fn spec(kind: ShiftKind, depth: usize, side: usize) -> NetSpec {
    NetSpec::build(
        Backbone::Mobilenetv2,
        InputShape::new(3, side, side),
        10,
        settings(kind),
        depth,
    )
    .unwrap()
}

fn mobilenet(net: &Network) -> &dsnn_hpo::model::MobileNetV2 {
    match net {
        Network::MobileNetV2(m) => m,
        _ => panic!("a MobileNetV2"),
    }
}

/// Every conv of the network in table order.
fn convs(net: &Network) -> Vec<&ConvLayer> {
    let m = mobilenet(net);
    let mut out = vec![&m.conv1];
    for b in &m.blocks {
        out.extend([&b.conv1, &b.conv2, &b.conv3]);
        out.extend(b.shortcut.as_ref().map(|s| &s.conv));
    }
    out.push(&m.conv2);
    out
}

/// The trainable weight tensors of a conv: the float weight, Q's weight, or PS's shift.
fn conv_weight(c: &ConvLayer) -> &Param<Tensor<4>> {
    match c {
        ConvLayer::Float(c) => &c.weight,
        ConvLayer::Shift(s) => match &s.params {
            ShiftParams::Q(w) => w,
            ShiftParams::Ps(p) => &p.shift,
        },
    }
}

#[test]
fn the_burn_module_has_the_tables_parameters_at_depth_0_and_all() {
    let _rng = rng_lock();
    let device = Device::flex();
    for (kind, depth) in [
        (ShiftKind::Q, 0),
        (ShiftKind::Q, 58),
        (ShiftKind::Ps, 30),
        (ShiftKind::Ps, 58),
    ] {
        let spec = spec(kind, depth, 32);
        let net = Network::init(&spec, &device);
        let shift_convs = convs(&net)
            .iter()
            .filter(|c| matches!(c, ConvLayer::Shift(_)))
            .count();
        let shift_linear = matches!(mobilenet(&net).linear, DenseLayer::Shift(_)) as usize;
        assert_eq!(
            shift_convs + shift_linear,
            spec.totals().shift_layers,
            "{kind} {depth}"
        );
        // burn counts batch norm's running mean and variance as parameters too: two per
        // feature, i.e. as many as the scales and shifts the table counts.
        let bn: u64 = spec
            .layers
            .iter()
            .filter(|l| l.kind.short_name() == "batchnorm")
            .map(|l| l.params())
            .sum();
        assert_eq!(
            net.num_params() as u64,
            spec.totals().trainable + bn,
            "{kind} depth {depth}"
        );
    }
    assert_eq!(spec(ShiftKind::Q, 0, 32).totals().trainable, 2_296_922);
}

#[test]
fn forward_and_backward_give_logits_and_finite_gradients_float_and_all_shift() {
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(5);
    for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Ps, 58), (ShiftKind::Q, 58)] {
        let net = Network::init(&spec(kind, depth, 32), &device);
        let x = Tensor::<4>::random(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let logits = net.forward(x);
        assert_eq!(logits.dims(), [2, 10]);
        let grads = logits.clone().powi_scalar(2).sum().backward();
        assert!(vals(logits.inner()).iter().all(|v| v.is_finite()));
        for (i, c) in convs(&net).into_iter().enumerate() {
            let g = vals(conv_weight(c).grad(&grads).unwrap());
            assert!(g.iter().all(|v| v.is_finite()), "{kind} {depth}: conv {i}");
            assert!(
                g.iter().any(|&v| v != 0.0),
                "{kind} {depth}: conv {i} learns"
            );
        }
    }
}

#[test]
fn the_fused_cpu_convolution_gives_burns_logits_float_and_all_ps() {
    // Depthwise and pointwise convs through the fused path against burn's grouped conv, over
    // the whole network (a 16x16 input keeps the debug build quick; every layer still runs).
    use dsnn_hpo::shift::cpu_conv;
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(8);
    for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Ps, 58)] {
        let net = Network::init(&spec(kind, depth, 16), &device);
        let x = Tensor::<4>::random(
            [2, 3, 16, 16],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let run = |fused: bool| {
            cpu_conv::set_enabled(fused);
            let logits = net.forward(x.clone());
            let grads = logits.clone().powi_scalar(2).sum().backward();
            let dw = conv_weight(convs(&net)[2]).grad(&grads).unwrap();
            cpu_conv::set_enabled(true);
            (vals(logits.inner()), vals(dw))
        };
        let (fused, burn) = (run(true), run(false));
        // Gradients only for the float network: with fixed-point activations a rounding-sized
        // change flips ReLU and clamp masks through 58 layers (the layer test in tests/shift.rs
        // compares a depthwise shift layer's gradients instead).
        let checks = if depth == 0 { 2 } else { 1 };
        for (what, a, b) in [
            ("logits", &fused.0, &burn.0),
            ("depthwise weight gradient", &fused.1, &burn.1),
        ]
        .into_iter()
        .take(checks)
        {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let d = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
            assert!(d < 1e-3, "{kind} depth {depth}: {what} differ by {d:e}");
        }
    }
}

/// Records the per-image shape of every table layer's output, in the order the forward runs.
struct Shapes(Vec<Vec<usize>>);

impl dsnn_hpo::model::Laps for Shapes {
    fn layer<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        self.0.push(t.dims()[1..].to_vec());
        t
    }
    fn other<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        t
    }
}

#[test]
fn the_forward_runs_the_table_in_order_at_cifar_tiny_imagenet_and_caltech_sizes() {
    // The per-layer energy profile attributes time by this order: each lap must be the
    // table's next layer, shortcut convs included, at every input size.
    let _rng = rng_lock();
    let device = Device::flex();
    for side in [32, 64, 128] {
        let spec = spec(ShiftKind::Ps, 20, side);
        let net = Network::init(&spec, &device).valid();
        let x = Tensor::<4>::zeros([1, 3, side, side], &device);
        let mut shapes = Shapes(Vec::new());
        let logits = net.forward_with(x, &mut shapes);
        assert_eq!(logits.dims(), [1, 10]);
        let expected: Vec<Vec<usize>> = spec.layers.iter().map(|l| l.output.clone()).collect();
        assert_eq!(shapes.0, expected, "{side}x{side}");
    }
}
