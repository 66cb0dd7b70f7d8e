//! Which unit goes to which rig, and when it comes back: a pure state machine fed the time.
//!
//! A unit is *live* until [`Scheduler::done`]; a live unit is either queued or leased to one
//! rig. A rig holds at most `cards * units_per_card` leases and gets new ones only while it
//! is accepting work. A lease that runs past `lease_ms`, or whose rig goes offline, puts the
//! unit back in the queue with `attempt + 1`, for any rig. A rig whose lease ran out gets
//! no new units for `lease_ms` (so a rig that died without a last will does not keep
//! swallowing units) unless a result from it arrives first ([`Scheduler::heard_from`]).
//!
//! Only leased work is paid: [`Scheduler::leased_to`] says whether a unit attempt is leased
//! to a rig now, or was until less than `grace_ms` ago (a result that arrives just after its
//! lease ran out is still leased work).
//!
//! Every call costs in proportion to the leases it touches, not to the live units: current
//! leases are indexed by deadline (for [`Scheduler::expire`]) and by rig (for
//! [`Scheduler::suspend`]), so an idle tick over a job of a million units is a few lookups.

use rigd_protocol::RigId;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    rig: RigId,
    attempt: u32,
    deadline_ms: u64,
}

/// Leases of a unit that ended without its result, kept for the grace period.
const PAST_LEASES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    attempt: u32,
    lease: Option<Lease>,
    /// The latest leases that ended, oldest first, at most [`PAST_LEASES`].
    past: Vec<Lease>,
}

impl Live {
    /// Keeps an ended lease for the grace period, dropping the oldest beyond [`PAST_LEASES`].
    fn remember(&mut self, lease: Lease) {
        if self.past.len() == PAST_LEASES {
            self.past.remove(0);
        }
        self.past.push(lease);
    }
}

/// A lease handed out, for the ledger: `(unit, attempt, rig, deadline_ms)`.
pub type Granted = (u64, u32, RigId, u64);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slot {
    cards: u32,
    accepting: bool,
    /// The units leased to this rig now.
    leased: BTreeSet<u64>,
    cooldown_until_ms: u64,
    suspended_until_ms: u64,
}

/// Units handed to one rig in one go: `(unit, attempt)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The rig.
    pub rig: RigId,
    /// The units and the attempt each is sent as.
    pub units: Vec<(u64, u32)>,
}

/// The queue and the leases.
#[derive(Debug, Clone)]
pub struct Scheduler {
    lease_ms: u64,
    grace_ms: u64,
    units_per_card: u32,
    queue: VecDeque<u64>,
    live: HashMap<u64, Live>,
    /// Every current lease as `(deadline_ms, unit)`.
    deadlines: BTreeSet<(u64, u64)>,
    rigs: BTreeMap<RigId, Slot>,
    /// The rigs accepting work with spare capacity (cooldowns and suspensions aside, which
    /// [`Scheduler::assign`] checks): what it scans, so that handing out units costs in the
    /// rigs that can take them, not in every rig of the fleet.
    open: BTreeSet<RigId>,
}

impl Scheduler {
    /// An empty scheduler; a lease lasts `lease_ms`, and its results are still taken
    /// `grace_ms` after it ran out.
    pub fn new(lease_ms: u64, grace_ms: u64, units_per_card: u32) -> Self {
        Self {
            lease_ms,
            grace_ms,
            units_per_card,
            queue: VecDeque::new(),
            live: HashMap::new(),
            deadlines: BTreeSet::new(),
            rigs: BTreeMap::new(),
            open: BTreeSet::new(),
        }
    }

    /// Queues new units, each at attempt 0. Units already live are left as they are.
    pub fn add_units(&mut self, units: impl IntoIterator<Item = u64>) {
        for unit in units {
            if let std::collections::hash_map::Entry::Vacant(v) = self.live.entry(unit) {
                v.insert(Live {
                    attempt: 0,
                    lease: None,
                    past: vec![],
                });
                self.queue.push_back(unit);
            }
        }
    }

    /// Updates what a rig offers: its card count and whether it takes new units. A rig that
    /// went offline keeps its leases: its inbox is durable and it finishes them when it comes
    /// back; only an expired lease ([`Scheduler::expire`]) hands a unit to another rig.
    /// Requeueing at once would make a rig that restarts quickly compute every unit twice.
    pub fn rig_status(&mut self, rig: &RigId, cards: u32, accepting: bool, online: bool) {
        let slot = self.rigs.entry(rig.clone()).or_default();
        slot.cards = cards;
        slot.accepting = accepting && online;
        self.reindex(rig);
    }

