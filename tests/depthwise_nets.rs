//! MobileNetV2 and EfficientNet-B0 as burn builds them from the layer table: sizes, gradients,
//! layer order, and the fused CPU convolution (depthwise, float and shift) against burn's.
#![cfg(feature = "dsnn")]

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use dsnn_hpo::arch::{Backbone, InputShape, NetSpec};
use dsnn_hpo::model::{ConvLayer, DenseLayer, InvertedResidual, Network};
use dsnn_hpo::shift::ShiftKind;
use dsnn_hpo::shift::layer::ShiftParams;
mod common;
use common::{Shapes, burn_params, rng_lock, settings, vals};

const MOBILENET: Backbone = Backbone::Mobilenetv2;
const EFFICIENTNET: Backbone = Backbone::EfficientnetB0;

/// Weight layers of each network: every layer shifted.
fn all(model: Backbone) -> usize {
    match model {
        Backbone::Mobilenetv2 => 58,
        _ => 84,
    }
}

fn spec(model: Backbone, kind: ShiftKind, depth: usize, side: usize) -> NetSpec {
    NetSpec::build(
        model,
        InputShape::new(3, side, side),
        10,
        settings(kind),
        depth,
    )
    .unwrap()
}

fn block_convs<'a>(b: &'a InvertedResidual, out: &mut Vec<&'a ConvLayer>) {
    out.extend([&b.conv1, &b.conv2, &b.conv3]);
    out.extend(b.shortcut.as_ref().map(|s| &s.conv));
}

/// Every conv of the network in table order, and its linear layer.
fn layers(net: &Network) -> (Vec<&ConvLayer>, &DenseLayer) {
    let mut out = Vec::new();
    match net {
        Network::MobileNetV2(m) => {
            out.push(&m.conv1);
            for b in &m.blocks {
                block_convs(b, &mut out);
            }
            out.push(&m.conv2);
            (out, &m.linear)
        }
        Network::EfficientNet(m) => {
            out.push(&m.conv1);
            for b in &m.blocks {
                block_convs(&b.body, &mut out);
                out.extend([&b.fc1, &b.fc2]);
            }
            (out, &m.linear)
        }
        _ => panic!("a MobileNetV2 or EfficientNet"),
    }
}

