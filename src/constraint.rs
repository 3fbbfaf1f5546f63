//! Constraints on designs (`[[constraints]]`): bounds on what a design costs or achieves, absolute
//! or relative to the default configuration.
//!
//! Why two kinds: what is known before training (parameters, weight memory, op-count energy)
//! decides whether a configuration may be proposed at all, so the optimizer never spends a trial
//! on it; what is measured (inference energy, accuracy) can only be judged after the trial, which
//! then counts as infeasible (kept in the log, never on the front, learned by the surrogate).
//!
//! ```toml
//! [[constraints]]
//! quantity = "weight_memory_bits"   # at most half the default's weight memory
//! max = 0.5
//! relative = true
//! [[constraints]]
//! quantity = "accuracy"
//! min = 0.8
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a constraint bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Trainable parameters plus batch-norm statistics (known ahead).
    Params,
    /// Weight memory in bits: shift layers' weights at `weight_bits`, float layers' weights,
    /// biases and batch norm at 32 bits (known ahead).
    WeightMemoryBits,
    /// Op-count model energy of one image's inference, joules (known ahead).
    OpcountJPerImage,
    /// Measured inference energy per image, joules (mean of the repeated validation pass).
    InferenceJPerImage,
    /// Validation top-1 accuracy at the trial's budget.
    Accuracy,
}

