//! The CubeCL quantizer kernels against the CPU tensor-op path, on the same inputs and the same
//! uniform draws. Built with `--features wgpu`; each test runs where a wgpu adapter exists (a GPU,
//! or Mesa's software Vulkan driver lavapipe: `apt-get install mesa-vulkan-drivers libvulkan1`)
//! and prints why it skipped where none does. Tensors stay small: lavapipe compiles shaders slowly.
#![cfg(feature = "wgpu")]

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use dsnn_hpo::shift::kernel;
use dsnn_hpo::shift::quant::{
    fixed_point, fixed_point_value, ps_weight, q_weight, quantize_ps, quantize_q,
};
use dsnn_hpo::shift::{Rounding, ShiftKind, shift_range};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The wgpu device, or `None` (with a message) when this machine has no adapter.
fn gpu() -> Option<Device> {
    let probe = catch_unwind(AssertUnwindSafe(|| {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let t = Tensor::<1>::from_floats([1.0, 2.0], &device) * 2.0;
        // The kernels must be the path the quantizers take here, or this file tests nothing.
        assert!(
            kernel::applies(&t),
            "a wgpu f32 tensor must go to the kernels"
        );
        (t.into_data().try_to_vec::<f32>().ok()? == vec![2.0, 4.0]).then_some(device)
    }));
    match probe {
        Ok(Some(device)) => {
            let name = device
                .identity()
                .map(|id| format!("{} ({})", id.name, id.fingerprint));
            eprintln!("wgpu adapter: {}", name.as_deref().unwrap_or("unnamed"));
            Some(device)
        }
        _ => {
            eprintln!(
                "skipped: no usable wgpu adapter (install a GPU driver, or lavapipe: \
                 apt-get install mesa-vulkan-drivers libvulkan1)"
            );
            None
        }
    }
}

fn t1(v: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

/// Bitwise comparison (so -0 and 0 differ and NaN equals NaN), naming the first mismatches.
fn assert_same_bits(gpu: &[f32], cpu: &[f32], what: &str) {
    assert_eq!(gpu.len(), cpu.len());
    let bad: Vec<String> = gpu
        .iter()
        .zip(cpu)
        .enumerate()
        .filter(|(_, (g, c))| g.to_bits() != c.to_bits() && !(g.is_nan() && c.is_nan()))
        .take(5)
        .map(|(i, (g, c))| format!("[{i}] gpu {g:e} cpu {c:e}"))
        .collect();
    assert!(bad.is_empty(), "{what}: {}", bad.join(", "));
}

/// Weights over the whole shift range and beyond: log-uniform magnitudes, exact powers of two,
/// values next to the rounding boundary m = sqrt 2, zeros, and both signs.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let below = std::f32::consts::SQRT_2;
    let above = f32::from_bits(below.to_bits() + 1);
    (0..n)
        .map(|i| {
            let e = rng.random_range(-20..=2);
            let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let scale = 2f32.powi(e);
            sign * match i % 8 {
                0 => scale,
                1 => below * scale,
                2 => above * scale,
                3 if i % 64 == 3 => 0.0,
                _ => scale * rng.random_range(1.0f32..2.0),
            }
        })
        .collect()
}

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0.0f32..1.0)).collect()
}

#[test]
fn q_kernel_matches_the_cpu_path_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    // One large tensor (2^20 elements) at 5 bits, small ones at the other widths.
    for (bits, n) in [(5, 1 << 20), (2, 4096), (3, 4096), (8, 4096)] {
        let w = weights(n, bits as u64);
        let got = vals(q_weight(t1(&w, &gpu), bits, None));
        let want = vals(q_weight(t1(&w, &cpu), bits, None));
        assert_same_bits(&got, &want, &format!("Q deterministic, {bits} bits, n {n}"));
    }
}

#[test]
fn q_kernel_stochastic_matches_the_cpu_path_on_the_same_draws() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    let n = 1 << 16;
    for bits in [2, 5, 8] {
        let w = weights(n, 10 + bits as u64);
        let u = uniform(n, 20 + bits as u64);
        let got = vals(q_weight(t1(&w, &gpu), bits, Some(t1(&u, &gpu))));
        let want = vals(q_weight(t1(&w, &cpu), bits, Some(t1(&u, &cpu))));
        let (lo, hi) = shift_range(ShiftKind::Q, bits);
        let mut differing = 0;
        for i in 0..n {
            if got[i].to_bits() == want[i].to_bits() {
                continue;
            }
            differing += 1;
            // The fraction of log2|w| comes from each device's own `ln`: the two may differ only
            // when the draw sits within float error of that fraction.
            let m = (w[i].abs() as f64).clamp((lo as f64).exp2(), (hi as f64).exp2());
            let frac = m.log2() - m.log2().floor();
            assert!(
                (u[i] as f64 - frac).abs() < 1e-6,
                "Q stochastic, {bits} bits: w {:e} u {} -> gpu {:e} cpu {:e}",
                w[i],
                u[i],
                got[i],
                want[i]
            );
        }
        eprintln!(
            "Q stochastic, {bits} bits: {differing} of {n} differ (each within 1e-6 of its fraction)"
        );
    }
}

