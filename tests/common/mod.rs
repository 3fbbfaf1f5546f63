//! Helpers shared by the burn-side integration tests (each `tests/*.rs` is its own crate and
//! uses a subset, hence the `dead_code` allowance).
#![allow(dead_code)]

use burn::tensor::Tensor;
use dsnn_hpo::arch::NetSpec;
use dsnn_hpo::shift::{Rounding, ShiftKind, ShiftSettings};

/// burn's backend RNG is process-wide: tests that seed or draw from it hold this lock.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// 5-bit shifts, deterministic rounding, 16.16 activations: the backbone tests' layers.
pub fn settings(kind: ShiftKind) -> ShiftSettings {
    ShiftSettings {
        kind,
        weight_bits: 5,
        rounding: Rounding::Deterministic,
        activation_integer_bits: 16,
        activation_fraction_bits: 16,
    }
}

/// Records the per-image shape of every table layer's output, in the order the forward runs.
pub struct Shapes(pub Vec<Vec<usize>>);

impl dsnn_hpo::model::Laps for Shapes {
    fn layer<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        self.0.push(t.dims()[1..].to_vec());
        t
    }
    fn other<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        t
    }
}

/// The parameter count burn reports for a network built from `spec`: the table's trainable
/// scalars plus batch norm's running mean and variance, which burn counts too (two per
/// feature, as many as the scales and shifts the table counts).
pub fn burn_params(spec: &NetSpec) -> u64 {
    let bn: u64 = spec
        .layers
        .iter()
        .filter(|l| l.kind.short_name() == "batchnorm")
        .map(|l| l.params())
        .sum();
    spec.totals().trainable + bn
}
