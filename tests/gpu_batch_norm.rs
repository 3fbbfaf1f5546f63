//! Batch norm on a wgpu adapter against the CPU at the size that broke ResNet20 training on
//! wgpu (issue 13): 131,072 values per channel (batch 128, 16 channels of 32x32). burn 0.22.1's
//! own `BatchNorm` statistics came out wrong there (output std 148 instead of 1); the models
//! call [`batch_norm_auto`], which must match the CPU. Built with `--features wgpu`; skips
//! (saying why) where no adapter exists. Lavapipe (Mesa's software Vulkan) runs it in a minute.
#![cfg(feature = "wgpu")]

use burn::nn::BatchNormConfig;
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use dsnn_hpo::model::batch_norm::batch_norm_auto;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The wgpu device, or `None` (with a message) when this machine has no adapter.
fn gpu() -> Option<Device> {
    let probe = catch_unwind(AssertUnwindSafe(|| {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let t = Tensor::<1>::from_floats([1.0, 2.0], &device) * 2.0;
        (t.into_data().try_to_vec::<f32>().ok()? == vec![2.0, 4.0]).then_some(device)
    }));
    match probe {
        Ok(Some(device)) => Some(device),
        _ => {
            eprintln!(
                "skipped: no usable wgpu adapter (install a GPU driver, or lavapipe: \
                 apt-get install mesa-vulkan-drivers libvulkan1)"
            );
            None
        }
    }
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

/// Training-mode output and updated running statistics of a fresh batch norm on `device`.
fn train_step(x: &TensorData, device: &Device) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let channels = x.shape()[1];
    let bn = BatchNormConfig::new(channels).init(device);
    let out = batch_norm_auto(&bn, Tensor::<4>::from_data(x.clone(), device));
    (
        vals(out),
        vals(bn.running_mean.value_sync()),
        vals(bn.running_var.value_sync()),
    )
}

#[test]
fn batch_norm_at_batch_128_on_32x32_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let shape = [128, 16, 32, 32];
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // A mean away from zero (0.5) and a spread of about 0.6, per channel scaled differently.
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| {
            let channel = (i / (32 * 32)) % 16;
            0.5 + (1.0 + channel as f32 / 8.0) * rng.random_range(-1.0f32..1.0)
        })
        .collect();
    let x = TensorData::new(values, shape);
    let (g_out, g_mean, g_var) = train_step(&x, &gpu.autodiff());
    let (c_out, c_mean, c_var) = train_step(&x, &Device::flex().autodiff());
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
    };
    let d_out = worst(&g_out, &c_out);
    assert!(
        d_out <= 1e-3,
        "normalized output: gpu differs from cpu by {d_out}"
    );
    let d_stats = worst(&g_mean, &c_mean).max(worst(&g_var, &c_var));
    assert!(
        d_stats <= 1e-4,
        "running statistics: gpu differs from cpu by {d_stats}"
    );
}
