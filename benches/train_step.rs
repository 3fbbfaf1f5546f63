//! One ResNet20 train step (forward, cross-entropy, backward, SGD-momentum update) at batch 128
//! on 3x32x32 inputs, on burn's CPU backend: float, every layer Q, every layer PS, each with the
//! fused CPU convolution (`shift::cpu_conv`) and with burn's own, side by side.
//!
//! `cargo bench --bench train_step`; criterion reports the step time and images/s.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig, momentum::MomentumConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dsnn_hpo::arch::{Backbone, InputShape, NetSpec};
use dsnn_hpo::model::Network;
use dsnn_hpo::shift::cpu_conv;
use dsnn_hpo::shift::{Rounding, ShiftKind, ShiftSettings};

const BATCH: usize = 128;

fn bench_train_step(c: &mut Criterion) {
    // As the binary does at start-up (src/train/malloc.rs).
    dsnn_hpo::train::malloc::keep_freed_memory();
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut group = c.benchmark_group("resnet20_train_step_b128");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    let runs = [
        ("float", 0, ShiftKind::Q),
        ("all_q", 20, ShiftKind::Q),
        ("all_ps", 20, ShiftKind::Ps),
    ];
    // Each network with the fused CPU convolution and with burn's, side by side in one run.
    for ((name, depth, kind), fused) in runs.into_iter().flat_map(|r| [(r, true), (r, false)]) {
        cpu_conv::set_enabled(fused);
        let name = format!("{name}_{}", if fused { "fused" } else { "burn" });
        let settings = ShiftSettings {
            kind,
            weight_bits: 5,
            rounding: Rounding::Deterministic,
            activation_integer_bits: 16,
            activation_fraction_bits: 16,
        };
        let spec = NetSpec::build(
            Backbone::Resnet20,
            InputShape::new(3, 32, 32),
            10,
            settings,
            depth,
        )
        .expect("valid spec");
        let mut model = Network::init(&spec, &device);
        let mut optim = SgdConfig::new()
            .with_momentum(Some(MomentumConfig::new()))
            .init();
        let x = Tensor::<4>::random([BATCH, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<1, Int>::from_data(
            burn::tensor::TensorData::new((0..BATCH as i64).map(|i| i % 10).collect(), [BATCH]),
            &device,
        );
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        group.bench_function(&name, |b| {
            b.iter(|| {
                let logits = model.forward(x.clone());
                let loss = loss_fn.forward(logits, y.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(0.05, model.clone(), grads);
                // Wait for the backend so the time covers the whole step.
                device.sync().expect("device sync");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_train_step);
criterion_main!(benches);
