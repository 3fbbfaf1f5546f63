//! Hyperband and successive halving as SMAC3 schedules them, for budgets such as training epochs.
//!
//! With `eta` and budgets `[min, max]`, `s_max = floor(log_eta(max / min))`. Bracket `s` (cycling
//! `s_max, ..., 0`) starts `n = ceil((s_max + 1) / (s + 1) * eta^s)` configurations at `max * eta^-s`;
//! each rung keeps `floor(n_i / eta)` of them for the next rung, at `eta` times the budget. Budgets are
//! derived downwards from `max`, so a `min` that is not `max * eta^-k` is never used exactly. Successive
//! halving is the single bracket `s_max`, repeated. `min == max` gives plain single-fidelity optimisation.
//!
//! Integer budgets (epochs) are `max * eta^-k` rounded to the nearest integer (halves away from zero):
//! 10..50 with eta 3 runs 17 and 50 epochs. With `min >= 1` and `eta >= 2` rounding never merges rungs.
//!
//! The [`Scheduler`] hands out slots (a new configuration, or a promotion of a finished trial) and never
//! blocks: when every open bracket waits for pending results, it opens the next bracket, so parallel
//! workers stay busy. Each open bracket holds at least one pending trial, so their number stays bounded by
//! the number of workers.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::adaptive::Adaptive;
use super::pareto;

/// Guards float rounding in `log` and `ceil` (e.g. `log_3 27` or `4/3 * 9` landing just off an integer).
const EPS: f64 = 1e-9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Hyperband,
    SuccessiveHalving,
    /// Asynchronous successive halving (Li et al., MLSys 2020): no rung barrier. A free worker
    /// promotes the best not yet promoted trial of the highest rung that has one among its top
    /// 1/eta (non-dominated sorting + crowding distance), else starts a new configuration at the
    /// lowest budget. Workers never wait for a rung to fill.
    Asha,
    /// Hyperband's brackets, asynchronous, every configuration starting at the smallest budget,
    /// with each bracket's share of the cost set by how well its first budget has ranked
    /// configurations for the full budget so far in the run ([`super::adaptive`]).
    Adaptive,
}

/// The fidelity range and how it is scheduled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    pub min: f64,
    pub max: f64,
    pub eta: f64,
    pub schedule: Schedule,
    /// Round budgets to whole units (epochs).
    pub integer: bool,
}

impl Budgets {
    /// Every trial at `budget`: no multi-fidelity.
    pub fn single(budget: f64) -> Self {
        Budgets {
            min: budget,
            max: budget,
            eta: 3.0,
            schedule: Schedule::Hyperband,
            integer: false,
        }
    }

    /// Hyperband over whole epochs.
    pub fn epochs(min: u32, max: u32, eta: u32) -> Self {
        Budgets {
            min: f64::from(min),
            max: f64::from(max),
            eta: f64::from(eta),
            schedule: Schedule::Hyperband,
            integer: true,
        }
    }

    pub fn validate(&self) -> Result<(), BudgetError> {
        for (field, value) in [("min", self.min), ("max", self.max), ("eta", self.eta)] {
            if !value.is_finite() {
                return Err(BudgetError::NotFinite { field, value });
            }
        }
        if self.min <= 0.0 {
            return Err(BudgetError::MinNotPositive(self.min));
        }
        if self.min > self.max {
            return Err(BudgetError::MinAboveMax {
                min: self.min,
                max: self.max,
            });
        }
        if self.eta < 2.0 {
            return Err(BudgetError::EtaTooSmall(self.eta));
        }
        if self.integer && self.min < 1.0 {
            return Err(BudgetError::IntegerBelowOne(self.min));
        }
        Ok(())
    }

    pub fn s_max(&self) -> usize {
        ((self.max / self.min).ln() / self.eta.ln() + EPS)
            .floor()
            .max(0.0) as usize
    }

