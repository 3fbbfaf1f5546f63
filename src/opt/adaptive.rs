//! The adaptive (cost-aware) schedule: Hyperband's brackets run asynchronously, every
//! configuration starting at the smallest budget, with each bracket's share of the cost set by
//! how well its first budget has ranked configurations for the full budget lately in the run.
//!
//! Bracket `s` *judges* its configurations from budget `b_s = max * eta^-s` on, as Hyperband's
//! bracket `s` starts there: from `b_s` up each rung promotes its best `1/eta` as ASHA does (no
//! barrier, so workers never wait). Below `b_s` a configuration is *continued* unconditionally:
//! a promotion that resumes a saved state costs only the epochs it adds, so training 1, then 3,
//! then 9 epochs costs what training 9 straight does, and the measurements on the way are free.
//! Bracket 0 therefore runs every configuration to the full budget through every lower budget,
//! at single-fidelity cost, and its *chains* are unbiased samples of how each lower budget ranks
//! configurations for the full one (no selection happened in between; the promoted trials of
//! other brackets were chosen by the low budget, which would hide its mistakes).
//!
//! From the recent chains ([`Adaptive::agreement`], [`super::rank`]) each lower budget `b` has a
//! front-rank Spearman correlation with the full budget and a [`trust`] in `[0, 1]`: 0 until
//! [`MIN_PAIRS`] chains show it, and while the evidence does not favour `rho_b >= 0.5` (the
//! benchmark's line between ranking well and misleading), 1 once it does with 90% confidence.
//! [`bracket_shares`] walks from the most aggressive bracket (the cheapest filter) to bracket 0,
//! each bracket taking its first budget's trust of the share the cheaper ones left; bracket 0
//! takes the rest. So the run starts as single-fidelity (full-budget chains), moves the cost to
//! the cheapest budget that ranks well, and comes back to the full budget when low budgets
//! mislead. Budgets measured to mislead are also left out of the cost model and the front
//! recombination ([`Adaptive::misleading_budgets`]): a forest fed mostly with a budget whose
//! optimum lies elsewhere proposes there, budget input or not.
//!
//! New configurations go to the bracket furthest below its share (weighted fair queueing on the
//! expected epochs each new configuration will cost): deterministic, no random draw, and every
//! worker gets work at once.

use std::collections::{HashMap, HashSet};

use super::hyperband::{
    Budgets, Member, Slot, SlotKind, Status, candidates_of, select_for_promotion,
};
use super::{design, rank};

/// The front-rank Spearman correlation from which on a lower budget counts as ranking well.
pub const RANKS_WELL: f64 = 0.5;

/// Chains a lower budget needs before it is trusted at all: Spearman's correlation over fewer
/// pairs of a run's proposals (often near one front, so with few distinct front ranks) swung
/// from 0.8 to 1.0 on a problem whose low budgets mislead, and sent a whole run to them.
pub const MIN_PAIRS: usize = 10;

/// Chains started before this share of the cost committed so far no longer count (see
/// [`Adaptive::agreement`]).
pub const EXPIRE: f64 = 0.25;

/// The confidence that a budget ranks well at which it is trusted fully.
pub const FULL_TRUST: f64 = 0.9;

/// Guards float rounding of `n / eta`.
const EPS: f64 = 1e-9;

/// One budget of one bracket: everything run at it, and who went on from it.
#[derive(Debug, Clone, Default)]
struct Rung {
    members: Vec<Member>,
    promoted: HashSet<u64>,
}

/// Rank agreement of one lower budget with the full budget, from bracket 0's chains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    pub budget: f64,
    /// Front-rank Spearman correlation (NaN until it can be computed).
    pub rho: f64,
    /// Chains measured at both budgets.
    pub pairs: usize,
}

#[derive(Debug, Clone)]
pub struct Adaptive {
    eta: f64,
    /// Budgets, smallest first.
    levels: Vec<f64>,
    /// Expected epochs of a new configuration in bracket `s` (promotions pay what they add).
    config_cost: Vec<f64>,
    /// Epochs committed to each bracket by its new configurations (expected costs).
    committed: Vec<f64>,
    /// `rungs[s][level]`.
    rungs: Vec<Vec<Rung>>,
    /// Trial -> (bracket, level).
    where_is: HashMap<u64, (usize, usize)>,
    /// Trial -> the first trial of its configuration.
    lineage: HashMap<u64, u64>,
    /// Bracket 0's chains: measurements per level, by first trial.
    chains: HashMap<u64, Vec<Option<Vec<f64>>>>,
    /// The epochs committed to all brackets when each chain started.
    started: HashMap<u64, f64>,
}

