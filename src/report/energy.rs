//! How far the report's energy numbers can be trusted: the 95% confidence interval of a
//! repeated measurement, both views of inference energy per image (the meter and the op-count
//! model) whichever one is optimized, and how well the two agree on the ranking of designs.
//!
//! Why: a front built on one noisy reading, or on a model nobody checked against a meter, says
//! less than it seems to; the report shows the numbers that let a reader judge that.

use serde::Serialize;

use super::baseline::fmt_budget;
use crate::energy::{EnergyRecord, SourceKind};
use crate::store::TrialLine;
#[cfg(test)]
use crate::store::TrialStatus;

/// The trial's measured inference record (phase `inference`, not the op-count model's).
pub fn measured_inference(t: &TrialLine) -> Option<&EnergyRecord> {
    t.energy
        .iter()
        .find(|r| r.phase == "inference" && r.cpu.source != SourceKind::Opcount)
}

/// The trial's op-count inference record.
pub fn opcount_inference(t: &TrialLine) -> Option<&EnergyRecord> {
    t.energy
        .iter()
        .find(|r| r.phase == "inference" && r.cpu.source == SourceKind::Opcount)
}

/// Whether an objective is measured inference energy (so a repeated measurement's interval
/// applies to it): `inference_<unit>` whose source is not the op-count model. Training energy
/// and `energy_<unit>` (training plus inference) are not: the interval is of the inference
/// pass alone.
pub fn is_measured_inference(name: &str, source: &str) -> bool {
    name.starts_with("inference_") && !source.contains("op-count") && !source.contains("opcount")
}

/// The relative 95% CI half-width of the trial's repeated inference measurement; absent
/// without a `repeat` (one-shot or old runs) or with one pass (no interval).
pub fn ci95_rel(t: &TrialLine) -> Option<f64> {
    measured_inference(t)
        .and_then(|r| r.repeat.as_ref())
        .map(|s| s.rel_ci95)
        .filter(|v| v.is_finite())
}

/// The distinct meters (`none` left out) of a record: `rapl+estimate`.
pub fn meters(r: &EnergyRecord) -> String {
    let mut kinds: Vec<&str> = Vec::new();
    for k in [r.cpu.source, r.gpu.source, r.ram.source] {
        if k != SourceKind::None && !kinds.contains(&k.as_str()) {
            kinds.push(k.as_str());
        }
    }
    if kinds.is_empty() {
        "none".into()
    } else {
        kinds.join("+")
    }
}

/// Where the two per-image columns come from, over the reported rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PerImageSources {
    /// `metrics.inference_j_per_image`: the meters of the rows' measured inference records.
    pub measured: String,
    /// `metrics.opcount_j_per_image`: the op-count model the rows' records name.
    pub opcount: String,
}

impl PerImageSources {
    pub fn of(trials: &[&TrialLine]) -> PerImageSources {
        let mut measured: Vec<String> = Vec::new();
        let mut opcount: Vec<String> = Vec::new();
        for t in trials {
            let has = |f: fn(&crate::store::Metrics) -> Option<f64>| {
                t.metrics.as_ref().and_then(f).is_some()
            };
            if let Some(r) = measured_inference(t).filter(|_| has(|m| m.inference_j_per_image)) {
                let m = meters(r);
                if !measured.contains(&m) {
                    measured.push(m);
                }
            }
            if let Some(r) = opcount_inference(t).filter(|_| has(|m| m.opcount_j_per_image)) {
                let m = format!("opcount, {}", r.cpu_model);
                if !opcount.contains(&m) {
                    opcount.push(m);
                }
            }
        }
        let or_none = |v: Vec<String>| {
            if v.is_empty() {
                "not recorded (\"-\")".to_string()
            } else {
                v.join("; ")
            }
        };
        PerImageSources {
            measured: format!(
                "measured inference energy per image, joules: mean of repeated validation passes; meters: {}",
                or_none(measured)
            ),
            opcount: format!(
                "op-count inference energy per image, joules: {}",
                or_none(opcount)
            ),
        }
    }
}

/// Kendall tau-b between measured and op-count inference energy per image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RankAgreement {
    /// Absent when not computable (`note` says why); never NaN.
    pub tau_b: Option<f64>,
    /// Trials (successful and infeasible) with both values at `budget`.
    pub trials: usize,
    pub budget: Option<f64>,
    /// The sentence the table prints.
    pub note: String,
}

const WHAT: &str = "rank agreement of measured vs op-count inference energy";

/// Kendall tau-b of the pairs, ties handled as tau-b does; `None` when undefined (fewer than
/// two pairs, or one side constant, where tau-b divides zero by zero).
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    let constant = |v: &[f64]| v.windows(2).all(|w| w[0] == w[1]);
    if x.len() < 2 || x.len() != y.len() || constant(x) || constant(y) {
        return None;
    }
    kendalls::tau_b_with_comparator(x, y, f64::total_cmp)
        .ok()
        .map(|(tau, _z)| tau)
        .filter(|t| t.is_finite())
}

