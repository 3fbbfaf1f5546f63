//! Training-mode batch norm at ResNet20's three stage sizes, batch 128, on burn's CPU backend:
//! burn's `BatchNorm` module against the fused op (`model::batch_norm::batch_norm_auto`), both
//! under autodiff, forward and forward + `sum().backward()`.
//!
//! `cargo bench --bench batch_norm`; criterion reports the time per call and images/s.

use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dsnn_hpo::model::batch_norm::batch_norm_auto;
use dsnn_hpo::shift::cpu_conv;

const BATCH: usize = 128;

fn bench_batch_norm(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(0);
    for (channels, side) in [(16, 32), (32, 16), (64, 8)] {
        let mut group = c.benchmark_group(format!("batch_norm_b128_{channels}ch_{side}x{side}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(BATCH as u64));
        let x = Tensor::<4>::random(
            [BATCH, channels, side, side],
            Distribution::Normal(0.5, 1.0),
            &device,
        )
        .require_grad();
        let bn: BatchNorm = BatchNormConfig::new(channels).init(&device);
        for (op, fused) in [("burn", false), ("fused", true)] {
            cpu_conv::set_enabled(fused);
            group.bench_function(format!("{op}/forward"), |b| {
                b.iter(|| {
                    let y = batch_norm_auto(&bn, x.clone());
                    device.sync().expect("device sync");
                    y
                })
            });
            group.bench_function(format!("{op}/forward_backward"), |b| {
                b.iter(|| {
                    let grads = batch_norm_auto(&bn, x.clone()).sum().backward();
                    device.sync().expect("device sync");
                    grads
                })
            });
        }
        cpu_conv::set_enabled(true);
        group.finish();
    }
}

criterion_group!(benches, bench_batch_norm);
criterion_main!(benches);