impl Adaptive {
    pub fn new(budgets: &Budgets) -> Self {
        let s_max = budgets.s_max();
        let levels: Vec<f64> = (0..=s_max).rev().map(|k| budgets.budget(k)).collect();
        let top = levels.len() - 1;
        let eta = budgets.eta;
        let config_cost = (0..=s_max)
            .map(|s| {
                let first = top - s;
                let mut cost = levels[first];
                let mut reach = 1.0;
                for l in first + 1..=top {
                    reach /= eta;
                    cost += reach * (levels[l] - levels[l - 1]);
                }
                cost
            })
            .collect();
        Adaptive {
            eta,
            config_cost,
            committed: vec![0.0; s_max + 1],
            rungs: vec![vec![Rung::default(); levels.len()]; s_max + 1],
            levels,
            where_is: HashMap::new(),
            lineage: HashMap::new(),
            chains: HashMap::new(),
            started: HashMap::new(),
        }
    }

    /// The budget from which bracket `s` judges its configurations: the model scores new
    /// configurations for bracket `s` there and at the full budget (see [`super::smbo`]).
    pub fn judging_budget(&self, s: usize) -> f64 {
        self.levels[self.first_judged(s.min(self.rungs.len() - 1))]
    }

    fn top(&self) -> usize {
        self.levels.len() - 1
    }

    /// The level from which bracket `s` judges its configurations.
    fn first_judged(&self, s: usize) -> usize {
        self.top() - s
    }

    /// Next work: a promotion from the highest budget that has one (unconditional continuations
    /// and ASHA promotions alike), else a new configuration (when `open_new`) in the bracket
    /// furthest below its share. Changes nothing: [`Adaptive::claim`] commits the slot.
    pub fn next_slot(&self, open_new: bool) -> Option<Slot> {
        for level in (0..self.top()).rev() {
            for s in 0..self.rungs.len() {
                if let Some(from) = self.promotion(s, level) {
                    return Some(Slot {
                        bracket: s as u64,
                        rung: level + 1,
                        budget: self.levels[level + 1],
                        kind: SlotKind::Promote { from },
                    });
                }
            }
        }
        if !open_new {
            return None;
        }
        let shares = self.shares();
        let s = (0..shares.len())
            .filter(|&s| shares[s] > 0.0)
            .min_by(|&a, &b| {
                let finish = |s: usize| (self.committed[s] + self.config_cost[s]) / shares[s];
                finish(a).total_cmp(&finish(b)).then(b.cmp(&a))
            })?;
        Some(Slot {
            bracket: s as u64,
            rung: 0,
            budget: self.levels[0],
            kind: SlotKind::New,
        })
    }

    /// The trial bracket `s` should promote out of `level` now, if any.
    fn promotion(&self, s: usize, level: usize) -> Option<u64> {
        let rung = &self.rungs[s][level];
        let done = rung
            .members
            .iter()
            .filter(|m| !matches!(m.result, Status::Pending));
        if level < self.first_judged(s) {
            // Continued whatever it measured; only a failure ends the chain.
            return done
                .filter(|m| !matches!(m.result, Status::Failed))
                .map(|m| m.trial)
                .find(|t| !rung.promoted.contains(t));
        }
        let done: Vec<&Member> = done.collect();
        let k = (done.len() as f64 / self.eta + EPS).floor() as usize;
        if rung.promoted.len() >= k {
            return None;
        }
        let candidates = candidates_of(done.iter().copied(), self.levels[level]);
        select_for_promotion(&candidates, k)
            .into_iter()
            .find(|t| !rung.promoted.contains(t))
    }

    pub fn claim(&mut self, slot: &Slot, trial: u64) {
        let s = slot.bracket as usize;
        if s >= self.rungs.len() || slot.rung >= self.levels.len() {
            return;
        }
        let first = match slot.kind {
            SlotKind::New => {
                if s == 0 {
                    self.started.insert(trial, self.committed.iter().sum());
                }
                self.committed[s] += self.config_cost[s];
                trial
            }
            SlotKind::Promote { from } => {
                if let Some(below) = slot.rung.checked_sub(1) {
                    self.rungs[s][below].promoted.insert(from);
                }
                self.lineage.get(&from).copied().unwrap_or(from)
            }
        };
        self.lineage.insert(trial, first);
        self.rungs[s][slot.rung].members.push(Member {
            trial,
            result: Status::Pending,
        });
        self.where_is.insert(trial, (s, slot.rung));
    }