    /// Where `b` lies between the smallest and the largest budget on a log scale: 0 at `min`,
    /// 1 at `max` (1 when they are equal).
    pub fn level(&self, b: f64) -> f64 {
        if self.max > self.min {
            ((b / self.min).ln() / (self.max / self.min).ln()).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }

    /// `max * eta^-k`, rounded when budgets are integers.
    pub fn budget(&self, k: usize) -> f64 {
        let b = self.max * self.eta.powi(-(k as i32));
        if self.integer { b.round().max(1.0) } else { b }
    }

    /// Rungs of bracket `s`: sizes and budgets.
    pub fn bracket(&self, s: usize) -> Vec<RungPlan> {
        let s_max = self.s_max();
        let mut n =
            ((s_max + 1) as f64 / (s + 1) as f64 * self.eta.powi(s as i32) - EPS).ceil() as usize;
        let mut rungs = Vec::with_capacity(s + 1);
        for i in 0..=s {
            rungs.push(RungPlan {
                n,
                budget: self.budget(s - i),
            });
            n = (n as f64 / self.eta + EPS).floor() as usize;
        }
        rungs
    }

    /// The brackets in the order they run (one cycle).
    pub fn plan(&self) -> Vec<Vec<RungPlan>> {
        match self.schedule {
            // The adaptive schedule starts with Hyperband's shares of the cost.
            Schedule::Hyperband | Schedule::Adaptive => {
                (0..=self.s_max()).rev().map(|s| self.bracket(s)).collect()
            }
            Schedule::SuccessiveHalving | Schedule::Asha => vec![self.bracket(self.s_max())],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RungPlan {
    pub n: usize,
    pub budget: f64,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum BudgetError {
    #[error("budget {field} must be a finite number, got {value}")]
    NotFinite { field: &'static str, value: f64 },
    #[error("min budget must be > 0, got {0}")]
    MinNotPositive(f64),
    #[error("min budget {min} is greater than max budget {max}")]
    MinAboveMax { min: f64, max: f64 },
    #[error("eta must be >= 2 (SMAC's default is 3), got {0}")]
    EtaTooSmall(f64),
    #[error("integer budgets (epochs) need min >= 1, got {0}")]
    IntegerBelowOne(f64),
}

/// What the optimizer should start next.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub bracket: u64,
    pub rung: usize,
    pub budget: f64,
    pub kind: SlotKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// Start a configuration never tried before.
    New,
    /// Run the configuration of finished trial `from` at the higher budget.
    Promote { from: u64 },
}

#[derive(Debug, Clone)]
pub(super) enum Status {
    Pending,
    Success(Vec<f64>),
    /// Measured, but broke a measured constraint: promoted only to fill slots feasible trials cannot.
    Infeasible(Vec<f64>),
    Failed,
}

#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) trial: u64,
    pub(super) result: Status,
}

#[derive(Debug, Clone)]
struct Rung {
    budget: f64,
    target: usize,
    members: Vec<Member>,
    /// Trials promoted into this rung and not yet handed out.
    queue: VecDeque<u64>,
    /// Rung 0 from the start; a later rung once the rung below has chosen whom to promote.
    filled: bool,
    promoted: bool,
}

impl Rung {
    fn complete(&self) -> bool {
        self.filled
            && self.members.len() >= self.target
            && self.queue.is_empty()
            && self
                .members
                .iter()
                .all(|m| !matches!(m.result, Status::Pending))
    }
}

#[derive(Debug, Clone)]
struct Bracket {
    id: u64,
    rungs: Vec<Rung>,
}

impl Bracket {
    fn work(&self) -> Option<Slot> {
        for (r, rung) in self.rungs.iter().enumerate() {
            let kind = if r == 0 && rung.members.len() < rung.target {
                SlotKind::New
            } else if let Some(&from) = rung.queue.front() {
                SlotKind::Promote { from }
            } else {
                continue;
            };
            return Some(Slot {
                bracket: self.id,
                rung: r,
                budget: rung.budget,
                kind,
            });
        }
        None
    }

    fn finished(&self) -> bool {
        self.rungs.last().is_none_or(Rung::complete)
    }

    /// Promotes out of every complete rung that has not promoted yet.
    fn advance(&mut self, eta: f64) {
        for r in 0..self.rungs.len() - 1 {
            if self.rungs[r].promoted || !self.rungs[r].complete() {
                continue;
            }
            let rung = &self.rungs[r];
            let k = (rung.members.len() as f64 / eta + EPS).floor() as usize;
            let candidates = candidates_of(rung.members.iter(), rung.budget);
            let chosen = select_for_promotion(&candidates, k);
            self.rungs[r].promoted = true;
            let next = &mut self.rungs[r + 1];
            next.target = chosen.len();
            next.queue = chosen.into();
            next.filled = true;
        }
    }
}

/// A rung's members as promotion candidates, measured at `budget`.
pub(super) fn candidates_of<'a>(
    members: impl Iterator<Item = &'a Member>,
    budget: f64,
) -> Vec<Candidate<'a>> {
    members
        .map(|m| Candidate {
            trial: m.trial,
            budget,
            costs: match &m.result {
                Status::Success(c) | Status::Infeasible(c) => Some(c.as_slice()),
                _ => None,
            },
            feasible: !matches!(m.result, Status::Infeasible(_)),
        })
        .collect()
}

/// A finished trial competing for promotion.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub trial: u64,
    /// The budget its costs were measured at.
    pub budget: f64,
    /// `None` for a failed trial: never promoted.
    pub costs: Option<&'a [f64]>,
    /// `false` when it broke a measured constraint: promoted only after every feasible one.
    pub feasible: bool,
}

/// Picks up to `k` trials to promote: non-dominated fronts of the raw costs are taken whole while they fit,
/// the last one by largest crowding distance (NSGA-II), as SMAC3 does with several objectives.
///
/// Costs measured at different budgets (a rung rebuilt from a log, a config met again in a later bracket)
/// are compared as they are: the sort needs nothing but comparable vectors, so mixed budgets cannot fail.
/// Failed trials and costs of the wrong length are left out, so fewer than `k` may come back.
///
/// Feasible trials go first, ranked as above; infeasible ones (measured constraint broken) only fill the
/// slots left over, ranked the same way among themselves. Good costs bought by breaking a constraint
/// must not push out a design the user can actually use, while a rung with no feasible trial still
/// promotes its best measurements so the bracket keeps learning.
pub fn select_for_promotion(candidates: &[Candidate], k: usize) -> Vec<u64> {
    let n_obj = candidates
        .iter()
        .find_map(|c| c.costs.map(<[f64]>::len))
        .unwrap_or(0);
    let mut chosen = Vec::with_capacity(k);
    for feasible in [true, false] {
        let ok: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| {
                c.feasible == feasible
                    && c.costs
                        .is_some_and(|v| v.len() == n_obj && v.iter().all(|x| x.is_finite()))
            })
            .collect();
        let points: Vec<Vec<f64>> = ok
            .iter()
            .filter_map(|c| c.costs.map(<[f64]>::to_vec))
            .collect();
        chosen.extend(
            pareto::select_best(&points, k - chosen.len())
                .into_iter()
                .map(|i| ok[i].trial),
        );
    }
    chosen
}

