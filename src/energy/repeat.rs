//! Repeated measurement of one pass (e.g. inference over the validation split) until the mean is
//! known well enough.
//!
//! Why: one short pass measured once is noisier than the differences between the designs a
//! search compares (a fraction of a second of CPU time, with the machine's other work, cache and
//! thread scheduling in it). The pass is repeated until the half-width of the 95% confidence
//! interval of the mean (Student's t) is at most `target_rel_ci` of the mean, or `max_passes` is
//! reached.
//!
//! Consecutive passes are not independent: a machine (a VM above all) runs in slower and faster
//! spells that last seconds, so neighbouring passes share them. The interval therefore uses the
//! effective number of passes under a first-order autoregressive model,
//! `n_eff = n (1 - r1) / (1 + r1)` with `r1` the lag-1 autocorrelation (negative values count as
//! 0), as simulation output analysis does; with independent passes it is the plain t interval. Warm-up passes run first and are left out of the statistics: the first pass after
//! training pays for allocations and cold caches that no later pass does. Every pass's energy,
//! warm-up included, counts in the combined record, so the search's own energy includes the cost
//! of measuring.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::EnergyRecord;
use super::record::ComponentEnergy;

/// Passes needed before the interval is trusted: two give a t quantile of 12.7 and a lucky pair
/// of equal readings would stop at once, and the autocorrelation needs a few passes to show (with
/// 3, three passes inside one fast spell stopped a measurement at ±0.7% that was 10% below the
/// others).
pub const MIN_PASSES: usize = 5;

/// How a repeated measurement stops.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepeatSettings {
    /// Stop once the 95% CI half-width of the mean is at most this share of the mean.
    pub target_rel_ci: f64,
    /// Stop after this many measured passes (warm-up not counted) whatever the interval.
    pub max_passes: usize,
    /// Passes run first and left out of the statistics.
    pub warmup_passes: usize,
}

impl RepeatSettings {
    /// A single pass, no warm-up: what a one-shot measurement does.
    pub fn once() -> RepeatSettings {
        RepeatSettings {
            target_rel_ci: 1.0,
            max_passes: 1,
            warmup_passes: 0,
        }
    }
}

/// The statistics of the measured passes, kept in the combined record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepeatStats {
    /// Passes in the statistics (warm-up not counted).
    pub passes: usize,
    pub warmup_passes: usize,
    /// Mean energy of one pass, joules.
    pub mean_j: f64,
    /// Sample standard deviation of the passes, joules (0 for one pass).
    pub sd_j: f64,
    /// Lag-1 autocorrelation of the passes (0 when it cannot be estimated).
    #[serde(default)]
    pub autocorrelation: f64,
    /// Passes the interval counts: `n (1 - r1) / (1 + r1)` for a positive `r1`, else `n`.
    #[serde(default)]
    pub effective_passes: f64,
    /// Half-width of the 95% confidence interval of the mean, joules (infinite for one pass).
    pub ci95_half_j: f64,
    /// `ci95_half_j / mean_j`.
    pub rel_ci95: f64,
    pub min_j: f64,
    pub max_j: f64,
    /// The target the measurement aimed for, and whether it got there before `max_passes`.
    pub target_rel_ci: f64,
    pub target_met: bool,
    /// Every measured pass, joules, in order: the evidence behind the statistics.
    #[serde(default)]
    pub samples_j: Vec<f64>,
}

