//! DeepShift layer semantics on burn's CPU backend, against hand-computed values.
#![cfg(feature = "dsnn")]

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use dsnn_hpo::arch::{Backbone, InputShape, NetSpec};
use dsnn_hpo::model::{ConvLayer, DenseLayer, Network, V2Block};
use dsnn_hpo::shift::layer::{ShiftConv2dConfig, ShiftLinearConfig};
use dsnn_hpo::shift::quant::{
    fixed_point, pow2, ps_weight, q_weight, quantize_ps, quantize_q, round,
};
use dsnn_hpo::shift::{Rounding, ShiftKind, ShiftSettings};
mod common;
use common::{rng_lock, vals};

/// burn's backend RNG is process-wide and tests run on parallel threads: every test that seeds
/// it or draws from it (stochastic rounding, initialisation, random inputs) holds this lock, so
/// another test's draws cannot land between a seed and the draws it should fix.
fn cpu() -> Device {
    Device::flex()
}

fn t1(v: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

const DET: Rounding = Rounding::Deterministic;

#[test]
fn pow2_is_exact_over_the_whole_shift_range() {
    let p: Vec<f32> = (-127..=0).map(|p| p as f32).collect();
    let got = vals(pow2(t1(&p, &cpu())));
    for (p, g) in p.iter().zip(got) {
        assert_eq!(g, 2f32.powi(*p as i32), "2^{p}");
    }
}

#[test]
fn q_rounding_by_hand_at_2_3_5_8_bits() {
    let w = [0.3f32, -0.7, 0.05, 1.5, -0.0001, 0.0];
    let cases: [(u32, [f32; 6]); 4] = [
        // Range clamps |w| into [2^-1, 1]: every small weight becomes 0.5; zero gets sign +.
        (2, [0.5, -0.5, 0.5, 1.0, -0.5, 0.5]),
        (3, [0.25, -0.5, 0.125, 1.0, -0.125, 0.125]),
        // log2 0.3 = -1.74 -> -2; log2 0.7 = -0.51 -> -1; log2 0.05 = -4.32 -> -4;
        // log2 1e-4 = -13.29 -> -13; 0 clamps to 2^-15.
        (5, [0.25, -0.5, 0.0625, 1.0, -1.0 / 8192.0, 1.0 / 32768.0]),
        (8, [0.25, -0.5, 0.0625, 1.0, -1.0 / 8192.0, 2f32.powi(-127)]),
    ];
    for (bits, expected) in cases {
        let got = vals(quantize_q(t1(&w, &cpu()), bits, DET));
        assert_eq!(got, expected, "weight_bits {bits}");
    }
}

#[test]
fn q_rounds_exactly_at_powers_of_two_and_at_sqrt_2() {
    // round(log2 m) flips at m = sqrt 2: the f32 just below it rounds down, the next one up,
    // at every exponent; exact powers of two stay themselves.
    let below = f32::from_bits(std::f32::consts::SQRT_2.to_bits());
    assert!((below as f64) < std::f64::consts::SQRT_2);
    let above = f32::from_bits(below.to_bits() + 1);
    let mut w = Vec::new();
    let mut expected = Vec::new();
    for e in -15..=-1 {
        let scale = 2f32.powi(e);
        w.extend([scale, below * scale, -above * scale]);
        expected.extend([scale, scale, -2.0 * scale]);
    }
    let got = vals(quantize_q(t1(&w, &cpu()), 5, DET));
    assert_eq!(got, expected);
}

#[test]
fn stochastic_q_and_ps_use_the_given_draws() {
    let _rng = rng_lock();
    // log2 0.75 = -0.415: floor -1, fraction 0.585; the draw decides 2^0 or 2^-1.
    let w = [0.75f32, 0.75, -0.75];
    let u = [0.5f32, 0.6, 0.58];
    let got = vals(q_weight(t1(&w, &cpu()), 5, Some(t1(&u, &cpu()))));
    assert_eq!(got, [1.0, 0.5, -1.0]);
    // PS: P = -1.25 rounds up to -1 when u < 0.75; S = -0.5 rounds to 0 (sign 0) when u < 0.5.
    let p = [-1.25f32, -1.25, -1.25];
    let s = [0.3f32, 0.3, -0.5];
    let (up, us) = ([0.7f32, 0.8, 0.1], [0.2f32, 0.4, 0.3]);
    let got = vals(ps_weight(
        t1(&p, &cpu()),
        t1(&s, &cpu()),
        5,
        Some((t1(&up, &cpu()), t1(&us, &cpu()))),
    ));
    // signs: 0.3 -> 1 (u 0.2 < 0.3), 0 (u 0.4 >= 0.3); -0.5 -> 0 (u 0.3 < 0.5).
    assert_eq!(got, [0.5, 0.0, 0.0]);
}

#[test]
fn ps_rounding_by_hand_at_2_3_5_8_bits() {
    let p = [-2.4f32, -0.6, 0.7, -20.0, -3.5];
    // round(S): 1, -0 (sign 0), -1, 0, 2 -> signs 1, 0, -1, 0, 1.
    let s = [0.7f32, -0.2, -0.9, 0.4, 1.6];
    let cases: [(u32, [f32; 5]); 4] = [
        (2, [1.0, 0.0, -1.0, 0.0, 1.0]),   // only p = 0 exists
        (3, [0.25, 0.0, -1.0, 0.0, 0.25]), // p in -2..=0
        // -3.5 rounds half to even: -4.
        (5, [0.25, 0.0, -1.0, 0.0, 0.0625]),
        (8, [0.25, 0.0, -1.0, 0.0, 0.0625]),
    ];
    for (bits, expected) in cases {
        let got = vals(quantize_ps(t1(&p, &cpu()), t1(&s, &cpu()), bits, DET));
        assert_eq!(got, expected, "weight_bits {bits}");
    }
    // The one weight with a non-zero sign and a large |P| shows the clamp: -20 -> -14 at 5 bits.
    let got = vals(quantize_ps(
        t1(&[-20.0], &cpu()),
        t1(&[1.0], &cpu()),
        5,
        DET,
    ));
    assert_eq!(got, [2f32.powi(-14)]);
}

#[test]
fn stochastic_rounding_is_unbiased_and_seeded() {
    let _rng = rng_lock();
    let device = cpu();
    let n = 200_000;
    for x in [-1.737f32, 2.25, 0.5, -3.0] {
        device.seed(11);
        let t = Tensor::<1>::full([n], x, &device);
        let r = round(t, Rounding::Stochastic);
        let v = vals(r);
        assert!(v.iter().all(|&r| r == x.floor() || r == x.floor() + 1.0));
        let mean = v.iter().map(|&r| r as f64).sum::<f64>() / n as f64;
        // Binomial standard error at n = 200k is below 0.0012; allow 4 sigma.
        assert!((mean - x as f64).abs() < 0.005, "x {x}: mean {mean}");
    }
    let draw = |seed: u64| {
        device.seed(seed);
        vals(round(
            Tensor::<1>::full([64], 0.5, &device),
            Rounding::Stochastic,
        ))
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3), draw(4));
}

