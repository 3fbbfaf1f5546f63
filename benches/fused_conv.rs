//! Forward and forward+backward of one ResNet20-sized convolution, and of one MobileNetV2-sized
//! depthwise convolution, at batch 128 on burn's CPU backend: the fused op of `shift::cpu_conv`
//! against burn's `conv2d`, both under autodiff.
//!
//! `cargo bench --bench fused_conv`; criterion reports the time per call and images/s.

use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dsnn_hpo::shift::cpu_conv::{Conv2dParams, conv2d};

const BATCH: usize = 128;
/// 3x3, stride 1, padding 1: the shape of every non-downsampling ResNet20 convolution.
const PARAMS: Conv2dParams = Conv2dParams {
    stride: [1, 1],
    padding: [1, 1],
    groups: 1,
    fixed_point_input: None,
};

type ConvFn = fn(Tensor<4>, Tensor<4>, Conv2dParams) -> Tensor<4>;

fn burn_op(x: Tensor<4>, w: Tensor<4>, p: Conv2dParams) -> Tensor<4> {
    burn_conv2d(x, w, None, p.options())
}

fn fused_op(x: Tensor<4>, w: Tensor<4>, p: Conv2dParams) -> Tensor<4> {
    conv2d(x, w, None, p)
}

fn bench_conv(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(0);
    // ResNet20's first stage (16 channels at 32x32) and last stage (64 channels at 8x8), and
    // the depthwise 3x3s of MobileNetV2's second block (96 channels at 32x32, one per group)
    // and of its last stage (960 channels at 4x4).
    for (name, channels, side, groups) in [
        ("conv3x3_b128_16ch_32x32", 16, 32, 1),
        ("conv3x3_b128_64ch_8x8", 64, 8, 1),
        ("depthwise3x3_b128_96ch_32x32", 96, 32, 96),
        ("depthwise3x3_b128_960ch_4x4", 960, 4, 960),
    ] {
        let params = Conv2dParams { groups, ..PARAMS };
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        group.throughput(Throughput::Elements(BATCH as u64));
        let x = Tensor::<4>::random(
            [BATCH, channels, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let w = Tensor::<4>::random(
            [channels, channels / groups, 3, 3],
            Distribution::Normal(0.0, 0.1),
            &device,
        )
        .require_grad();
        let ops: [(&str, ConvFn); 2] = [("burn", burn_op), ("fused", fused_op)];
        for (op, f) in ops {
            group.bench_function(format!("{op}/forward"), |b| {
                b.iter(|| {
                    let y = f(x.clone(), w.clone(), params);
                    device.sync().expect("device sync");
                    y
                })
            });
            group.bench_function(format!("{op}/forward_backward"), |b| {
                b.iter(|| {
                    let grads = f(x.clone(), w.clone(), params).sum().backward();
                    device.sync().expect("device sync");
                    grads
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
