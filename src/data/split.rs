//! Views onto a dataset (train / validation / test) and the deterministic validation split.

use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::{DataError, Dataset};

/// A subset of a shared dataset, given by record indices. Cheap to clone (two `Arc`s), so it
/// can be handed to background batch threads.
#[derive(Debug, Clone)]
pub struct Split {
    data: Arc<Dataset>,
    indices: Arc<[u32]>,
}

impl Split {
    /// A view onto `indices` of `data`; every index must be below `data.len()`.
    pub fn new(data: Arc<Dataset>, indices: Vec<u32>) -> Result<Self, DataError> {
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= data.len()) {
            return Err(DataError::Inconsistent {
                origin: super::origin_of(data.sources()),
                message: format!(
                    "split index {bad} is out of range for {} records",
                    data.len()
                ),
            });
        }
        Ok(Split {
            data,
            indices: indices.into(),
        })
    }

    /// A view onto every record of `data`, in file order.
    pub fn all(data: Arc<Dataset>) -> Self {
        let indices: Vec<u32> = (0..data.len() as u32).collect();
        Split {
            data,
            indices: indices.into(),
        }
    }

    /// Number of records in this view.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when the view is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The underlying dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.data
    }

    /// Record indices into `dataset()`, ascending for splits made by `validation_split`.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Pixels of the `k`-th record of this view. Panics if `k >= len()`.
    pub fn image(&self, k: usize) -> &[u8] {
        self.data.image(self.indices[k] as usize)
    }

    /// Label of the `k`-th record of this view. Panics if `k >= len()`.
    pub fn label(&self, k: usize) -> u16 {
        self.data.label(self.indices[k] as usize)
    }

    /// Number of records per class in this view.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.data.num_classes()];
        for &i in self.indices.iter() {
            counts[usize::from(self.data.label(i as usize))] += 1;
        }
        counts
    }
}

/// Number of validation records for `n` records and `fraction`: `round(fraction * n)`.
pub fn validation_count(n: usize, fraction: f64) -> usize {
    ((fraction * n as f64).round() as usize).min(n)
}

/// Splits record indices `0..labels.len()` into (train, validation), both ascending.
///
/// Deterministic in `seed`: indices are shuffled with `ChaCha8Rng::seed_from_u64(seed)` and the
/// first `round(fraction * n)` go to validation. With `stratified`, the shuffle is done per class
/// (classes in order, one generator) and each class gives its share of that same total, the
/// rounding remainders going to the classes with the largest fractional shares, so class
/// proportions match between the parts.
pub fn validation_split(
    labels: &[u16],
    num_classes: usize,
    fraction: f64,
    seed: u64,
    stratified: bool,
) -> Result<(Vec<u32>, Vec<u32>), DataError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DataError::config(
            "validation_fraction",
            format!("must be strictly between 0 and 1, got {fraction}"),
        ));
    }
    let n = labels.len();
    let n_valid = validation_count(n, fraction);
    if n_valid == 0 || n_valid == n {
        return Err(DataError::config(
            "validation_fraction",
            format!(
                "{fraction} of {n} training records leaves {n_valid} for validation and {} for \
                 training; both parts need at least one",
                n - n_valid
            ),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut valid: Vec<u32>;
    let mut train: Vec<u32>;
    if stratified {
        let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); num_classes];
        for (i, &l) in labels.iter().enumerate() {
            let class = by_class.get_mut(usize::from(l)).ok_or_else(|| {
                DataError::config(
                    "labels",
                    format!("record {i} has label {l}, not below num_classes {num_classes}"),
                )
            })?;
            class.push(i as u32);
        }
        let quotas = stratified_quotas(&by_class, fraction, n_valid);
        valid = Vec::with_capacity(n_valid);
        train = Vec::with_capacity(n - n_valid);
        for (members, quota) in by_class.iter_mut().zip(quotas) {
            members.shuffle(&mut rng);
            valid.extend_from_slice(&members[..quota]);
            train.extend_from_slice(&members[quota..]);
        }
    } else {
        let mut all: Vec<u32> = (0..n as u32).collect();
        all.shuffle(&mut rng);
        train = all.split_off(n_valid);
        valid = all;
    }
    valid.sort_unstable();
    train.sort_unstable();
    Ok((train, valid))
}

/// Per-class validation counts summing to `total` (largest-remainder rounding).
fn stratified_quotas(by_class: &[Vec<u32>], fraction: f64, total: usize) -> Vec<usize> {
    let exact: Vec<f64> = by_class.iter().map(|m| m.len() as f64 * fraction).collect();
    let mut quotas: Vec<usize> = exact.iter().map(|&q| q.floor() as usize).collect();
    let mut order: Vec<usize> = (0..by_class.len()).collect();
    // Largest fractional part first; ties by class index (sort is stable).
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa)
    });
    let mut left = total.saturating_sub(quotas.iter().sum());
    // Round-robin over the order in case float noise leaves more than one pass's worth.
    while left > 0 {
        let mut gave = false;
        for &c in &order {
            if left > 0 && quotas[c] < by_class[c].len() {
                quotas[c] += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_sum_to_total_with_largest_remainder() {
        // Classes of 5, 3, 2 at 0.5: exact 2.5, 1.5, 1.0 -> floors 2, 1, 1 (sum 4); total
        // round(5.0) = 5, the one extra goes to the first class with fraction .5 (class 0).
        let by_class = vec![vec![0; 5], vec![0; 3], vec![0; 2]];
        assert_eq!(stratified_quotas(&by_class, 0.5, 5), vec![3, 1, 1]);
    }

    #[test]
    fn stratified_split_keeps_proportions() {
        let labels: Vec<u16> = (0..1000).map(|i| (i % 10) as u16).collect();
        let (train, valid) = validation_split(&labels, 10, 0.2, 3, true).unwrap();
        assert_eq!(valid.len(), 200);
        assert_eq!(train.len(), 800);
        let mut counts = [0; 10];
        for &i in &valid {
            counts[usize::from(labels[i as usize])] += 1;
        }
        assert_eq!(counts, [20; 10]);
    }
}