#[test]
fn fixed_point_floor_and_clamp_at_the_edges() {
    // I = 4, F = 2: grid 0.25, range [-8, 7].
    let x = [0.3f32, -0.3, 7.9, -8.1, 6.99, 0.25, -8.0, 7.0];
    let got = vals(fixed_point(t1(&x, &cpu()), 4, 2));
    assert_eq!(got, [0.25, -0.5, 7.0, -8.0, 6.75, 0.25, -8.0, 7.0]);
    // I = 1, F = 1: range [-1, 0]; floor, not round: 0.7 -> 0.5 -> clamped to 0.
    let got = vals(fixed_point(t1(&[0.7, -0.3, -5.0], &cpu()), 1, 1));
    assert_eq!(got, [0.0, -0.5, -1.0]);
    // 16.16 keeps 1/65536 steps.
    let got = vals(fixed_point(
        t1(&[1.0 / 65536.0 + 1e-7, 40000.0], &cpu()),
        16,
        16,
    ));
    assert_eq!(got, [1.0 / 65536.0, 32767.0]);
}

#[test]
fn straight_through_gradients_match_the_reference() {
    let _rng = rng_lock();
    let device = cpu().autodiff();
    let c = [1.0f32, -2.0, 3.0, 0.5];

    // Q: dL/dW = dL/dWq exactly, also where |W| was clamped.
    let w = t1(&[0.3, -0.7, 3.0, 0.0], &device).require_grad();
    let loss = (quantize_q(w.clone(), 5, DET) * t1(&c, &device)).sum();
    let g = vals(w.grad(&loss.backward()).unwrap());
    assert_eq!(g, c);

    // PS: dL/dP = g s 2^p ln2, dL/dS = g.
    let p = t1(&[-2.4, -0.6, -1.2, 3.0], &device).require_grad();
    let s = t1(&[0.7, -0.9, 0.2, 1.0], &device).require_grad();
    let loss = (quantize_ps(p.clone(), s.clone(), 5, DET) * t1(&c, &device)).sum();
    let grads = loss.backward();
    let gp = vals(p.grad(&grads).unwrap());
    let gs = vals(s.grad(&grads).unwrap());
    let ln2 = std::f32::consts::LN_2;
    // weights: 2^-2, -2^-1, 0 (sign 0), 2^0 (P clamped to 0)
    let expected_gp = [1.0 * 0.25 * ln2, -2.0 * -0.5 * ln2, 0.0, 0.5 * ln2];
    for (g, e) in gp.iter().zip(expected_gp) {
        assert!((g - e).abs() < 1e-6, "dL/dP {gp:?} vs {expected_gp:?}");
    }
    assert_eq!(gs, c, "the sign's gradient is not scaled by 2^p");

    // Through an intermediate (non-leaf) tensor too: a shift layer in the middle of a network
    // must pass gradients on to the layers before it.
    let x = t1(&[0.3, -0.7, 3.0, 0.0], &device).require_grad();
    let mid = x.clone().mul_scalar(2.0);
    let loss = (quantize_q(fixed_point(mid, 8, 8), 5, DET) * t1(&c, &device)).sum();
    let g = vals(x.grad(&loss.backward()).unwrap());
    assert_eq!(g, c.map(|v| 2.0 * v));
    let p = t1(&[-2.4, -0.6], &device).require_grad();
    let loss = quantize_ps(p.clone().mul_scalar(1.0), t1(&[1.0, 1.0], &device), 5, DET).sum();
    let g = vals(p.grad(&loss.backward()).unwrap());
    assert!((g[0] - 0.25 * std::f32::consts::LN_2).abs() < 1e-6, "{g:?}");

    // Fixed point: straight through, clamped values included.
    let x = t1(&[0.3, -9.0, 100.0, 1.0], &device).require_grad();
    let loss = (fixed_point(x.clone(), 4, 2) * t1(&c, &device)).sum();
    assert_eq!(vals(x.grad(&loss.backward()).unwrap()), c);
}