/// Hands out Hyperband work and collects results; knows trials only by id.
#[derive(Debug, Clone)]
pub struct Scheduler {
    budgets: Budgets,
    plan: Vec<Vec<RungPlan>>,
    /// Index into `plan` of the next bracket to open.
    next_in_cycle: usize,
    next_id: u64,
    open: Vec<Bracket>,
    where_is: HashMap<u64, (u64, usize)>,
    /// ASHA's rungs (lowest budget first), when the schedule is asynchronous.
    asha: Vec<AshaRung>,
    /// The adaptive schedule's state, when it is the schedule.
    adaptive: Option<Adaptive>,
}

/// One budget of ASHA: everything ever run at it, and who was promoted out of it.
#[derive(Debug, Clone)]
struct AshaRung {
    budget: f64,
    members: Vec<Member>,
    promoted: std::collections::HashSet<u64>,
}

/// ASHA's bracket id in slots (there is one, never finished).
const ASHA_BRACKET: u64 = 0;

impl Scheduler {
    pub fn new(budgets: Budgets) -> Result<Self, BudgetError> {
        budgets.validate()?;
        let (self_schedule, s_max) = (budgets.schedule, budgets.s_max());
        let b = budgets.clone();
        let b_adaptive = budgets.clone();
        let budget_of = move |k: usize| b.budget(k);
        Ok(Scheduler {
            plan: budgets.plan(),
            budgets,
            next_in_cycle: 0,
            next_id: 0,
            open: Vec::new(),
            where_is: HashMap::new(),
            asha: if self_schedule == Schedule::Asha {
                (0..=s_max)
                    .rev()
                    .map(|k| AshaRung {
                        budget: budget_of(k),
                        members: Vec::new(),
                        promoted: Default::default(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            adaptive: (self_schedule == Schedule::Adaptive).then(|| Adaptive::new(&b_adaptive)),
        })
    }

    /// ASHA's next work: a promotion from the highest rung that has one, else a new
    /// configuration (when `open_new`).
    ///
    /// A rung with `n` finished trials has promoted at most `floor(n / eta)` of them, so the rungs
    /// keep successive halving's sizes. Li et al.'s ASHA promotes whatever is in the current top
    /// `1/eta` and not yet promoted; with several objectives the top set is the last front cut by
    /// crowding distance, which changes with almost every result, and that rule promoted about
    /// two thirds of each rung (measured: 93 / 63 / 44 trials at budgets 1 / 3 / 9 out of 200).
    fn asha_slot(&self, open_new: bool) -> Option<Slot> {
        let eta = self.budgets.eta;
        for r in (0..self.asha.len().saturating_sub(1)).rev() {
            let rung = &self.asha[r];
            let done: Vec<&Member> = rung
                .members
                .iter()
                .filter(|m| !matches!(m.result, Status::Pending))
                .collect();
            let k = (done.len() as f64 / eta + EPS).floor() as usize;
            if rung.promoted.len() >= k {
                continue;
            }
            let candidates = candidates_of(done.iter().copied(), rung.budget);
            if let Some(from) = select_for_promotion(&candidates, k)
                .into_iter()
                .find(|t| !rung.promoted.contains(t))
            {
                return Some(Slot {
                    bracket: ASHA_BRACKET,
                    rung: r + 1,
                    budget: self.asha[r + 1].budget,
                    kind: SlotKind::Promote { from },
                });
            }
        }
        open_new.then(|| Slot {
            bracket: ASHA_BRACKET,
            rung: 0,
            budget: self.asha[0].budget,
            kind: SlotKind::New,
        })
    }

    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Next work in the oldest bracket that has some; opens the next bracket if none has and `open_new`.
    pub fn next_slot(&mut self, open_new: bool) -> Option<Slot> {
        if let Some(adaptive) = &self.adaptive {
            return adaptive.next_slot(open_new);
        }
        if !self.asha.is_empty() {
            return self.asha_slot(open_new);
        }
        if let Some(slot) = self.open.iter().find_map(Bracket::work) {
            return Some(slot);
        }
        if !open_new {
            return None;
        }
        let plan = &self.plan[self.next_in_cycle];
        self.next_in_cycle = (self.next_in_cycle + 1) % self.plan.len();
        let bracket = Bracket {
            id: self.next_id,
            rungs: plan
                .iter()
                .enumerate()
                .map(|(r, p)| Rung {
                    budget: p.budget,
                    target: if r == 0 { p.n } else { 0 },
                    members: Vec::new(),
                    queue: VecDeque::new(),
                    filled: r == 0,
                    promoted: false,
                })
                .collect(),
        };
        self.next_id += 1;
        let slot = bracket.work();
        self.open.push(bracket);
        slot
    }

    /// Records that `trial` fills `slot` (as returned by the last [`Scheduler::next_slot`]).
    pub fn claim(&mut self, slot: &Slot, trial: u64) {
        if let Some(adaptive) = &mut self.adaptive {
            adaptive.claim(slot, trial);
            return;
        }
        if !self.asha.is_empty() {
            if let SlotKind::Promote { from } = slot.kind
                && let Some(below) = slot.rung.checked_sub(1)
            {
                self.asha[below].promoted.insert(from);
            }
            self.asha[slot.rung].members.push(Member {
                trial,
                result: Status::Pending,
            });
            self.where_is.insert(trial, (ASHA_BRACKET, slot.rung));
            return;
        }
        let Some(bracket) = self.open.iter_mut().find(|b| b.id == slot.bracket) else {
            return;
        };
        let rung = &mut bracket.rungs[slot.rung];
        if let SlotKind::Promote { from } = slot.kind {
            rung.queue.retain(|&t| t != from);
        }
        rung.members.push(Member {
            trial,
            result: Status::Pending,
        });
        self.where_is.insert(trial, (slot.bracket, slot.rung));
    }

    /// Records a finished trial (`None` = failed) and promotes out of rungs it completes.
    pub fn report(&mut self, trial: u64, costs: Option<Vec<f64>>) {
        let status = match costs {
            Some(c) => Status::Success(c),
            None => Status::Failed,
        };
        self.record(trial, status);
    }

    /// Records a finished trial that broke a measured constraint (see [`select_for_promotion`]).
    pub fn report_infeasible(&mut self, trial: u64, costs: Vec<f64>) {
        self.record(trial, Status::Infeasible(costs));
    }

    fn record(&mut self, trial: u64, status: Status) {
        if let Some(adaptive) = &mut self.adaptive {
            adaptive.record(trial, status);
            return;
        }
        let Some((bracket_id, rung)) = self.where_is.remove(&trial) else {
            return;
        };
        if !self.asha.is_empty() {
            if let Some(m) = self.asha[rung]
                .members
                .iter_mut()
                .find(|m| m.trial == trial)
            {
                m.result = status;
            }
            return;
        }
        let eta = self.budgets.eta;
        if let Some(bracket) = self.open.iter_mut().find(|b| b.id == bracket_id) {
            if let Some(m) = bracket.rungs[rung]
                .members
                .iter_mut()
                .find(|m| m.trial == trial)
            {
                m.result = status;
            }
            bracket.advance(eta);
        }
        self.open.retain(|b| !b.finished());
    }

    /// Stops a bracket's first rung from waiting for more new configurations (the space ran out).
    pub fn close_intake(&mut self, bracket_id: u64) {
        let eta = self.budgets.eta;
        if let Some(bracket) = self.open.iter_mut().find(|b| b.id == bracket_id) {
            let first = &mut bracket.rungs[0];
            first.target = first.members.len();
            bracket.advance(eta);
        }
        self.open.retain(|b| !b.finished());
    }

    /// Brackets started and not finished.
    pub fn open_brackets(&self) -> usize {
        match &self.adaptive {
            Some(a) => a.busy_brackets(),
            None => self.open.len(),
        }
    }

    /// The adaptive schedule's state (rank agreement, shares), when it is the schedule.
    pub fn adaptive(&self) -> Option<&Adaptive> {
        self.adaptive.as_ref()
    }
}

#[cfg(test)]
mod asha_tests {
    use super::*;

    fn asha() -> Scheduler {
        Scheduler::new(Budgets {
            min: 1.0,
            max: 9.0,
            eta: 3.0,
            schedule: Schedule::Asha,
            integer: true,
        })
        .unwrap()
    }

    #[test]
    fn asha_never_waits_and_promotes_the_best_third_without_a_barrier() {
        let mut s = asha();
        // Three new configurations at the lowest budget, all still running: still new work.
        for id in 0..3 {
            let slot = s.next_slot(true).unwrap();
            assert_eq!((slot.kind, slot.budget), (SlotKind::New, 1.0));
            s.claim(&slot, id);
        }
        assert_eq!(s.next_slot(true).unwrap().kind, SlotKind::New);
        // Two finish: 2 / 3 rounds down to no promotion yet.
        s.report(0, Some(vec![0.5, 0.5]));
        s.report(1, Some(vec![0.9, 0.9]));
        assert_eq!(s.next_slot(true).unwrap().kind, SlotKind::New);
        // The third finishes while nothing else does: trial 2 (dominating) goes up at once.
        s.report(2, Some(vec![0.1, 0.1]));
        let slot = s.next_slot(true).unwrap();
        assert_eq!(
            (slot.kind, slot.budget),
            (SlotKind::Promote { from: 2 }, 3.0)
        );
        s.claim(&slot, 3);
        // Promoted once only; the rung's top third is used up, so new work again.
        assert_eq!(s.next_slot(true).unwrap().kind, SlotKind::New);
        // Without new configurations allowed and nothing to promote, there is no work.
        assert_eq!(s.next_slot(false), None);
        // Three failures make six finished: the top two may go up, and the second is trial 0,
        // never a failed one.
        for id in 4..7 {
            let slot = s.next_slot(true).unwrap();
            assert_eq!(slot.kind, SlotKind::New);
            s.claim(&slot, id);
            s.report(id, None);
        }
        let slot = s.next_slot(false).unwrap();
        assert_eq!(slot.kind, SlotKind::Promote { from: 0 });
        s.claim(&slot, 7);
        assert_eq!(s.next_slot(false), None);
    }

    #[test]
    fn asha_rungs_keep_successive_halvings_sizes() {
        // Two objectives that trade off (a new result often reshuffles the crowding order of
        // the front) and arrive in a scrambled order: still at most a third of a rung goes up.
        let mut s = asha();
        let mut running: Vec<u64> = Vec::new();
        for id in 0..300u64 {
            let slot = s.next_slot(true).unwrap();
            s.claim(&slot, id);
            running.push(id);
            // Four workers: the oldest of five running trials finishes, or a scrambled one.
            if running.len() == 5 {
                let t = running.remove((id as usize * 7) % 5);
                let x = ((t * 2_654_435_761) % 1000) as f64 / 1000.0;
                s.report(t, Some(vec![x, 1.0 - x.sqrt()]));
            }
        }
        let sizes: Vec<usize> = s.asha.iter().map(|r| r.members.len()).collect();
        for r in 0..2 {
            let done = s.asha[r]
                .members
                .iter()
                .filter(|m| !matches!(m.result, Status::Pending))
                .count();
            assert!(
                s.asha[r + 1].members.len() <= done / 3,
                "rung sizes {sizes:?}: rung {} holds more than a third of rung {r}'s {done} finished",
                r + 1
            );
            assert!(s.asha[r + 1].members.len() + 2 >= done / 3, "{sizes:?}");
        }
    }

    #[test]
    fn asha_promotes_from_the_highest_rung_first() {
        let mut s = asha();
        let mut id = 0;
        let mut run = |s: &mut Scheduler, cost: f64| {
            let slot = s.next_slot(true).unwrap();
            s.claim(&slot, id);
            s.report(id, Some(vec![cost, cost]));
            id += 1;
            slot
        };
        // Nine at budget 1 and their three promotions to budget 3, in order of cost.
        let mut budgets = Vec::new();
        for k in 0..12 {
            budgets.push(run(&mut s, f64::from(k)).budget);
        }
        assert!(budgets.contains(&3.0));
        // Once the budget-3 rung has three finished, the next work is a promotion to 9.
        let mut next = s.next_slot(true).unwrap();
        while next.budget < 9.0 {
            run(&mut s, 100.0);
            next = s.next_slot(true).unwrap();
        }
        assert!(matches!(next.kind, SlotKind::Promote { .. }), "{next:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(plan: &[RungPlan]) -> Vec<(usize, f64)> {
        plan.iter().map(|r| (r.n, r.budget)).collect()
    }

    #[test]
    fn brackets_for_eta_3_and_budgets_1_to_27() {
        let b = Budgets::epochs(1, 27, 3);
        assert_eq!(b.s_max(), 3);
        let plan = b.plan();
        assert_eq!(plan.len(), 4);
        assert_eq!(
            sizes(&plan[0]),
            vec![(27, 1.0), (9, 3.0), (3, 9.0), (1, 27.0)]
        );
        assert_eq!(sizes(&plan[1]), vec![(12, 3.0), (4, 9.0), (1, 27.0)]);
        assert_eq!(sizes(&plan[2]), vec![(6, 9.0), (2, 27.0)]);
        assert_eq!(sizes(&plan[3]), vec![(4, 27.0)]);
        let sh = Budgets {
            schedule: Schedule::SuccessiveHalving,
            ..b
        };
        assert_eq!(sh.plan().len(), 1);
        assert_eq!(sh.plan()[0], plan[0]);
    }

    #[test]
    fn brackets_for_eta_3_and_epochs_10_to_50() {
        // log_3(5) = 1.46 -> s_max = 1; 50/3 = 16.7 rounds to 17 epochs; min 10 itself is never used.
        let b = Budgets::epochs(10, 50, 3);
        assert_eq!(b.s_max(), 1);
        let plan = b.plan();
        assert_eq!(sizes(&plan[0]), vec![(3, 17.0), (1, 50.0)]);
        assert_eq!(sizes(&plan[1]), vec![(2, 50.0)]);
        // Without rounding SMAC's float budget.
        let f = Budgets {
            integer: false,
            ..b
        };
        assert!((f.plan()[0][0].budget - 50.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn single_fidelity_is_one_config_per_bracket() {
        let b = Budgets::single(1.0);
        assert_eq!(b.s_max(), 0);
        assert_eq!(sizes(&b.plan()[0]), vec![(1, 1.0)]);
    }

    #[test]
    fn invalid_budgets_are_named() {
        assert_eq!(
            Budgets::epochs(30, 10, 3)
                .validate()
                .unwrap_err()
                .to_string(),
            "min budget 30 is greater than max budget 10"
        );
        assert!(matches!(
            Budgets::epochs(1, 10, 1).validate(),
            Err(BudgetError::EtaTooSmall(_))
        ));
        let b = Budgets {
            min: 0.5,
            ..Budgets::epochs(1, 10, 3)
        };
        assert!(matches!(b.validate(), Err(BudgetError::IntegerBelowOne(_))));
    }

    #[test]
    fn promotion_with_mixed_budgets_and_failures() {
        let a = [0.2, 5.0];
        let b = [0.1, 9.0];
        let c = [0.3, 6.0]; // dominated by a
        let d = [0.5, 1.0];
        let cands = [
            Candidate {
                trial: 1,
                budget: 3.0,
                costs: Some(&a),
                feasible: true,
            },
            Candidate {
                trial: 2,
                budget: 9.0,
                costs: Some(&b),
                feasible: true,
            },
            Candidate {
                trial: 3,
                budget: 3.0,
                costs: Some(&c),
                feasible: true,
            },
            Candidate {
                trial: 4,
                budget: 1.0,
                costs: None,
                feasible: true,
            },
            Candidate {
                trial: 5,
                budget: 9.0,
                costs: Some(&d),
                feasible: true,
            },
        ];
        // Front {1, 2, 5} fits k = 3 whole.
        let mut got = select_for_promotion(&cands, 3);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 5]);
        // k = 2 from that front: the two extremes (infinite crowding distance) 2 and 5.
        let mut got = select_for_promotion(&cands, 2);
        got.sort_unstable();
        assert_eq!(got, vec![2, 5]);
        // The failed trial is never promoted, even when there is room.
        assert_eq!(select_for_promotion(&cands, 10).len(), 4);
        assert!(select_for_promotion(&cands[3..4], 1).is_empty());
    }

    #[test]
    fn feasible_trials_are_promoted_before_infeasible_ones() {
        // The infeasible trials 1 and 2 dominate both feasible ones; feasible 3 dominates 4.
        let costs = [[0.1, 0.1], [0.2, 0.05], [0.5, 0.5], [0.6, 0.6]];
        let cand = |i: usize, feasible: bool| Candidate {
            trial: i as u64 + 1,
            budget: 1.0,
            costs: Some(&costs[i]),
            feasible,
        };
        let cands = [cand(0, false), cand(1, false), cand(2, true), cand(3, true)];
        assert_eq!(select_for_promotion(&cands, 1), vec![3]);
        assert_eq!(select_for_promotion(&cands, 2), vec![3, 4]);
        // Infeasible ones fill what is left, best first: 1 and 2 are one front, the extremes.
        let got = select_for_promotion(&cands, 3);
        assert_eq!(got[..2], [3, 4]);
        assert!(got[2] == 1 || got[2] == 2);
        assert_eq!(select_for_promotion(&cands, 4).len(), 4);
        // Only infeasible ones: they are still promoted.
        assert_eq!(select_for_promotion(&cands[..2], 5).len(), 2);
    }

    /// Runs the scheduler sequentially with cost = trial id (lower ids win) and returns (budget, kind).
    fn drive(budgets: Budgets, n: usize) -> Vec<(f64, SlotKind)> {
        let mut s = Scheduler::new(budgets).unwrap();
        let mut out = Vec::new();
        for id in 0..n as u64 {
            let slot = s.next_slot(true).unwrap();
            s.claim(&slot, id);
            out.push((slot.budget, slot.kind));
            let cost = match slot.kind {
                SlotKind::Promote { from } => from as f64,
                SlotKind::New => id as f64,
            };
            s.report(id, Some(vec![cost, cost]));
        }
        out
    }

    #[test]
    fn sequential_hyperband_runs_whole_brackets() {
        let out = drive(Budgets::epochs(1, 27, 3), 40 + 17 + 8 + 4);
        let count =
            |lo: usize, hi: usize, b: f64| out[lo..hi].iter().filter(|(x, _)| *x == b).count();
        // Bracket s=3: 27 at 1, 9 at 3, 3 at 9, 1 at 27.
        assert_eq!(
            [
                count(0, 40, 1.0),
                count(0, 40, 3.0),
                count(0, 40, 9.0),
                count(0, 40, 27.0)
            ],
            [27, 9, 3, 1]
        );
        // The best of rung 0 (lowest ids 0..9) are promoted, in rank order.
        let promoted: Vec<u64> = out[27..36]
            .iter()
            .map(|(_, k)| match k {
                SlotKind::Promote { from } => *from,
                SlotKind::New => u64::MAX,
            })
            .collect();
        let mut sorted = promoted.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..9).collect::<Vec<u64>>());
        // Bracket s=2: 12 at 3, 4 at 9, 1 at 27; s=1: 6 at 9, 2 at 27; s=0: 4 at 27.
        assert_eq!(
            [count(40, 57, 3.0), count(40, 57, 9.0), count(40, 57, 27.0)],
            [12, 4, 1]
        );
        assert_eq!([count(57, 65, 9.0), count(57, 65, 27.0)], [6, 2]);
        assert_eq!(count(65, 69, 27.0), 4);
    }

    #[test]
    fn waiting_brackets_open_the_next_one() {
        let mut s = Scheduler::new(Budgets::epochs(1, 9, 3)).unwrap();
        // Bracket s=2 has 9 new slots; take them all without reporting.
        for id in 0..9 {
            let slot = s.next_slot(true).unwrap();
            assert_eq!(
                (slot.bracket, slot.kind, slot.budget),
                (0, SlotKind::New, 1.0)
            );
            s.claim(&slot, id);
        }
        // Blocked: the next slot comes from bracket s=1 (5 configs at budget 3).
        assert_eq!(s.next_slot(false), None);
        let slot = s.next_slot(true).unwrap();
        assert_eq!((slot.bracket, slot.budget), (1, 3.0));
        s.claim(&slot, 9);
        for id in 0..9 {
            s.report(id, Some(vec![id as f64]));
        }
        // Bracket 0 finished its rung: its promotions come before bracket 1's remaining new slots.
        let slot = s.next_slot(false).unwrap();
        assert_eq!(
            (slot.bracket, slot.kind, slot.budget),
            (0, SlotKind::Promote { from: 0 }, 3.0)
        );
        assert_eq!(s.open_brackets(), 2);
    }

    #[test]
    fn failures_shrink_the_next_rung_and_closing_intake_ends_a_bracket() {
        let mut s = Scheduler::new(Budgets::epochs(1, 3, 3)).unwrap();
        // Bracket s=1: 3 new at 1, best 1 to budget 3. All three fail: nothing is promoted.
        for id in 0..3 {
            let slot = s.next_slot(true).unwrap();
            s.claim(&slot, id);
        }
        for id in 0..3 {
            s.report(id, None);
        }
        assert_eq!(s.open_brackets(), 0);
        // Next bracket (s=0): 2 new at 3; after one claim the intake closes and its report ends it.
        let slot = s.next_slot(true).unwrap();
        assert_eq!((slot.bracket, slot.budget), (1, 3.0));
        s.claim(&slot, 3);
        s.close_intake(1);
        assert_eq!(s.next_slot(false), None);
        s.report(3, Some(vec![1.0]));
        assert_eq!(s.open_brackets(), 0);
    }
}