impl Quantity {
    /// Known from the configuration alone, before any training.
    pub fn known_ahead(self) -> bool {
        matches!(
            self,
            Quantity::Params | Quantity::WeightMemoryBits | Quantity::OpcountJPerImage
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Quantity::Params => "params",
            Quantity::WeightMemoryBits => "weight_memory_bits",
            Quantity::OpcountJPerImage => "opcount_j_per_image",
            Quantity::InferenceJPerImage => "inference_j_per_image",
            Quantity::Accuracy => "accuracy",
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `[[constraints]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintSpec {
    pub quantity: Quantity,
    /// Lower bound (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Upper bound (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Bounds are multiples of the default configuration's value (0.5 = half the default's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relative: bool,
}

impl ConstraintSpec {
    /// Checks the entry; the message names the entry (1-based) and the key.
    pub fn validate(&self, index: usize) -> Result<(), String> {
        let at = format!("[[constraints]] #{} ({})", index + 1, self.quantity);
        if self.min.is_none() && self.max.is_none() {
            return Err(format!(
                "{at}: neither min nor max is given: expected a bound, e.g. max = 0.5"
            ));
        }
        for (key, v) in [("min", self.min), ("max", self.max)] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(format!("{at}: {key} = {v}: expected a number >= 0"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max)
            && lo > hi
        {
            return Err(format!(
                "{at}: min = {lo} > max = {hi}: no design can meet it"
            ));
        }
        if self.quantity == Quantity::Accuracy {
            if self.relative {
                return Err(format!(
                    "{at}: relative = true: accuracy bounds are absolute (accuracy in [0, 1]), since the default's accuracy depends on the budget"
                ));
            }
            for (key, v) in [("min", self.min), ("max", self.max)] {
                if let Some(v) = v.filter(|v| *v > 1.0) {
                    return Err(format!("{at}: {key} = {v}: expected an accuracy in [0, 1]"));
                }
            }
        }
        Ok(())
    }

    /// The violation of `value`, if any, as `<quantity> > max <bound> (got <value>)`: the text
    /// before " (got" names the constraint, so reports can count trials per constraint;
    /// `reference` is the default configuration's value (needed when `relative`).
    pub fn violation(&self, value: f64, reference: Option<f64>) -> Option<String> {
        let scale = if self.relative { reference? } else { 1.0 };
        let bound = |b: f64| {
            if self.relative {
                format!("{} x default ({})", fmt_num(b), fmt_num(b * scale))
            } else {
                fmt_num(b)
            }
        };
        if let Some(lo) = self.min.filter(|lo| value.is_nan() || value < lo * scale) {
            return Some(format!(
                "{} < min {} (got {})",
                self.quantity,
                bound(lo),
                fmt_num(value)
            ));
        }
        if let Some(hi) = self.max.filter(|hi| value.is_nan() || value > hi * scale) {
            return Some(format!(
                "{} > max {} (got {})",
                self.quantity,
                bound(hi),
                fmt_num(value)
            ));
        }
        None
    }
}

fn fmt_num(x: f64) -> String {
    if x != 0.0 && (x.abs() >= 1e6 || x.abs() < 1e-3) {
        format!("{x:.4e}")
    } else {
        format!("{}", (x * 1e4).round() / 1e4)
    }
}

/// The values of the quantities for one design (those that are known).
pub type Values = BTreeMap<Quantity, f64>;

/// The known-ahead quantities of a design, from its layer table.
pub fn design_values(
    spec: &crate::arch::NetSpec,
    energies: &crate::energy::OpEnergies,
) -> Result<Values, crate::energy::EnergyError> {
    let op = crate::energy::opcount::per_image_energy(&spec.layer_counts(), energies)?;
    Ok([
        (Quantity::Params, spec.totals().params as f64),
        (Quantity::WeightMemoryBits, spec.weight_memory_bits() as f64),
        (Quantity::OpcountJPerImage, op.per_image_j),
    ]
    .into_iter()
    .collect())
}

/// The constraints of a run with the default configuration's values they are relative to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    pub specs: Vec<ConstraintSpec>,
    /// The default configuration's values, for relative bounds.
    pub reference: Values,
}

impl Constraints {
    pub fn new(specs: Vec<ConstraintSpec>) -> Constraints {
        Constraints {
            specs,
            reference: Values::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Whether any constraint is known ahead (the optimizer then needs a predicate).
    pub fn has_known_ahead(&self) -> bool {
        self.specs.iter().any(|c| c.quantity.known_ahead())
    }

    /// Quantities whose default value a relative bound needs.
    pub fn relative_quantities(&self) -> Vec<Quantity> {
        let mut q: Vec<Quantity> = self
            .specs
            .iter()
            .filter(|c| c.relative)
            .map(|c| c.quantity)
            .collect();
        q.sort();
        q.dedup();
        q
    }

    /// Violations among the constraints on quantities in `values`; constraints on quantities
    /// not in `values` are not judged.
    pub fn violations(&self, values: &Values) -> Vec<String> {
        self.specs
            .iter()
            .filter_map(|c| {
                let v = *values.get(&c.quantity)?;
                c.violation(v, self.reference.get(&c.quantity).copied())
            })
            .collect()
    }

    /// Violations of the known-ahead constraints only.
    pub fn known_violations(&self, values: &Values) -> Vec<String> {
        let known: Values = values
            .iter()
            .filter(|(q, _)| q.known_ahead())
            .map(|(q, v)| (*q, *v))
            .collect();
        self.violations(&known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(q: Quantity, min: Option<f64>, max: Option<f64>, relative: bool) -> ConstraintSpec {
        ConstraintSpec {
            quantity: q,
            min,
            max,
            relative,
        }
    }

    #[test]
    fn absolute_and_relative_bounds() {
        let mut c = Constraints::new(vec![
            spec(Quantity::WeightMemoryBits, None, Some(0.5), true),
            spec(Quantity::Accuracy, Some(0.8), None, false),
        ]);
        c.reference.insert(Quantity::WeightMemoryBits, 1000.0);
        let v = |bits: f64, acc: f64| -> Values {
            [
                (Quantity::WeightMemoryBits, bits),
                (Quantity::Accuracy, acc),
            ]
            .into_iter()
            .collect()
        };
        assert!(c.violations(&v(500.0, 0.8)).is_empty());
        let e = c.violations(&v(501.0, 0.9));
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0],
            "weight_memory_bits > max 0.5 x default (500) (got 501)"
        );
        let e = c.violations(&v(400.0, 0.79));
        assert_eq!(e, vec!["accuracy < min 0.8 (got 0.79)".to_string()]);
        // Known-ahead only: the accuracy is not judged.
        assert!(c.known_violations(&v(400.0, 0.1)).is_empty());
        assert_eq!(c.known_violations(&v(600.0, 0.1)).len(), 1);
        // NaN never meets a bound.
        assert_eq!(c.violations(&v(f64::NAN, 0.9)).len(), 1);
    }

    #[test]
    fn design_values_of_the_small_cnn_by_hand() {
        use crate::arch::{Backbone, InputShape, NetSpec};
        use crate::shift::ShiftSettings;
        let spec = |depth| {
            NetSpec::build(
                Backbone::SmallCnn,
                InputShape::new(1, 28, 28),
                10,
                ShiftSettings::default(),
                depth,
            )
            .unwrap()
        };
        let e = crate::energy::OpEnergies::default();
        // Weights: conv1 1x16x3x3 = 144, conv2 16x32x3x3 = 4,608, fc1 1,568x64 = 100,352,
        // fc2 64x10 = 640: 105,744. Biases 64 + 10 and batch norm 2 x (16 + 32): 170.
        let all = design_values(&spec(4), &e).unwrap();
        assert_eq!(all[&Quantity::Params], 105_914.0);
        // Every weight layer shifted at 5 bits, the rest at 32: 5 x 105,744 + 32 x 170.
        assert_eq!(all[&Quantity::WeightMemoryBits], 534_160.0);
        let float = design_values(&spec(0), &e).unwrap();
        assert_eq!(float[&Quantity::WeightMemoryBits], 32.0 * 105_914.0);
        assert!(all[&Quantity::OpcountJPerImage] < float[&Quantity::OpcountJPerImage]);
    }

    #[test]
    fn relative_without_a_reference_is_not_judged() {
        let c = Constraints::new(vec![spec(Quantity::Params, None, Some(0.5), true)]);
        assert!(
            c.violations(&[(Quantity::Params, 1e9)].into_iter().collect())
                .is_empty()
        );
    }

    #[test]
    fn bad_entries_name_the_key() {
        let cases = [
            (
                spec(Quantity::Params, None, None, false),
                "neither min nor max",
            ),
            (spec(Quantity::Params, Some(-1.0), None, false), "min = -1"),
            (
                spec(Quantity::Params, None, Some(f64::NAN), false),
                "max = NaN",
            ),
            (
                spec(Quantity::Params, Some(2.0), Some(1.0), false),
                "min = 2 > max = 1",
            ),
            (
                spec(Quantity::Accuracy, Some(0.5), None, true),
                "relative = true",
            ),
            (
                spec(Quantity::Accuracy, Some(80.0), None, false),
                "min = 80",
            ),
        ];
        for (s, want) in cases {
            let e = s.validate(2).unwrap_err();
            assert!(e.contains("#3") && e.contains(want), "{e}");
        }
        assert!(
            spec(Quantity::Accuracy, Some(0.8), None, false)
                .validate(0)
                .is_ok()
        );
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_quantities() {
        #[derive(Deserialize)]
        struct Doc {
            constraints: Vec<ConstraintSpec>,
        }
        let d: Doc = toml::from_str(
            "[[constraints]]\nquantity = \"weight_memory_bits\"\nmax = 0.5\nrelative = true\n",
        )
        .unwrap();
        assert_eq!(d.constraints[0].quantity, Quantity::WeightMemoryBits);
        let e = toml::from_str::<Doc>("[[constraints]]\nquantity = \"flops\"\nmax = 1\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("flops") && e.contains("weight_memory_bits"),
            "{e}"
        );
    }
}