fn settings(kind: ShiftKind, bits: u32) -> ShiftSettings {
    ShiftSettings {
        kind,
        weight_bits: bits,
        rounding: Rounding::Stochastic,
        activation_integer_bits: 8,
        activation_fraction_bits: 6,
    }
}

#[test]
fn exported_integers_reproduce_the_eval_forward_exactly() {
    let _rng = rng_lock();
    let device = cpu().autodiff();
    for kind in [ShiftKind::Q, ShiftKind::Ps] {
        for bits in [2, 3, 5, 8] {
            device.seed(5);
            let conv = ShiftConv2dConfig::new([3, 4], 3, settings(kind, bits))
                .with_padding(1)
                .with_bias(true)
                .init(&device);
            let x = Tensor::<4>::random(
                [2, 3, 6, 6],
                burn::tensor::Distribution::Normal(0.0, 2.0),
                &cpu(),
            );
            let eval = conv.valid();
            let exported = conv.export().unwrap();
            assert_eq!(exported.weights.len(), 4 * 3 * 9);
            assert_eq!(
                exported.weights.data.len(),
                (108 * bits as usize).div_ceil(8)
            );
            let a = vals(eval.forward(x.clone()));
            let b = vals(exported.forward(x).unwrap());
            assert_eq!(a, b, "conv {kind} {bits} bits");

            let lin = ShiftLinearConfig::new(7, 5, settings(kind, bits)).init(&device);
            let x =
                Tensor::<2>::random([3, 7], burn::tensor::Distribution::Normal(0.0, 2.0), &cpu());
            let a = vals(lin.valid().forward(x.clone()));
            let b = vals(lin.export().unwrap().forward(x).unwrap());
            assert_eq!(a, b, "linear {kind} {bits} bits");
        }
    }
}

