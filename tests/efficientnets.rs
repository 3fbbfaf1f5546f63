//! EfficientNet-B0 with SiLU and drop connect, and EfficientNetV2-B0, as burn builds them
//! from the layer table; drop connect through the training loop.
#![cfg(feature = "dsnn")]

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use dsnn_hpo::arch::{Activation, Backbone, InputShape, NetSpec};
use dsnn_hpo::data::{DataConfig, LoadedData};
use dsnn_hpo::model::{ConvLayer, DropConnect, Network, V2Block};
use dsnn_hpo::shift::ShiftKind;
use dsnn_hpo::train::{Quiet, RunOptions, TrainConfig, train};
mod common;
use common::{Shapes, burn_params, rng_lock, settings, vals};

fn spec(model: Backbone, act: Activation, kind: ShiftKind, depth: usize, side: usize) -> NetSpec {
    NetSpec::build_with(
        model,
        InputShape::new(3, side, side),
        10,
        settings(kind),
        depth,
        act,
    )
    .unwrap()
}

const B0: Backbone = Backbone::EfficientnetB0;
const V2: Backbone = Backbone::Efficientnetv2B0;

#[test]
fn the_forward_runs_the_table_in_order_silu_rows_included() {
    let _rng = rng_lock();
    let device = Device::flex();
    for (model, side) in [(B0, 32), (V2, 32), (V2, 64)] {
        let spec = spec(model, Activation::Silu, ShiftKind::Ps, 20, side);
        let net = Network::init(&spec, &device).valid();
        let mut shapes = Shapes(Vec::new());
        let logits = net.forward_with(Tensor::<4>::zeros([1, 3, side, side], &device), &mut shapes);
        assert_eq!(logits.dims(), [1, 10]);
        let expected: Vec<Vec<usize>> = spec.layers.iter().map(|l| l.output.clone()).collect();
        assert_eq!(shapes.0, expected, "{model} {side}x{side}");
    }
}

#[test]
fn efficientnetv2_modules_have_the_tables_parameters() {
    let _rng = rng_lock();
    let device = Device::flex();
    for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Ps, 170)] {
        let spec = spec(V2, Activation::Silu, kind, depth, 32);
        let net = Network::init(&spec, &device);
        assert_eq!(
            net.num_params() as u64,
            burn_params(&spec),
            "{kind} {depth}"
        );
        let Network::EfficientNetV2(m) = &net else {
            panic!("an EfficientNetV2")
        };
        let shift_dw = m
            .blocks
            .iter()
            .filter(|b| matches!(b, V2Block::Mb(mb) if matches!(mb.dw.conv, ConvLayer::Shift(_))))
            .count();
        assert_eq!(shift_dw, if depth == 0 { 0 } else { 30 });
    }
    assert_eq!(
        spec(V2, Activation::Silu, ShiftKind::Q, 0, 32)
            .totals()
            .trainable,
        37_837_202
    );
}

fn input(device: &Device, batch: usize, side: usize) -> Tensor<4> {
    Tensor::<4>::random(
        [batch, 3, side, side],
        Distribution::Normal(0.0, 1.0),
        device,
    )
}

#[test]
fn drop_connect_follows_the_seed_and_never_touches_evaluation() {
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(3);
    for model in [B0, V2] {
        let net = Network::init(&spec(model, Activation::Silu, ShiftKind::Q, 0, 16), &device);
        let x = input(&device, 8, 16);
        let drop = |seed| DropConnect { rate: 0.5, seed };
        let run = |d: Option<&DropConnect>| vals(net.forward_train(x.clone(), d).inner());
        let plain = vals(net.forward(x.clone()).inner());
        let a = run(Some(&drop(1)));
        assert_eq!(a, run(Some(&drop(1))), "{model}: same seed, same masks");
        assert_ne!(a, run(Some(&drop(2))), "{model}: another seed, other masks");
        assert_ne!(a, plain, "{model}: training drops");
        let zero = DropConnect { rate: 0.0, seed: 1 };
        assert_eq!(
            run(Some(&zero)),
            plain,
            "{model}: rate 0 is no drop connect"
        );
        assert_eq!(run(None), plain);
        // Evaluation (no autodiff): the masks are never applied.
        let eval = net.valid();
        let xe = x.clone().inner();
        assert_eq!(
            vals(eval.forward_train(xe.clone(), Some(&drop(1)))),
            vals(eval.forward(xe)),
            "{model}: eval"
        );
    }
}