    /// Puts `rig` in [`Scheduler::open`] or takes it out, after its slot changed.
    fn reindex(&mut self, rig: &RigId) {
        let open = self
            .rigs
            .get(rig)
            .is_some_and(|s| s.accepting && s.leased.len() < self.capacity(s));
        if open {
            if !self.open.contains(rig) {
                self.open.insert(rig.clone());
            }
        } else {
            self.open.remove(rig);
        }
    }

    /// Hands queued units to rigs with spare capacity, one unit per rig per round so that
    /// rigs share a short queue.
    pub fn assign(&mut self, now_ms: u64) -> Vec<Assignment> {
        let mut out: BTreeMap<RigId, Vec<(u64, u32)>> = BTreeMap::new();
        loop {
            let mut gave = false;
            let open: Vec<RigId> = self
                .open
                .iter()
                .filter(|r| {
                    self.rigs.get(*r).is_some_and(|s| {
                        now_ms >= s.cooldown_until_ms && now_ms >= s.suspended_until_ms
                    })
                })
                .cloned()
                .collect();
            for rig in open {
                let Some(unit) = self.pop_queued() else {
                    return Self::collect(out);
                };
                if let Some(attempt) = self.attempt(unit) {
                    self.lease(
                        unit,
                        Lease {
                            rig: rig.clone(),
                            attempt,
                            deadline_ms: now_ms.saturating_add(self.lease_ms),
                        },
                    );
                    out.entry(rig).or_default().push((unit, attempt));
                }
                gave = true;
            }
            if !gave {
                return Self::collect(out);
            }
        }
    }

    fn collect(out: BTreeMap<RigId, Vec<(u64, u32)>>) -> Vec<Assignment> {
        out.into_iter()
            .map(|(rig, units)| Assignment { rig, units })
            .collect()
    }

    fn capacity(&self, slot: &Slot) -> usize {
        (slot.cards as usize).saturating_mul(self.units_per_card as usize)
    }

    /// Makes `lease` the unit's current lease, indexed by deadline and rig; a lease it held
    /// before is taken first and returned.
    fn lease(&mut self, unit: u64, lease: Lease) -> Option<Lease> {
        let old = self.take_lease(unit);
        let Some(live) = self.live.get_mut(&unit) else {
            return old;
        };
        self.deadlines.insert((lease.deadline_ms, unit));
        self.rigs
            .entry(lease.rig.clone())
            .or_default()
            .leased
            .insert(unit);
        let rig = lease.rig.clone();
        live.lease = Some(lease);
        self.reindex(&rig);
        old
    }

    /// Takes the unit's current lease out of the unit and out of both indexes.
    fn take_lease(&mut self, unit: u64) -> Option<Lease> {
        let lease = self.live.get_mut(&unit)?.lease.take()?;
        self.deadlines.remove(&(lease.deadline_ms, unit));
        if let Some(slot) = self.rigs.get_mut(&lease.rig) {
            slot.leased.remove(&unit);
        }
        self.reindex(&lease.rig);
        Some(lease)
    }

    fn pop_queued(&mut self) -> Option<u64> {
        while let Some(unit) = self.queue.pop_front() {
            if self.live.get(&unit).is_some_and(|l| l.lease.is_none()) {
                return Some(unit);
            }
        }
        None
    }