#[test]
fn eval_mode_rounds_deterministically_even_for_stochastic_layers() {
    let _rng = rng_lock();
    let device = cpu().autodiff();
    let conv = ShiftConv2dConfig::new([2, 2], 3, settings(ShiftKind::Q, 5)).init(&device);
    let eval = conv.valid();
    device.seed(1);
    let a = vals(eval.quantized_weight());
    device.seed(2);
    let b = vals(eval.quantized_weight());
    assert_eq!(a, b);
    // In training the stochastic draws differ between seeds.
    device.seed(1);
    let c = vals(conv.quantized_weight());
    device.seed(2);
    let d = vals(conv.quantized_weight());
    assert_ne!(c, d);
}

fn count_shift_layers(net: &Network) -> usize {
    let conv = |c: &ConvLayer| matches!(c, ConvLayer::Shift(_)) as usize;
    let dense = |d: &DenseLayer| matches!(d, DenseLayer::Shift(_)) as usize;
    match net {
        Network::ResNet(r) => {
            conv(&r.conv1)
                + r.blocks
                    .iter()
                    .map(|b| conv(&b.conv1) + conv(&b.conv2))
                    .sum::<usize>()
                + dense(&r.fc)
        }
        Network::SmallCnn(m) => conv(&m.conv1) + conv(&m.conv2) + dense(&m.fc1) + dense(&m.fc2),
        Network::MobileNetV2(m) => {
            conv(&m.conv1)
                + m.blocks
                    .iter()
                    .map(|b| {
                        conv(&b.conv1)
                            + conv(&b.conv2)
                            + conv(&b.conv3)
                            + b.shortcut.as_ref().map_or(0, |s| conv(&s.conv))
                    })
                    .sum::<usize>()
                + conv(&m.conv2)
                + dense(&m.linear)
        }
        Network::EfficientNet(m) => {
            conv(&m.conv1)
                + m.blocks
                    .iter()
                    .map(|b| {
                        conv(&b.body.conv1)
                            + conv(&b.body.conv2)
                            + conv(&b.body.conv3)
                            + b.body.shortcut.as_ref().map_or(0, |s| conv(&s.conv))
                            + conv(&b.fc1)
                            + conv(&b.fc2)
                    })
                    .sum::<usize>()
                + dense(&m.linear)
        }
        Network::Vgg(m) => {
            m.stages
                .iter()
                .flat_map(|s| &s.convs)
                .map(|u| conv(&u.conv))
                .sum::<usize>()
                + dense(&m.classifier)
        }
        Network::GoogLeNet(m) => {
            conv(&m.pre.conv)
                + m.modules
                    .iter()
                    .flat_map(|i| [&i.b1, &i.b4].into_iter().chain(&i.b2).chain(&i.b3))
                    .map(|u| conv(&u.conv))
                    .sum::<usize>()
                + dense(&m.linear)
        }
        Network::EfficientNetV2(m) => {
            conv(&m.stem.conv)
                + m.blocks
                    .iter()
                    .map(|b| match b {
                        V2Block::Fused(f) => {
                            conv(&f.conv.conv) + f.project.as_ref().map_or(0, |p| conv(&p.conv))
                        }
                        V2Block::Mb(mb) => {
                            mb.expand.as_ref().map_or(0, |e| conv(&e.conv))
                                + conv(&mb.dw.conv)
                                + conv(&mb.se_fc1)
                                + conv(&mb.se_fc2)
                                + conv(&mb.project.conv)
                        }
                    })
                    .sum::<usize>()
                + dense(&m.linear)
        }
    }
}

