//! Drop connect on residual branches (Tan & Le 2019, EfficientNet; stochastic depth per
//! sample): while training, each image's residual branch is kept with probability
//! `1 - p` and scaled by `1 / (1 - p)`, or dropped, so that only the shortcut passes. Block
//! `b` of `B` drops with `p = rate * b / B`, rising linearly from 0 at the first block, as in
//! Tan & Le's code. The masks are drawn on the CPU from the run's seed and the training step,
//! never from the backend RNG, so the same configuration and seed train the same network on
//! any backend; evaluation never drops.

use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::epoch_seed;

/// Drop connect for one training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropConnect {
    /// `p` of the last block's successor: block `b` of `B` drops with `rate * b / B`.
    pub rate: f64,
    /// Seed of this step's masks.
    pub seed: u64,
}

impl DropConnect {
    /// The drop connect of training step `global_step` (counted over all epochs) of a run
    /// seeded `run_seed`; none when `rate` is 0.
    pub fn for_step(rate: f64, run_seed: u64, global_step: u64) -> Option<DropConnect> {
        // A stream apart from the data order's (seed, epoch) and the initialisation's.
        let stream = epoch_seed(run_seed, u64::MAX - 1);
        (rate > 0.0).then(|| DropConnect {
            rate,
            seed: epoch_seed(stream, global_step),
        })
    }

    /// Drop probability of block `block` of `blocks`.
    pub fn block_rate(&self, block: usize, blocks: usize) -> f64 {
        self.rate * block as f64 / blocks.max(1) as f64
    }

    /// Per-image factors of block `block`: 0 (dropped) or `1 / keep`.
    pub fn scales(&self, block: usize, blocks: usize, batch: usize) -> Vec<f32> {
        let keep = 1.0 - self.block_rate(block, blocks);
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed(self.seed, block as u64));
        (0..batch)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// `branch` with block `block`'s mask applied; unchanged outside training (a device
    /// without autodiff) and where the block's probability is 0.
    ///
    /// # Shapes
    /// - `branch` `[batch, channels, height, width]`, returned the same.
    pub fn apply(&self, branch: Tensor<4>, block: usize, blocks: usize) -> Tensor<4> {
        let device = branch.device();
        if !device.is_autodiff() || self.block_rate(block, blocks) <= 0.0 {
            return branch;
        }
        let [batch, _, _, _] = branch.dims();
        let scales = self.scales(block, blocks, batch);
        let mask = Tensor::<4>::from_data(TensorData::new(scales, [batch, 1, 1, 1]), &device);
        branch * mask
    }
}

/// `branch` through `drop` where there is one.
pub(super) fn maybe(
    drop: Option<&DropConnect>,
    branch: Tensor<4>,
    block: usize,
    blocks: usize,
) -> Tensor<4> {
    match drop {
        Some(d) => d.apply(branch, block, blocks),
        None => branch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_rise_linearly_and_masks_follow_the_seed() {
        let d = DropConnect::for_step(0.2, 7, 3).unwrap();
        assert_eq!(d.block_rate(0, 16), 0.0);
        assert!((d.block_rate(8, 16) - 0.1).abs() < 1e-12);
        assert!(DropConnect::for_step(0.0, 7, 3).is_none());
        let a = d.scales(15, 16, 4096);
        assert_eq!(a, d.scales(15, 16, 4096), "same seed, same mask");
        let other = DropConnect::for_step(0.2, 8, 3).unwrap();
        assert_ne!(a, other.scales(15, 16, 4096), "another run seed");
        let next = DropConnect::for_step(0.2, 7, 4).unwrap();
        assert_ne!(a, next.scales(15, 16, 4096), "another step");
        // p = 0.2 * 15 / 16 = 0.1875: kept images are scaled by 1 / 0.8125.
        let keep = 1.0 - 0.1875;
        assert!(a.iter().all(|&s| s == 0.0 || s == (1.0 / keep) as f32));
        let dropped = a.iter().filter(|&&s| s == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.1875).abs() < 0.03, "dropped share {dropped}");
        assert!(d.scales(0, 16, 64).iter().all(|&s| s == 1.0));
    }
}