    pub(super) fn record(&mut self, trial: u64, status: Status) {
        let Some((s, level)) = self.where_is.remove(&trial) else {
            return;
        };
        if s == 0
            && let Status::Success(c) | Status::Infeasible(c) = &status
            && let Some(&first) = self.lineage.get(&trial)
        {
            let n = self.levels.len();
            self.chains.entry(first).or_insert_with(|| vec![None; n])[level] = Some(c.clone());
        }
        if let Some(m) = self.rungs[s][level]
            .members
            .iter_mut()
            .find(|m| m.trial == trial)
        {
            m.result = status;
        }
    }

    /// How each lower budget has ranked bracket 0's recent chains for the full budget, smallest
    /// budget first.
    pub fn agreement(&self) -> Vec<Agreement> {
        let top = self.top();
        // Chains started in the last three quarters of the cost committed so far ([`EXPIRE`])
        // and finished at the full budget, in order of their first trial (so the estimate does
        // not depend on hashing). Proposals gather near the front as the run goes, where low
        // budgets often rank worse than over the random configurations of the start; and
        // evidence that is not renewed expires: when trusting low budgets starves bracket 0,
        // its chains age out, the trust falls and bracket 0 gets the cost to measure again.
        let since = self.committed.iter().sum::<f64>() * EXPIRE;
        let mut recent: Vec<u64> = self
            .chains
            .iter()
            .filter(|(f, c)| c[top].is_some() && self.started.get(f).is_some_and(|&t| t >= since))
            .map(|(f, _)| *f)
            .collect();
        recent.sort_unstable();
        (0..top)
            .map(|level| {
                let (low, high): (Vec<Vec<f64>>, Vec<Vec<f64>>) = recent
                    .iter()
                    .filter_map(|f| {
                        let chain = &self.chains[f];
                        Some((chain[level].clone()?, chain[top].clone()?))
                    })
                    .unzip();
                Agreement {
                    budget: self.levels[level],
                    rho: rank::front_rank_agreement(&low, &high),
                    pairs: low.len(),
                }
            })
            .collect()
    }

    /// Each bracket's target share of the cost now (see the module doc).
    pub fn shares(&self) -> Vec<f64> {
        let agreement = self.agreement();
        let trusts: Vec<f64> = (0..self.rungs.len())
            .map(|s| match s {
                0 => 1.0,
                _ => trust(agreement[self.first_judged(s)]),
            })
            .collect();
        bracket_shares(&trusts)
    }

    /// Lower budgets the recent chains say mislead (`P(rho >= 0.5) < 0.5` over at least 4 of
    /// them): the cost model and the front recombination leave their trials out.
    pub fn misleading_budgets(&self) -> Vec<f64> {
        self.agreement()
            .into_iter()
            .filter(|a| rank::prob_at_least(a.rho, a.pairs, RANKS_WELL) < 0.5)
            .map(|a| a.budget)
            .collect()
    }

    /// Epochs committed to each bracket so far by its new configurations (their expected cost,
    /// promotions included): where the schedule has sent the cost.
    pub fn committed(&self) -> &[f64] {
        &self.committed
    }

    /// Brackets with a trial running.
    pub fn busy_brackets(&self) -> usize {
        let busy: HashSet<usize> = self.where_is.values().map(|(s, _)| *s).collect();
        busy.len()
    }
}

/// The initial design's size under this schedule: SMAC's rule ([`design::default_size`]) for
/// `max_trials` trials, in configurations that each run a chain through all `levels` budgets
/// (so the design spends about the trials the rule gives), and at least [`MIN_PAIRS`] of them,
/// the chains that measure the rank agreement. Sized as single fidelity's (25 configurations,
/// each a full chain) it spent the first quarter of the benchmark's cost on random
/// configurations; with 10 the per-seed median ratio to single fidelity over seeds 0-9 and
/// 100-109 went from 0.94 to 1.06 on mf-dtlz2 (1.04 to 1.06 with 6 to 15 chains) and from
/// 0.93 to 1.16 on mf-zdt3 (0.99 to 1.16: partly luck), and from 1.23 to 1.09 on mf-zdt1
/// (README).
pub fn design_size(n_params: usize, max_trials: usize, levels: usize) -> usize {
    (design::default_size(n_params, max_trials) / levels.max(1)).max(MIN_PAIRS)
}