#[test]
fn resnet20_layer_and_parameter_counts_at_depths_0_1_6_20() {
    let _rng = rng_lock();
    let device = cpu();
    for (depth, shift_layers, shifted_weights) in [
        (0usize, 0usize, 0u64),
        (1, 1, 640),
        (6, 6, 640 + 5 * 36_864),
        (20, 20, 269_722 - 1_376 - 10),
    ] {
        for kind in [ShiftKind::Q, ShiftKind::Ps] {
            let spec = NetSpec::build(
                Backbone::Resnet20,
                InputShape::new(3, 32, 32),
                10,
                settings(kind, 5),
                depth,
            )
            .unwrap();
            let net = Network::init(&spec, &device);
            assert_eq!(count_shift_layers(&net), shift_layers, "depth {depth}");
            // PS trains a shift and a sign per weight; BN (1,376 params) and the fc bias stay float.
            let expected = match kind {
                ShiftKind::Q => 269_722,
                ShiftKind::Ps => 269_722 + shifted_weights,
            };
            // burn counts batch norm's running mean and variance (2 x 688) as params too.
            assert_eq!(
                net.num_params() as u64,
                expected + 1_376,
                "depth {depth} {kind}"
            );
            assert_eq!(spec.totals().trainable, expected);
        }
    }
}

#[test]
fn networks_map_images_to_logits() {
    let _rng = rng_lock();
    let device = cpu();
    for (model, input) in [
        (Backbone::Resnet20, InputShape::new(3, 32, 32)),
        (Backbone::SmallCnn, InputShape::new(1, 28, 28)),
        (Backbone::SmallCnn, InputShape::new(3, 17, 23)),
    ] {
        let spec = NetSpec::build(model, input, 7, settings(ShiftKind::Ps, 4), 3).unwrap();
        let net = Network::init(&spec, &device).valid();
        let x = Tensor::<4>::zeros([2, input.channels, input.height, input.width], &device);
        assert_eq!(net.forward(x).dims(), [2, 7], "{model} {input}");
    }
}

#[test]
fn resnet20_trains_the_same_on_the_fused_cpu_convolution_as_on_burns() {
    // The whole network, float / all-Q / all-PS with fixed-point activations: the fused
    // convolution (src/shift/cpu_conv.rs) and burn's give the same logits up to float rounding
    // carried through 20 layers and batch norm.
    use dsnn_hpo::shift::cpu_conv;
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(3);
    for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Q, 20), (ShiftKind::Ps, 20)] {
        let mut s = settings(kind, 5);
        s.rounding = DET;
        s.activation_integer_bits = 16;
        s.activation_fraction_bits = 16;
        let spec =
            NetSpec::build(Backbone::Resnet20, InputShape::new(3, 32, 32), 10, s, depth).unwrap();
        let net = Network::init(&spec, &device);
        let x = Tensor::<4>::random(
            [3, 3, 32, 32],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let run = |fused: bool| {
            cpu_conv::set_enabled(fused);
            let x = x.clone().require_grad();
            let logits = net.forward(x.clone());
            let grads = (logits.clone() * logits.clone()).sum().backward();
            let gx = x.grad(&grads).unwrap();
            (vals(logits.inner()), vals(gx))
        };
        let (fused, burn) = (run(true), run(false));
        cpu_conv::set_enabled(true);
        let dl = relative_max_difference(&fused.0, &burn.0);
        assert!(dl < 1e-4, "{kind:?} depth {depth}: logits differ by {dl:e}");
        assert!(
            fused.1.iter().any(|v| *v != 0.0),
            "a gradient reached the input"
        );
        // The float network's input gradient too. With fixed-point activations many values
        // are exact zeros at a ReLU, so a rounding-sized change flips gradient masks: burn's own
        // input gradient moves by up to 8% (max norm) when the input moves by 1e-6 (measured at
        // depth 19), and the layer test above checks the quantized layers' gradients instead.
        if depth == 0 {
            let dg = relative_max_difference(&fused.1, &burn.1);
            assert!(dg < 1e-4, "float: input gradients differ by {dg:e}");
        }
    }
}

/// Every batch norm's running mean and variance, in layer order.
fn running_statistics(net: &Network) -> Vec<f32> {
    let Network::ResNet(r) = net else {
        panic!("a ResNet")
    };
    let mut bns = vec![&r.bn1];
    for b in &r.blocks {
        bns.extend([&b.bn1, &b.bn2]);
    }
    bns.iter()
        .flat_map(|bn| {
            [bn.running_mean.value_sync(), bn.running_var.value_sync()]
                .into_iter()
                .flat_map(vals)
        })
        .collect()
}