#[test]
fn gradients_flow_through_dropped_blocks_float_and_all_ps() {
    let _rng = rng_lock();
    let device = Device::flex().autodiff();
    device.seed(6);
    for (kind, depth) in [(ShiftKind::Q, 0), (ShiftKind::Ps, 84)] {
        let net = Network::init(&spec(B0, Activation::Silu, kind, depth, 16), &device);
        let d = DropConnect { rate: 0.5, seed: 9 };
        let logits = net.forward_train(input(&device, 4, 16), Some(&d));
        let grads = logits.powi_scalar(2).sum().backward();
        let Network::EfficientNet(m) = &net else {
            panic!("an EfficientNet")
        };
        let grad = |c: &ConvLayer| -> Vec<f32> {
            let p = match c {
                ConvLayer::Float(c) => c.weight.grad(&grads),
                ConvLayer::Shift(s) => match &s.params {
                    dsnn_hpo::shift::layer::ShiftParams::Q(w) => w.grad(&grads),
                    dsnn_hpo::shift::layer::ShiftParams::Ps(p) => p.shift.grad(&grads),
                },
            };
            vals(p.unwrap())
        };
        for (i, b) in m.blocks.iter().enumerate() {
            let g = grad(&b.body.conv2);
            assert!(g.iter().all(|v| v.is_finite()), "{kind}: block {i}");
        }
        // The stem learns through every block, dropped or kept.
        assert!(grad(&m.conv1).iter().any(|&v| v != 0.0), "{kind}: stem");
    }
}

fn bundled(limit: usize) -> LoadedData {
    let cfg = DataConfig {
        limit_train: Some(limit),
        validation_fraction: 0.25,
        ..DataConfig::default()
    };
    cfg.load().expect("bundled data loads")
}

#[test]
fn training_with_drop_connect_repeats_under_a_seed() {
    let _rng = rng_lock();
    let data = bundled(48);
    let cfg = TrainConfig {
        model: B0,
        activation: Some(Activation::Silu),
        drop_connect: 0.4,
        shift_depth: 10,
        lr: 0.01,
        batch_size: 12,
        // The schedule spans both epochs in the 1-epoch run too, as the optimizer sets it.
        schedule_epochs: Some(2),
        seed: 5,
        ..TrainConfig::default()
    };
    let run_with = |c: &TrainConfig, epochs: usize, opts: &RunOptions<'_>| {
        let r = train(c, &data, &Device::flex(), epochs, opts, &mut Quiet).expect("training runs");
        (r.train_loss.to_bits(), r.valid_loss.to_bits())
    };
    let run = |c: &TrainConfig| run_with(c, 2, &RunOptions::default());
    let straight = run(&cfg);
    assert_eq!(straight, run(&cfg), "same config and seed");
    let without = TrainConfig {
        drop_connect: 0.0,
        ..cfg.clone()
    };
    assert_ne!(straight, run(&without), "drop connect changes training");
    // The masks follow the global step, so a continued run draws the straight run's masks.
    let dir = tempfile::tempdir().unwrap();
    let save = RunOptions {
        save_to: Some(dir.path()),
        ..Default::default()
    };
    run_with(&cfg, 1, &save);
    let resume = RunOptions {
        resume_from: Some(dir.path()),
        ..Default::default()
    };
    assert_eq!(
        run_with(&cfg, 2, &resume),
        straight,
        "1 + 1 epochs = 2 epochs"
    );
}