impl RankAgreement {
    /// Over every measured trial (successful or infeasible: both trained and were measured) at
    /// the highest budget where at least two have both values: designs compared after the same
    /// training, the ones the front is chosen from.
    pub fn of(lines: &[TrialLine]) -> RankAgreement {
        let pairs: Vec<(f64, f64, f64)> = lines
            .iter()
            .filter(|t| t.measured())
            .filter_map(|t| {
                let m = t.metrics.as_ref()?;
                let (a, b) = (m.inference_j_per_image?, m.opcount_j_per_image?);
                (a.is_finite() && b.is_finite()).then_some((t.budget, a, b))
            })
            .collect();
        let not = |note: String, trials: usize, budget: Option<f64>| RankAgreement {
            tau_b: None,
            trials,
            budget,
            note: format!("{WHAT}: not computed: {note}"),
        };
        if pairs.is_empty() {
            return not(
                "no measured trial records both measured and op-count inference energy per image (an older run, or command objectives)".into(),
                0,
                None,
            );
        }
        let mut budgets: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        budgets.sort_by(|a, b| b.total_cmp(a));
        budgets.dedup();
        let at = |b: f64| pairs.iter().filter(|p| p.0 == b).count();
        let Some(budget) = budgets.iter().copied().find(|b| at(*b) >= 2) else {
            return not(
                format!(
                    "no budget has two trials with both values ({} trial{} in all)",
                    pairs.len(),
                    if pairs.len() == 1 { "" } else { "s" }
                ),
                pairs.len(),
                None,
            );
        };
        let (x, y): (Vec<f64>, Vec<f64>) = pairs
            .iter()
            .filter(|p| p.0 == budget)
            .map(|p| (p.1, p.2))
            .unzip();
        let n = x.len();
        let b = fmt_budget(budget);
        match kendall_tau_b(&x, &y) {
            None => not(
                format!(
                    "tau-b is undefined over the {n} trials at budget {b}: one of the two energies is the same for all of them"
                ),
                n,
                Some(budget),
            ),
            Some(tau) => {
                let few = if n < 3 {
                    format!(" (only {n} trials: a single pair, tau-b is +1 or -1 by construction)")
                } else {
                    String::new()
                };
                RankAgreement {
                    tau_b: Some(tau),
                    trials: n,
                    budget: Some(budget),
                    note: format!(
                        "{WHAT}: Kendall tau-b = {tau:.2} over {n} trials at budget {b}{few}"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_b_by_hand_with_ties_and_undefined_cases() {
        // x = 1 2 3 4, y = 1 3 2 4: pairs (1,2)+ (1,3)+ (1,4)+ (2,3)- (2,4)+ (3,4)+:
        // 5 concordant, 1 discordant, no ties: (5 - 1) / 6 = 2/3.
        let t = kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((t - 2.0 / 3.0).abs() < 1e-12, "{t}");
        // x = 1 1 2, y = 1 2 3: pair (1,2) tied in x; (1,3), (2,3) concordant.
        // n0 = 3, n1 = 1 (x ties), n2 = 0: 2 / sqrt((3 - 1) * 3) = 2 / sqrt(6).
        let t = kendall_tau_b(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((t - 2.0 / 6f64.sqrt()).abs() < 1e-12, "{t}");
        // Reversed order: -1.
        let t = kendall_tau_b(&[1.0, 2.0, 3.0], &[3e-6, 2e-6, 1e-6]).unwrap();
        assert!((t + 1.0).abs() < 1e-12, "{t}");
        assert_eq!(kendall_tau_b(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(kendall_tau_b(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau_b(&[], &[]), None);
    }

    fn trial(id: u64, budget: f64, status: TrialStatus, xy: Option<(f64, f64)>) -> TrialLine {
        let mut t = TrialLine::success(id, crate::space::Config::new(), budget, vec![0.1, 1.0]);
        t.status = status;
        t.metrics = xy.map(|(x, y)| crate::store::Metrics {
            inference_j_per_image: Some(x),
            opcount_j_per_image: Some(y),
            ..Default::default()
        });
        t
    }

    #[test]
    fn rank_agreement_takes_the_highest_budget_with_two_measured_trials() {
        use TrialStatus::*;
        let lines = vec![
            trial(0, 1.0, Success, Some((1.0, 1.0))),
            trial(1, 1.0, Success, Some((2.0, 2.0))),
            trial(2, 1.0, Infeasible, Some((3.0, 3.0))),
            // Budget 9: one trial only, and a failed one that does not count.
            trial(3, 9.0, Success, Some((1.0, 5.0))),
            trial(4, 9.0, Failed, Some((2.0, 1.0))),
            trial(5, 1.0, Success, None),
        ];
        let r = RankAgreement::of(&lines);
        assert_eq!((r.tau_b, r.trials, r.budget), (Some(1.0), 3, Some(1.0)));
        assert_eq!(
            r.note,
            "rank agreement of measured vs op-count inference energy: Kendall tau-b = 1.00 over 3 trials at budget 1"
        );
        // Two trials: computed, with the caveat.
        let r = RankAgreement::of(&lines[..2]);
        assert_eq!(r.tau_b, Some(1.0));
        assert!(r.note.contains("only 2 trials"), "{}", r.note);
        // One trial per budget: no pair anywhere.
        let r = RankAgreement::of(&[lines[0].clone(), lines[3].clone()]);
        assert_eq!(r.tau_b, None);
        assert!(r.note.contains("no budget has two trials"), "{}", r.note);
        // No metrics: command objectives or an older run.
        let r = RankAgreement::of(&lines[5..]);
        assert_eq!((r.tau_b, r.trials), (None, 0));
        assert!(
            r.note.contains("not computed: no measured trial"),
            "{}",
            r.note
        );
    }

    #[test]
    fn measured_inference_objectives_are_told_from_opcount_and_training() {
        let measured = "one inference pass over the validation split, measured by the energy meter, mean of repeated passes with its 95% CI (source per component in each record)";
        let op = "one inference pass over the validation split, op-count model (source opcount)";
        assert!(is_measured_inference("inference_kwh", measured));
        assert!(is_measured_inference("inference_kg_co2", measured));
        assert!(!is_measured_inference("inference_kwh", op));
        assert!(!is_measured_inference("opcount_inference_kwh", op));
        assert!(!is_measured_inference("training_kwh", measured));
        assert!(!is_measured_inference(
            "loss",
            "1 - validation top-1 accuracy"
        ));
    }
}