#[test]
fn resnet20_batch_norm_statistics_and_eval_logits_match_burns() {
    // A training step on the fused CPU path (convolutions and batch norm) and on burn's, from
    // the same weights: the running statistics it leaves behind, and the eval-mode logits that
    // use them, agree up to float rounding carried through the layers.
    use dsnn_hpo::shift::cpu_conv;
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(5);
    let spec = NetSpec::build(
        Backbone::Resnet20,
        InputShape::new(3, 32, 32),
        10,
        settings(ShiftKind::Q, 5),
        0,
    )
    .unwrap();
    let fused_net = Network::init(&spec, &device);
    let x = Tensor::<4>::random(
        [4, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.5, 1.0),
        &device,
    );
    // The same weights and fresh running states in a second network (clones share the states).
    let burn_net = Network::init(&spec, &device).load_record(fused_net.clone().into_record());
    let before = running_statistics(&fused_net);
    assert!(
        before == running_statistics(&burn_net),
        "same starting statistics"
    );
    let step = |net: &Network, fused: bool| {
        cpu_conv::set_enabled(fused);
        let logits = net.forward(x.clone());
        let _grads = (logits.clone() * logits).sum().backward();
        let stats = running_statistics(net);
        let eval = vals(net.clone().valid().forward(x.clone().inner()));
        cpu_conv::set_enabled(true);
        (stats, eval)
    };
    let (fused, burn) = (step(&fused_net, true), step(&burn_net, false));
    assert!(fused.0 != before, "the step updated the statistics");
    let ds = relative_max_difference(&fused.0, &burn.0);
    assert!(ds < 1e-6, "running statistics differ by {ds:e}");
    let de = relative_max_difference(&fused.1, &burn.1);
    assert!(de < 1e-5, "eval logits differ by {de:e}");
}