impl RepeatStats {
    /// Statistics of `samples` (joules per pass).
    pub fn of(samples: &[f64], warmup_passes: usize, target_rel_ci: f64) -> RepeatStats {
        let n = samples.len();
        let mean = samples.iter().sum::<f64>() / n.max(1) as f64;
        let sd = if n > 1 {
            (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let r1 = lag1_autocorrelation(samples);
        let n_eff = n as f64 * (1.0 - r1.max(0.0)) / (1.0 + r1.max(0.0));
        let half = if n > 1 {
            // The standard error counts the effective passes; the t quantile keeps n - 1
            // degrees of freedom (variance inflation), since r1 from a few passes is itself
            // noisy and t with ~1 degree of freedom would make every interval ±100%.
            t975(n - 1) * sd / n_eff.max(1.0).sqrt()
        } else {
            f64::INFINITY
        };
        let rel = if mean > 0.0 {
            half / mean
        } else {
            f64::INFINITY
        };
        RepeatStats {
            passes: n,
            warmup_passes,
            mean_j: mean,
            sd_j: sd,
            autocorrelation: r1,
            effective_passes: n_eff,
            ci95_half_j: half,
            rel_ci95: rel,
            min_j: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max_j: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            target_rel_ci,
            target_met: n >= MIN_PASSES && rel <= target_rel_ci,
            samples_j: samples.to_vec(),
        }
    }

    /// The mean pass in kWh.
    pub fn mean_kwh(&self) -> f64 {
        self.mean_j / super::J_PER_KWH
    }
}

/// Lag-1 autocorrelation `sum (x_i - m)(x_{i+1} - m) / sum (x_i - m)^2`; 0 for fewer than 3
/// samples or no spread.
pub fn lag1_autocorrelation(xs: &[f64]) -> f64 {
    if xs.len() < 3 {
        return 0.0;
    }
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let c0: f64 = xs.iter().map(|x| (x - m).powi(2)).sum();
    if c0 <= 0.0 {
        return 0.0;
    }
    let c1: f64 = xs.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum();
    c1 / c0
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df.max(1) as f64)
        .map(|t| t.inverse_cdf(0.975))
        .unwrap_or(f64::INFINITY)
}

/// Runs `pass` (one measured window each) until the settings are met; returns the record of all
/// passes together (energy, emissions and duration summed: what measuring cost) with the
/// statistics of the measured ones in `repeat`.
pub fn measure_repeated<E>(
    settings: &RepeatSettings,
    mut pass: impl FnMut() -> Result<EnergyRecord, E>,
) -> Result<EnergyRecord, E> {
    let mut records = Vec::new();
    for _ in 0..settings.warmup_passes {
        records.push(pass()?);
    }
    let mut samples = Vec::new();
    let max = settings.max_passes.max(1);
    loop {
        let r = pass()?;
        samples.push(r.energy_j);
        records.push(r);
        let stats = RepeatStats::of(&samples, settings.warmup_passes, settings.target_rel_ci);
        if stats.target_met || samples.len() >= max {
            let mut total = combine(&records);
            total.repeat = Some(stats);
            return Ok(total);
        }
    }
}

/// One record for consecutive windows: energies, emissions and durations summed, sources and
/// host from the first.
pub fn combine(records: &[EnergyRecord]) -> EnergyRecord {
    let Some(first) = records.first() else {
        return EnergyRecord::empty("none");
    };
    let duration_s: f64 = records.iter().map(|r| r.duration_s).sum();
    let sum = |f: fn(&EnergyRecord) -> &ComponentEnergy| {
        let j: f64 = records.iter().map(|r| f(r).energy_j).sum();
        ComponentEnergy::new(f(first).source, j, duration_s)
    };
    let energy_j: f64 = records.iter().map(|r| r.energy_j).sum();
    let emissions_kg: f64 = records.iter().map(|r| r.emissions_kg).sum();
    let shares: Vec<f64> = records.iter().filter_map(|r| r.share).collect();
    EnergyRecord {
        cpu: sum(|r| &r.cpu),
        gpu: sum(|r| &r.gpu),
        ram: sum(|r| &r.ram),
        duration_s,
        energy_j,
        energy_kwh: energy_j / super::J_PER_KWH,
        emissions_kg,
        emissions_rate_kg_per_s: if duration_s > 0.0 {
            emissions_kg / duration_s
        } else {
            0.0
        },
        share: (!shares.is_empty()).then(|| shares.iter().sum::<f64>() / shares.len() as f64),
        repeat: None,
        ..first.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(j: f64) -> EnergyRecord {
        let mut r = EnergyRecord::empty("inference");
        r.cpu = ComponentEnergy::new(super::super::SourceKind::Estimate, j, 0.1);
        r.energy_j = j;
        r.energy_kwh = j / super::super::J_PER_KWH;
        r.emissions_kg = r.energy_kwh * 0.475;
        r.duration_s = 0.1;
        r
    }

    #[test]
    fn t_quantiles_match_tables() {
        // Standard tables: t(0.975; 1) = 12.706, t(0.975; 9) = 2.262, t(0.975; 30) = 2.042.
        assert!((t975(1) - 12.706).abs() < 1e-3);
        assert!((t975(9) - 2.262).abs() < 1e-3);
        assert!((t975(30) - 2.042).abs() < 1e-3);
    }

    #[test]
    fn stats_by_hand() {
        // 1, 2, 3: mean 2, sd 1, half-width 4.303 / sqrt 3.
        let s = RepeatStats::of(&[1.0, 2.0, 3.0], 1, 0.02);
        assert_eq!(s.mean_j, 2.0);
        assert!((s.sd_j - 1.0).abs() < 1e-12);
        assert!((s.ci95_half_j - 4.302_652_7 / 3f64.sqrt()).abs() < 1e-6);
        assert!((s.rel_ci95 - s.ci95_half_j / 2.0).abs() < 1e-12);
        assert!(!s.target_met);
        assert_eq!((s.min_j, s.max_j), (1.0, 3.0));
        let one = RepeatStats::of(&[5.0], 0, 0.02);
        assert!(one.ci95_half_j.is_infinite() && !one.target_met);
    }

    #[test]
    fn correlated_passes_widen_the_interval() {
        // Two spells of five passes: r1 = 0.7 by hand (c1 = 0.25 x 7 = 1.75, c0 = 2.5), so the
        // ten passes count as 10 x 0.3 / 1.7 = 1.76 and the interval is sqrt(10 / 1.76) = 2.4
        // times the independent one (t(9) x sd / sqrt 10).
        let xs = [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0];
        assert!((lag1_autocorrelation(&xs) - 0.7).abs() < 1e-12);
        let s = RepeatStats::of(&xs, 0, 0.02);
        assert!((s.effective_passes - 3.0 / 1.7).abs() < 1e-12);
        let naive = t975(9) * s.sd_j / 10f64.sqrt();
        assert!((s.ci95_half_j - t975(9) * s.sd_j / (3.0f64 / 1.7).sqrt()).abs() < 1e-12);
        assert!((s.ci95_half_j / naive - (10.0 * 1.7 / 3.0f64).sqrt()).abs() < 1e-9);
        // Alternating passes (r1 < 0) count as independent: the plain t interval.
        let alt = [1.0, 3.0, 1.0, 3.0, 1.0, 3.0];
        let s = RepeatStats::of(&alt, 0, 0.02);
        assert!(s.autocorrelation < 0.0 && s.effective_passes == 6.0);
        assert!((s.ci95_half_j - t975(5) * s.sd_j / 6f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn stops_at_the_target_or_the_cap() {
        // Identical passes: the interval is 0 after MIN_PASSES.
        let mut calls = 0;
        let r = measure_repeated::<()>(
            &RepeatSettings {
                target_rel_ci: 0.02,
                max_passes: 10,
                warmup_passes: 1,
            },
            || {
                calls += 1;
                Ok(rec(if calls == 1 { 9.0 } else { 3.0 }))
            },
        )
        .unwrap();
        let s = r.repeat.as_ref().unwrap();
        assert_eq!(calls, 1 + MIN_PASSES);
        assert_eq!((s.passes, s.mean_j, s.target_met), (MIN_PASSES, 3.0, true));
        // The warm-up's 9 J is counted in the cost but not in the mean.
        assert!((r.energy_j - (9.0 + 3.0 * MIN_PASSES as f64)).abs() < 1e-12);
        assert!((r.duration_s - 0.1 * (1 + MIN_PASSES) as f64).abs() < 1e-12);

        // Alternating 1 J / 3 J never reaches 2%: stops at the cap.
        let mut k = 0;
        let r = measure_repeated::<()>(
            &RepeatSettings {
                target_rel_ci: 0.02,
                max_passes: 6,
                warmup_passes: 0,
            },
            || {
                k += 1;
                Ok(rec(if k % 2 == 0 { 1.0 } else { 3.0 }))
            },
        )
        .unwrap();
        let s = r.repeat.unwrap();
        assert_eq!((k, s.passes, s.target_met), (6, 6, false));
        assert_eq!(s.mean_j, 2.0);
        assert!((r.energy_j - 12.0).abs() < 1e-12);
    }

    #[test]
    fn errors_stop_the_measurement() {
        let mut k = 0;
        let r = measure_repeated(&RepeatSettings::once(), || {
            k += 1;
            Err::<EnergyRecord, _>("meter gone")
        });
        assert_eq!((r.unwrap_err(), k), ("meter gone", 1));
    }
}