/// Whether `c` is one of EfficientNet's squeeze-and-excitation convs.
fn se_conv(net: &Network, c: &ConvLayer) -> bool {
    let Network::EfficientNet(m) = net else {
        return false;
    };
    m.blocks
        .iter()
        .any(|b| std::ptr::eq(&b.fc1, c) || std::ptr::eq(&b.fc2, c))
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
fn the_burn_modules_have_the_tables_parameters_at_depth_0_and_all() {
    let _rng = rng_lock();
    let device = Device::flex();
    for model in [MOBILENET, EFFICIENTNET] {
        for (kind, depth) in [
            (ShiftKind::Q, 0),
            (ShiftKind::Q, all(model)),
            (ShiftKind::Ps, 30),
            (ShiftKind::Ps, all(model)),
        ] {
            let spec = spec(model, kind, depth, 32);
            let net = Network::init(&spec, &device);
            let (convs, linear) = layers(&net);
            let shift_convs = convs
                .iter()
                .filter(|c| matches!(c, ConvLayer::Shift(_)))
                .count();
            let shift_linear = matches!(linear, DenseLayer::Shift(_)) as usize;
            assert_eq!(
                shift_convs + shift_linear,
                spec.totals().shift_layers.min(depth),
                "{model} {kind} {depth}"
            );
            assert_eq!(
                net.num_params() as u64,
                burn_params(&spec),
                "{model} {kind} depth {depth}"
            );
        }
    }
    assert_eq!(
        spec(MOBILENET, ShiftKind::Q, 0, 32).totals().trainable,
        2_296_922
    );
    assert_eq!(
        spec(EFFICIENTNET, ShiftKind::Q, 0, 32).totals().trainable,
        2_912_089
    );
}

#[test]
fn forward_and_backward_give_logits_and_finite_gradients_float_and_all_shift() {
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(5);
    for model in [MOBILENET, EFFICIENTNET] {
        for (kind, depth) in [
            (ShiftKind::Q, 0),
            (ShiftKind::Ps, all(model)),
            (ShiftKind::Q, all(model)),
        ] {
            let net = Network::init(&spec(model, kind, depth, 32), &device);
            let x = Tensor::<4>::random(
                [2, 3, 32, 32],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let logits = net.forward(x);
            assert_eq!(logits.dims(), [2, 10]);
            let grads = logits.clone().powi_scalar(2).sum().backward();
            assert!(vals(logits.inner()).iter().all(|v| v.is_finite()));
            let (convs, _) = layers(&net);
            let mut se_learns = false;
            for (i, c) in convs.iter().enumerate() {
                let g = vals(conv_weight(c).grad(&grads).unwrap());
                let at = format!("{model} {kind} {depth}: conv {i}");
                assert!(g.iter().all(|v| v.is_finite()), "{at}");
                let learns = g.iter().any(|&v| v != 0.0);
                // A squeeze-and-excitation conv of EfficientNet's narrow blocks (1 channel in
                // the middle) sits behind a ReLU that two images can leave dead, as in the
                // fork; every other conv must get a gradient.
                let se = model == EFFICIENTNET && se_conv(&net, c);
                se_learns |= se && learns;
                assert!(se || learns, "{at} learns");
            }
            assert!(
                model != EFFICIENTNET || se_learns,
                "{kind} {depth}: SE learns"
            );
        }
    }
}

#[test]
fn the_fused_cpu_convolution_gives_burns_logits_float_and_all_ps() {
    // Depthwise and pointwise convs through the fused path against burn's grouped conv, over
    // the whole network (MobileNetV2 at 16x16 keeps the debug build quick; every layer still
    // runs). EfficientNet's last stage is 1x1 even at 32x32: its batch norms normalize over
    // just the batch there, which turns rounding-sized differences into large ones when two
    // images are nearly equal, so it takes 4 images.
    use dsnn_hpo::shift::cpu_conv;
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(8);
    for model in [MOBILENET, EFFICIENTNET] {
        let (batch, side) = if model == MOBILENET { (2, 16) } else { (4, 32) };
        for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Ps, all(model))] {
            let net = Network::init(&spec(model, kind, depth, side), &device);
            let x = Tensor::<4>::random(
                [batch, 3, side, side],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |fused: bool| {
                cpu_conv::set_enabled(fused);
                let logits = net.forward(x.clone());
                let grads = logits.clone().powi_scalar(2).sum().backward();
                let dw = conv_weight(layers(&net).0[2]).grad(&grads).unwrap();
                cpu_conv::set_enabled(true);
                (vals(logits.inner()), vals(dw))
            };
            let (fused, burn) = (run(true), run(false));
            // Gradients only for the float network: with fixed-point activations a
            // rounding-sized change flips ReLU and clamp masks through every layer (the layer
            // test in tests/shift.rs compares a depthwise shift layer's gradients instead).
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
                assert!(
                    d < 1e-3,
                    "{model} {kind} depth {depth}: {what} differ by {d:e}"
                );
            }
        }
    }
}

#[test]
fn the_fused_cpu_convolution_gives_burns_eval_logits_on_small_maps() {
    // In eval mode batch norm uses its running statistics, so even EfficientNet's 1x1 maps
    // of a 16x16 input compare closely: the 1x1 convs with bias on a 1x1 map included.
    use dsnn_hpo::shift::cpu_conv;
    let _rng = rng_lock();
    let device = Device::flex();
    device.seed(4);
    for model in [MOBILENET, EFFICIENTNET] {
        for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Ps, all(model))] {
            let net = Network::init(&spec(model, kind, depth, 16), &device).valid();
            let x = Tensor::<4>::random(
                [2, 3, 16, 16],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |fused: bool| {
                cpu_conv::set_enabled(fused);
                let logits = vals(net.forward(x.clone()));
                cpu_conv::set_enabled(true);
                logits
            };
            let (a, b) = (run(true), run(false));
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let d = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
                / scale;
            assert!(
                d < 1e-4,
                "{model} {kind} depth {depth}: eval logits differ by {d:e}"
            );
        }
    }
}

#[test]
fn the_forward_runs_the_table_in_order_at_cifar_tiny_imagenet_and_caltech_sizes() {
    // The per-layer energy profile attributes time by this order: each lap must be the
    // table's next layer, shortcut and squeeze-and-excitation convs included, at every size.
    let _rng = rng_lock();
    let device = Device::flex();
    for model in [MOBILENET, EFFICIENTNET] {
        for side in [32, 64, 128] {
            let spec = spec(model, ShiftKind::Ps, 20, side);
            let net = Network::init(&spec, &device).valid();
            let x = Tensor::<4>::zeros([1, 3, side, side], &device);
            let mut shapes = Shapes(Vec::new());
            let logits = net.forward_with(x, &mut shapes);
            assert_eq!(logits.dims(), [1, 10]);
            let expected: Vec<Vec<usize>> = spec.layers.iter().map(|l| l.output.clone()).collect();
            assert_eq!(shapes.0, expected, "{model} {side}x{side}");
        }
    }
}