#[test]
fn a_shift_layer_on_the_fused_cpu_convolution_matches_burns() {
    // Q and PS, fixed-point activations, the input's straight-through gradient and the weight's:
    // the fused convolution behind the quantizers gives burn's values up to float rounding.
    use dsnn_hpo::shift::cpu_conv;
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(3);
    for (kind, int_bits, frac_bits, stride) in [
        (ShiftKind::Q, 16, 16, 1),
        (ShiftKind::Ps, 16, 16, 2),
        (ShiftKind::Q, 8, 6, 2),
        (ShiftKind::Ps, 8, 6, 1),
    ] {
        let mut s = settings(kind, 5);
        s.rounding = DET;
        s.activation_integer_bits = int_bits;
        s.activation_fraction_bits = frac_bits;
        let layer = ShiftConv2dConfig::new([16, 8], 3, s)
            .with_stride(stride)
            .with_padding(1)
            .with_bias(true)
            .init(&device);
        let x = Tensor::<4>::random(
            [2, 16, 9, 9],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let run = |fused: bool| {
            cpu_conv::set_enabled(fused);
            let x = x.clone().require_grad();
            let y = layer.forward(x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            let gw = match &layer.params {
                dsnn_hpo::shift::layer::ShiftParams::Q(w) => w.grad(&grads).unwrap(),
                dsnn_hpo::shift::layer::ShiftParams::Ps(p) => p.shift.grad(&grads).unwrap(),
            };
            (vals(y.inner()), vals(x.grad(&grads).unwrap()), vals(gw))
        };
        let (fused, burn) = (run(true), run(false));
        cpu_conv::set_enabled(true);
        for (what, a, b) in [
            ("output", &fused.0, &burn.0),
            ("input gradient", &fused.1, &burn.1),
            ("weight gradient", &fused.2, &burn.2),
        ] {
            let d = relative_max_difference(a, b);
            assert!(
                d < 1e-4,
                "{kind:?} {int_bits}.{frac_bits} stride {stride}: {what} differs by {d:e}"
            );
        }
    }
}

fn relative_max_difference(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
}

#[test]
fn a_depthwise_shift_conv_is_burns_grouped_conv_of_the_quantized_weight() {
    // Depthwise (groups = channels) and grouped, Q and PS, strided, on the fused CPU path and
    // on burn's: the layer computes burn's grouped conv of the fixed-point input and its
    // quantized weight [out, in / groups, k, k].
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use dsnn_hpo::shift::cpu_conv;
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(7);
    for (kind, [cin, cout], groups, stride) in [
        (ShiftKind::Q, [6, 6], 6, 1),
        (ShiftKind::Ps, [6, 6], 6, 2),
        (ShiftKind::Q, [4, 6], 2, 2),
        (ShiftKind::Ps, [6, 12], 3, 1),
    ] {
        let mut s = settings(kind, 5);
        s.rounding = DET;
        let layer = ShiftConv2dConfig::new([cin, cout], 3, s)
            .with_stride(stride)
            .with_padding(1)
            .with_bias(true)
            .with_groups(groups)
            .init(&device);
        let w = layer.quantized_weight();
        assert_eq!(w.dims(), [cout, cin / groups, 3, 3]);
        let bias = layer.bias.as_ref().map(|b| fixed_point(b.val(), 8, 6));
        let x = Tensor::<4>::random(
            [2, cin, 7, 7],
            burn::tensor::Distribution::Normal(0.0, 2.0),
            &device,
        );
        let options = ConvOptions::new([stride, stride], [1, 1], [1, 1], groups);
        // burn's grouped conv with the layer's own quantizers in front: output and gradients.
        let run = |fused: bool, by_hand: bool| {
            cpu_conv::set_enabled(fused);
            let x = x.clone().require_grad();
            let y = if by_hand {
                conv2d(
                    fixed_point(x.clone(), 8, 6),
                    layer.quantized_weight(),
                    bias.clone(),
                    options.clone(),
                )
            } else {
                layer.forward(x.clone())
            };
            let grads = (y.clone() * y.clone()).sum().backward();
            cpu_conv::set_enabled(true);
            let gw = match &layer.params {
                dsnn_hpo::shift::layer::ShiftParams::Q(w) => w.grad(&grads).unwrap(),
                dsnn_hpo::shift::layer::ShiftParams::Ps(p) => p.shift.grad(&grads).unwrap(),
            };
            (vals(y.inner()), vals(x.grad(&grads).unwrap()), vals(gw))
        };
        let expected = run(false, true);
        for fused in [true, false] {
            let got = run(fused, false);
            for (what, a, b) in [
                ("output", &got.0, &expected.0),
                ("input gradient", &got.1, &expected.1),
                ("weight gradient", &got.2, &expected.2),
            ] {
                let d = relative_max_difference(a, b);
                assert!(
                    d < 1e-5,
                    "{kind:?} groups {groups} stride {stride} fused {fused}: {what} differs by {d:e}"
                );
            }
        }
    }
}

#[test]
fn an_exported_depthwise_conv_reproduces_the_eval_forward_exactly() {
    let _rng = rng_lock();
    let device = cpu().autodiff();
    for kind in [ShiftKind::Q, ShiftKind::Ps] {
        for bits in [2, 5, 8] {
            device.seed(9);
            let conv = ShiftConv2dConfig::new([8, 8], 3, settings(kind, bits))
                .with_stride(2)
                .with_padding(1)
                .with_groups(8)
                .init(&device);
            let x = Tensor::<4>::random(
                [2, 8, 6, 6],
                burn::tensor::Distribution::Normal(0.0, 2.0),
                &cpu(),
            );
            let exported = conv.export().unwrap();
            assert_eq!(exported.weights.shape, vec![8, 1, 3, 3]);
            assert_eq!(exported.groups, 8);
            let a = vals(conv.valid().forward(x.clone()));
            let b = vals(exported.forward(x).unwrap());
            assert_eq!(a, b, "depthwise {kind} {bits} bits");
        }
    }
}

#[test]
fn an_exported_conv_whose_groups_do_not_fit_its_input_is_an_error() {
    let _rng = rng_lock();
    let device = cpu();
    let conv = ShiftConv2dConfig::new([8, 8], 3, settings(ShiftKind::Ps, 5))
        .with_groups(8)
        .init(&device);
    let mut exported = conv.export().unwrap();
    let x = Tensor::<4>::zeros([1, 8, 4, 4], &device);
    for groups in [0, 3, 4] {
        exported.groups = groups;
        let err = exported.forward(x.clone()).unwrap_err().to_string();
        assert!(err.contains(&format!("{groups} groups")), "{err}");
    }
    // A layer stored before groups existed reads as ungrouped.
    let mut json = serde_json::to_value(&exported).unwrap();
    json.as_object_mut().unwrap().remove("groups");
    let old: dsnn_hpo::shift::layer::ExportedShiftConv2d = serde_json::from_value(json).unwrap();
    assert_eq!(old.groups, 1);
}
