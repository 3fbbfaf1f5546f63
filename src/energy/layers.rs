//! Per-layer inference energy: where a design spends.
//!
//! Each layer of the table gets its op counts and op-count energy (what shift hardware would
//! spend, [`super::opcount`]) and its measured share: the layer's share of the wall time of a
//! profiled forward pass (the device synchronised after every layer) times the measured energy
//! of a pass. Why time shares: no meter resolves a single layer's energy, and on one device at a
//! steady load energy follows time closely; the time outside the table's layers (activations,
//! shortcuts, concatenations, pooling where the table has no pooling rows) is its own row, so
//! the shares add up to the whole pass.

use serde::{Deserialize, Serialize};

use super::opcount::OpCountEnergy;
use crate::arch::NetSpec;

/// One row of the per-layer table, per image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRow {
    pub name: String,
    /// `conv`, `linear`, `batchnorm`, `maxpool`, `avgpool`, or `other` (work between the
    /// table's layers).
    pub kind: String,
    /// A shift layer (powers-of-two weights).
    pub shift: bool,
    /// Multiply-accumulates (float) or shift-adds (shift) per image.
    pub macs: u64,
    pub params: u64,
    /// Op-count model energy per image, joules (0 for `other`, which the model does not count).
    pub opcount_j_per_image: f64,
    /// Share of the profiled pass's wall time.
    pub time_share: f64,
    /// `time_share` x the measured energy per image, joules.
    pub measured_j_per_image: f64,
}

/// The rows of `spec`'s layers plus `other`, from the op-count energy of a pass (`op`, built
/// from `spec.layer_counts()`; its per-layer figures are per image, whatever the pass size), the profiled seconds per layer and outside them, and the
/// measured energy of one image.
pub fn layer_rows(
    spec: &NetSpec,
    op: &OpCountEnergy,
    layer_s: &[f64],
    other_s: f64,
    measured_j_per_image: f64,
) -> Vec<LayerRow> {
    let total_s: f64 = layer_s.iter().sum::<f64>() + other_s;
    let share = |s: f64| if total_s > 0.0 { s / total_s } else { 0.0 };
    let mut rows: Vec<LayerRow> = spec
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let t = share(layer_s.get(i).copied().unwrap_or(0.0));
            LayerRow {
                name: l.name.clone(),
                kind: l.kind.short_name().to_string(),
                shift: l.shift,
                macs: l.macs,
                params: l.params(),
                opcount_j_per_image: op.layers.get(i).map_or(0.0, |e| e.total_j),
                time_share: t,
                measured_j_per_image: t * measured_j_per_image,
            }
        })
        .collect();
    let t = share(other_s);
    rows.push(LayerRow {
        name: "other".into(),
        kind: "other".into(),
        shift: false,
        macs: 0,
        params: 0,
        opcount_j_per_image: 0.0,
        time_share: t,
        measured_j_per_image: t * measured_j_per_image,
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Backbone, InputShape};
    use crate::energy::opcount::{OpEnergies, per_image_energy};
    use crate::shift::ShiftSettings;

    #[test]
    fn shares_and_energies_add_up() {
        let spec = NetSpec::build(
            Backbone::SmallCnn,
            InputShape::new(1, 28, 28),
            10,
            ShiftSettings::default(),
            2,
        )
        .unwrap();
        let op = per_image_energy(&spec.layer_counts(), &OpEnergies::default()).unwrap();
        let n = spec.layers.len();
        let layer_s: Vec<f64> = (1..=n).map(|k| k as f64).collect();
        let rows = layer_rows(&spec, &op, &layer_s, 5.0, 2.0);
        assert_eq!(rows.len(), n + 1);
        let total_s = (n * (n + 1) / 2) as f64 + 5.0;
        assert!((rows[0].time_share - 1.0 / total_s).abs() < 1e-12);
        assert!((rows[n].time_share - 5.0 / total_s).abs() < 1e-12);
        let share: f64 = rows.iter().map(|r| r.time_share).sum();
        let measured: f64 = rows.iter().map(|r| r.measured_j_per_image).sum();
        let opj: f64 = rows.iter().map(|r| r.opcount_j_per_image).sum();
        assert!((share - 1.0).abs() < 1e-12 && (measured - 2.0).abs() < 1e-12);
        assert!((opj - op.per_image_j).abs() < 1e-15);
        // The two linear layers at the output end are the shift layers.
        let shifted: Vec<&str> = rows
            .iter()
            .filter(|r| r.shift)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(shifted, ["fc1", "fc2"]);
        // No profile: shares are 0, never NaN.
        let rows = layer_rows(&spec, &op, &[], 0.0, 2.0);
        assert!(
            rows.iter()
                .all(|r| r.time_share == 0.0 && r.measured_j_per_image == 0.0)
        );
    }
}