#[test]
fn ps_kernel_matches_the_cpu_path_in_both_roundings() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    let n = 1 << 14;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Shifts around and beyond every range, on the half-integers too (ties to even), and signs
    // around -1..1 with exact halves.
    let shift: Vec<f32> = (0..n)
        .map(|i| match i % 4 {
            0 => rng.random_range(-140i32..4) as f32 + 0.5,
            _ => rng.random_range(-140.0f32..4.0),
        })
        .collect();
    let sign: Vec<f32> = (0..n)
        .map(|i| match i % 4 {
            0 => rng.random_range(-3i32..3) as f32 * 0.5,
            _ => rng.random_range(-1.5f32..1.5),
        })
        .collect();
    let (mut shift, mut sign) = (shift, sign);
    let (mut up, mut us) = (uniform(n, 31), uniform(n, 32));
    // Draws equal to the fraction, zero included: an integer must stay itself (u = 0 is not
    // below frac 0) and -2.75 + u 0.25 must round down, on both paths.
    for i in 0..128 {
        let k = (i % 9) as f32;
        if i < 64 {
            (shift[i], up[i], sign[i], us[i]) = (-k, 0.0, (i % 3) as f32 - 1.0, 0.0);
        } else {
            (shift[i], up[i], sign[i], us[i]) = (-k - 0.75, 0.25, 0.25, 0.25);
        }
    }
    for bits in [2, 3, 5, 8] {
        for stochastic in [false, true] {
            let run = |d: &Device| {
                let noise = stochastic.then(|| (t1(&up, d), t1(&us, d)));
                vals(ps_weight(t1(&shift, d), t1(&sign, d), bits, noise))
            };
            let what = format!("PS, {bits} bits, stochastic {stochastic}");
            assert_same_bits(&run(&gpu), &run(&cpu), &what);
        }
    }
}

#[test]
fn fixed_point_kernel_matches_the_cpu_path_at_every_width() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut x: Vec<f32> = (0..8192)
        .map(|_| rng.random_range(-2.0f32..2.0) * 2f32.powi(rng.random_range(-20..34)))
        .collect();
    // Grid points, clamp edges and values just off them.
    x.extend([
        0.0, 0.25, -0.25, 7.0, -8.0, 7.9, -8.1, 32767.0, -32768.0, 1e-9, -1e-9,
    ]);
    for (int_bits, frac_bits) in [(1, 1), (4, 2), (8, 8), (16, 16), (4, 32), (32, 4), (32, 32)] {
        let got = vals(fixed_point_value(t1(&x, &gpu), int_bits, frac_bits));
        let want = vals(fixed_point_value(t1(&x, &cpu), int_bits, frac_bits));
        assert_same_bits(&got, &want, &format!("fixed point {int_bits}.{frac_bits}"));
    }
}

#[test]
fn straight_through_gradients_are_the_same_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    let w = [0.3f32, -0.7, 0.05, 1.5];
    let s = [0.7f32, -0.2, -0.9, 1.6];
    let c = [1.0f32, -2.0, 3.0, 0.5];
    // Loss = sum(c * Q(fixed_point(w))) + sum(c * PS(w, s)): every quantizer and its gradient.
    let grads = |device: &Device| {
        let device = device.clone().autodiff();
        let wq = t1(&w, &device).require_grad();
        let p = t1(&w, &device).mul_scalar(-4.0).require_grad();
        let sg = t1(&s, &device).require_grad();
        let c = t1(&c, &device);
        let loss = (quantize_q(fixed_point(wq.clone(), 4, 4), 5, Rounding::Deterministic)
            * c.clone())
        .sum()
            + (quantize_ps(p.clone(), sg.clone(), 5, Rounding::Deterministic) * c).sum();
        let g = loss.backward();
        let grad = |t: &Tensor<1>| vals(t.grad(&g).expect("a gradient"));
        (vals(loss), grad(&wq), grad(&p), grad(&sg))
    };
    let (g, c) = (grads(&gpu), grads(&cpu));
    // The straight-through gradients are exact; the loss (a reduction, summed in another order
    // on the GPU) and dL/dP (a product with ln 2) are compared to float precision.
    assert_same_bits(&g.1, &c.1, "dL/dW (Q)");
    assert_same_bits(&g.3, &c.3, "dL/dS (PS)");
    for (what, gpu, cpu) in [("loss", &g.0, &c.0), ("dL/dP (PS)", &g.2, &c.2)] {
        for (a, b) in gpu.iter().zip(cpu.iter()) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{what}: gpu {gpu:?} cpu {cpu:?}"
            );
        }
    }
}

#[test]
fn stochastic_rounding_on_the_gpu_repeats_under_a_seed() {
    let Some(gpu) = gpu() else { return };
    let w = t1(&weights(4096, 5), &gpu);
    let draw = |seed: u64| {
        gpu.seed(seed);
        vals(quantize_q(w.clone(), 5, Rounding::Stochastic))
    };
    let first = draw(9);
    assert_eq!(first, draw(9));
    assert_ne!(first, draw(10));
    // Every stochastic result is one of the two neighbouring powers of two.
    let det = vals(quantize_q(w.clone(), 5, Rounding::Deterministic));
    for ((&x, &s), &d) in vals(w).iter().zip(&first).zip(&det) {
        assert!(s.abs() == d.abs() || s.abs() == d.abs() * 2.0 || s.abs() == d.abs() / 2.0);
        assert_eq!(s.signum(), if x >= 0.0 { 1.0 } else { -1.0 }, "sign of {x}");
    }
}