/// How far a budget is trusted, 0 to 1, from its rank agreement with the full budget: 0 with
/// fewer than [`MIN_PAIRS`] chains or while the evidence does not favour ranking well
/// (`P(rho >= 0.5) <= 0.5`), rising linearly to 1 at [`FULL_TRUST`] confidence. Sharing the
/// cost in proportion to the bare probability gave a budget measured at 0.4 over 9 chains 40%
/// of it.
pub fn trust(a: Agreement) -> f64 {
    if a.pairs < MIN_PAIRS {
        return 0.0;
    }
    let p = rank::prob_at_least(a.rho, a.pairs, RANKS_WELL);
    ((p - 0.5) / (FULL_TRUST - 0.5)).clamp(0.0, 1.0)
}

/// Cost shares of the brackets from the trust in each bracket's first budget (`trusts[s]`,
/// `s >= 1`; `trusts[0]` is unused, the full budget ranks itself): walking from the most
/// aggressive bracket (`s_max`, the cheapest filter) towards bracket 0, each bracket takes its
/// trust's share of what the cheaper ones left, and bracket 0 takes the rest. A bracket whose
/// budget ranks as well as a cheaper one's is not worth its higher cost.
pub fn bracket_shares(trusts: &[f64]) -> Vec<f64> {
    let n = trusts.len();
    let mut w = vec![0.0; n];
    let mut left = 1.0;
    for s in (1..n).rev() {
        w[s] = left * trusts[s].clamp(0.0, 1.0);
        left -= w[s];
    }
    if let Some(full) = w.first_mut() {
        *full = left;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opt::Schedule;

    fn budgets() -> Budgets {
        Budgets {
            schedule: Schedule::Adaptive,
            ..Budgets::epochs(1, 27, 3)
        }
    }

    /// Runs `n` trials one at a time. A configuration is a number `v` (its first trial id);
    /// both objectives are `v` at the full budget and `low(v)` below it, so the lower budgets
    /// rank configurations as the full one does when `low` is increasing.
    fn drive(a: &mut Adaptive, n: u64, start: u64, low: &dyn Fn(f64) -> f64) -> Vec<Slot> {
        let mut config: HashMap<u64, f64> = HashMap::new();
        let mut slots = Vec::new();
        for id in start..start + n {
            let slot = a.next_slot(true).unwrap();
            a.claim(&slot, id);
            let v = match slot.kind {
                SlotKind::New => id as f64,
                SlotKind::Promote { from } => config[&from],
            };
            config.insert(id, v);
            let x = if slot.budget == 27.0 { v } else { low(v) };
            a.record(id, Status::Success(vec![x, x]));
            slots.push(slot);
        }
        slots
    }

    #[test]
    fn bracket_shares_walk_from_the_cheapest_trusted_budget() {
        // Nothing trusted: everything at the full budget.
        assert_eq!(
            bracket_shares(&[1.0, 0.0, 0.0, 0.0]),
            vec![1.0, 0.0, 0.0, 0.0]
        );
        // The smallest budget trusted: the most aggressive bracket takes everything, even
        // though the larger budgets are trusted too.
        assert_eq!(
            bracket_shares(&[1.0, 1.0, 1.0, 1.0]),
            vec![0.0, 0.0, 0.0, 1.0]
        );
        // Half-trusted budgets: each bracket half of what the cheaper ones left.
        assert_eq!(
            bracket_shares(&[1.0, 0.5, 0.5, 0.5]),
            vec![0.125, 0.125, 0.25, 0.5]
        );
        // Only the largest lower budget ranks well: the bracket that judges from it.
        assert_eq!(
            bracket_shares(&[1.0, 1.0, 0.0, 0.0]),
            vec![0.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(bracket_shares(&[1.0]), vec![1.0]);
    }

    #[test]
    fn the_design_spends_the_trials_of_smacs_rule_in_chains() {
        // 6 parameters, 400 trials: SMAC's rule gives 60 trials, 15 chains of 4.
        assert_eq!(design_size(6, 400, 4), 15);
        // 100 trials: 25 trials would be 6 chains, too few to measure the agreement.
        assert_eq!(design_size(6, 100, 4), MIN_PAIRS);
        // One budget: SMAC's rule itself.
        assert_eq!(design_size(6, 400, 1), 60);
    }

    #[test]
    fn trust_needs_enough_chains_and_evidence() {
        let a = |rho, pairs| Agreement {
            budget: 1.0,
            rho,
            pairs,
        };
        // Perfect agreement, but too few chains.
        assert_eq!(trust(a(1.0, MIN_PAIRS - 1)), 0.0);
        // Below or at the line: none, however many chains.
        assert_eq!(trust(a(0.3, 40)), 0.0);
        assert_eq!(trust(a(0.5, 40)), 0.0);
        assert_eq!(trust(a(f64::NAN, 40)), 0.0);
        // Clearly above it: full trust; in between, partial.
        assert_eq!(trust(a(0.9, 20)), 1.0);
        let t = trust(a(0.65, 20));
        assert!(t > 0.0 && t < 1.0, "{t}");
        assert!(trust(a(0.65, 40)) > t);
    }

    #[test]
    fn a_new_run_chains_every_configuration_to_the_full_budget() {
        let mut a = Adaptive::new(&budgets());
        // No evidence yet: bracket 0, every configuration through 1, 3, 9 to 27 epochs, even the
        // worst ones (the low budgets here rank them in reverse).
        let slots = drive(&mut a, 8, 0, &|v| -v);
        let budgets: Vec<f64> = slots.iter().map(|s| s.budget).collect();
        assert_eq!(budgets, [1.0, 3.0, 9.0, 27.0, 1.0, 3.0, 9.0, 27.0]);
        assert!(slots.iter().all(|s| s.bracket == 0));
        assert_eq!(slots[1].kind, SlotKind::Promote { from: 0 });
        assert_eq!(slots[3].kind, SlotKind::Promote { from: 2 });
        // Bracket s judges from Hyperband's first budget of bracket s.
        let judged: Vec<f64> = (0..4).map(|s| a.judging_budget(s)).collect();
        assert_eq!(judged, [27.0, 9.0, 3.0, 1.0]);
        // 54 epochs committed: the first chain started in their first quarter and has expired.
        assert_eq!(a.agreement()[0].pairs, 1);
    }

    #[test]
    fn low_budgets_that_rank_well_take_the_cost_and_are_checked_again() {
        let mut a = Adaptive::new(&budgets());
        // Enough chains for trust, with low budgets that agree.
        drive(&mut a, 4 * 14, 0, &|v| 2.0 * v + 1.0);
        let agreement = a.agreement();
        assert!(
            agreement
                .iter()
                .all(|g| g.pairs >= MIN_PAIRS && g.rho > 0.99)
        );
        assert_eq!(a.shares(), vec![0.0, 0.0, 0.0, 1.0]);
        assert!(a.misleading_budgets().is_empty());
        let before = a.rungs[0][0].members.len();
        // The cost goes to the most aggressive bracket, whose promotions are selective.
        let slots = drive(&mut a, 400, 1000, &|v| 2.0 * v + 1.0);
        let new_in = |s: u64| {
            slots
                .iter()
                .filter(|x| x.kind == SlotKind::New && x.bracket == s)
                .count()
        };
        assert!(new_in(3) > 200, "{}", new_in(3));
        let r = &a.rungs[3];
        assert!(r[1].members.len() <= r[0].members.len() / 3);
        // Evidence expires as the cost grows: bracket 0 gets chains again to measure anew.
        assert!(a.rungs[0][0].members.len() > before);
    }

    #[test]
    fn low_budgets_that_mislead_keep_the_cost_at_the_full_budget() {
        let mut a = Adaptive::new(&budgets());
        // The low budgets rank in reverse: whatever is measured, bracket 0 keeps everything.
        let slots = drive(&mut a, 4 * 40, 0, &|v| -v);
        assert!(slots.iter().all(|s| s.bracket == 0));
        assert!(a.agreement().iter().all(|g| g.rho < -0.99));
        assert_eq!(a.misleading_budgets(), vec![1.0, 3.0, 9.0]);
        assert_eq!(a.shares(), vec![1.0, 0.0, 0.0, 0.0]);
    }
}