    /// Puts every unit whose lease ran out back in the queue with `attempt + 1`; returns
    /// them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<u64> {
        let mut expired: Vec<u64> = self
            .deadlines
            .range(..=(now_ms, u64::MAX))
            .map(|(_, u)| *u)
            .collect();
        expired.sort_unstable();
        for unit in &expired {
            let rig = self
                .live
                .get(unit)
                .and_then(|l| l.lease.as_ref())
                .map(|l| l.rig.clone());
            if let Some(slot) = rig.and_then(|r| self.rigs.get_mut(&r)) {
                slot.cooldown_until_ms = now_ms.saturating_add(self.lease_ms);
            }
            self.requeue(*unit);
        }
        expired
    }

    /// `rig` gets no new units before `until_ms` (a caught wrong result), and the units
    /// leased to it go back to the queue for other rigs.
    pub fn suspend(&mut self, rig: &RigId, until_ms: u64) {
        let slot = self.rigs.entry(rig.clone()).or_default();
        slot.suspended_until_ms = slot.suspended_until_ms.max(until_ms);
        self.end_leases(rig);
    }

    /// Ends every lease of `rig` at once, with no grace: its units are queued again with
    /// `attempt + 1` (after a suspension, or a rekey: leases granted under a key the rig no
    /// longer holds).
    pub fn end_leases(&mut self, rig: &RigId) {
        let held: Vec<u64> = self
            .rigs
            .get(rig)
            .map(|s| s.leased.iter().copied().collect())
            .unwrap_or_default();
        for unit in held {
            self.end_lease(unit, false);
        }
    }

    /// A result from `rig` arrived: it is alive, any cooldown ends.
    pub fn heard_from(&mut self, rig: &RigId) {
        if let Some(slot) = self.rigs.get_mut(rig) {
            slot.cooldown_until_ms = 0;
        }
    }

    /// Drops a leased unit's lease and queues it again with `attempt + 1` (after an expired
    /// lease or a rig gone); the ended lease is still honoured for the grace period. A unit
    /// already queued stays as it is.
    pub fn requeue(&mut self, unit: u64) {
        self.end_lease(unit, true);
    }

    /// Ends the unit's lease and queues the unit again with `attempt + 1`; `grace` keeps the
    /// ended lease honoured for the grace period (not after a refused result or a
    /// suspension: a rig caught wrong gets no second try at the same attempt).
    fn end_lease(&mut self, unit: u64, grace: bool) {
        let Some(lease) = self.take_lease(unit) else {
            return;
        };
        let Some(live) = self.live.get_mut(&unit) else {
            return;
        };
        live.attempt = live.attempt.saturating_add(1);
        if grace {
            live.remember(lease);
        }
        self.queue.push_back(unit);
    }

    /// Whether attempt `attempt` of `unit` is leased to `rig` now, or was until less than
    /// the grace period ago. A unit that is done or was never issued is leased to no one.
    pub fn leased_to(&self, unit: u64, attempt: u32, rig: &RigId, now_ms: u64) -> bool {
        let Some(live) = self.live.get(&unit) else {
            return false;
        };
        let matches = |l: &Lease| &l.rig == rig && l.attempt == attempt;
        live.lease.as_ref().is_some_and(matches)
            || live
                .past
                .iter()
                .any(|l| matches(l) && now_ms <= l.deadline_ms.saturating_add(self.grace_ms))
    }

    /// Restores a lease recorded before a restart. The latest attempt of a live unit becomes
    /// its lease again (queued units are skipped when popped while leased); earlier ones are
    /// kept for the grace period. Units not live are ignored.
    pub fn restore_lease(&mut self, (unit, attempt, rig, deadline_ms): Granted) {
        let Some(live) = self.live.get_mut(&unit) else {
            return;
        };
        let lease = Lease {
            rig,
            attempt,
            deadline_ms,
        };
        if attempt < live.attempt {
            live.remember(lease);
            return;
        }
        live.attempt = attempt;
        if let Some(old) = self.lease(unit, lease) {
            if let Some(live) = self.live.get_mut(&unit) {
                live.remember(old);
            }
        }
    }

    /// A result of `rig` for the unit was refused: if the unit is leased to that rig, it is
    /// queued again with `attempt + 1`; a lease held by another rig is left alone.
    pub fn release(&mut self, unit: u64, rig: &RigId) {
        let leased_here = self
            .live
            .get(&unit)
            .and_then(|l| l.lease.as_ref())
            .is_some_and(|l| &l.rig == rig);
        if leased_here {
            self.end_lease(unit, false);
        }
    }

    /// The unit has its result: it leaves the queue and its lease is freed.
    pub fn done(&mut self, unit: u64) {
        self.take_lease(unit);
        self.live.remove(&unit);
    }

    /// The current attempt of a live unit.
    pub fn attempt(&self, unit: u64) -> Option<u32> {
        self.live.get(&unit).map(|l| l.attempt)
    }

    /// Units leased to `rig` now.
    pub fn outstanding(&self, rig: &RigId) -> usize {
        self.rigs.get(rig).map_or(0, |s| s.leased.len())
    }

    /// Live units (queued or leased).
    pub fn live_units(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
