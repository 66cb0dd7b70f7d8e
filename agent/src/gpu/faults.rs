//! Faults on a schedule: a [`Gpu`] wrapper that injects each of rig.conf's `[[sim.fault]]`s into
//! its card once the card has been given that many units, so that the supervisor itself
//! knows nothing of fault injection.

use super::{CardModel, Gpu, GpuError, Reading, SimFault, WorkerFault};
use rigd_protocol::CardInfo;

/// A fault due once its card has been given `after_units` units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// The card's index.
    pub card: usize,
    /// Units the card is given before the fault.
    pub after_units: u32,
    /// The fault.
    pub fault: SimFault,
}

/// `G` with faults injected on schedule.
pub struct Scheduled<G> {
    inner: G,
    plan: Vec<Planned>,
    given: Vec<u32>,
}

impl<G: Gpu> Scheduled<G> {
    /// `inner` with `plan`.
    pub fn new(inner: G, plan: Vec<Planned>) -> Self {
        let given = vec![0; inner.inventory().len()];
        Scheduled { inner, plan, given }
    }
}

impl<G: Gpu> Gpu for Scheduled<G> {
    fn inventory(&self) -> Vec<CardInfo> {
        self.inner.inventory()
    }

    fn model(&self, index: usize) -> Result<CardModel, GpuError> {
        self.inner.model(index)
    }

    fn read(&mut self, index: usize, now_ms: u64, busy: bool) -> Result<Reading, GpuError> {
        self.inner.read(index, now_ms, busy)
    }

    fn set_power_limit(&mut self, index: usize, watts: u32) -> Result<(), GpuError> {
        self.inner.set_power_limit(index, watts)
    }

    fn set_fan(&mut self, index: usize, pct: Option<f32>) -> Result<(), GpuError> {
        self.inner.set_fan(index, pct)
    }

    fn take_xid_events(&mut self, index: usize) -> Result<Vec<u32>, GpuError> {
        self.inner.take_xid_events(index)
    }

    fn inject(&mut self, index: usize, fault: SimFault) -> Result<(), GpuError> {
        self.inner.inject(index, fault)
    }

    /// Injects the faults due at this unit of card `index`, then hands on the worker's.
    fn unit_starting(&mut self, index: usize) -> Option<WorkerFault> {
        let given = self.given.get(index).copied()?;
        let due: Vec<SimFault> = self
            .plan
            .iter()
            .filter(|p| p.card == index && p.after_units == given)
            .map(|p| p.fault)
            .collect();
        for fault in due {
            tracing::warn!(gpu = index, ?fault, "injecting a simulated fault");
            if let Err(e) = self.inner.inject(index, fault) {
                tracing::warn!(error = %e, "fault not injected");
            }
        }
        self.given[index] = given.saturating_add(1);
        self.inner.unit_starting(index)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gpu::SimGpu;
    use rigd_protocol::RigId;

    /// A fault planned after two units of card 1 reaches that card's third unit only.
    #[test]
    fn a_planned_fault_reaches_its_card_at_its_unit() {
        let sim = SimGpu::new(&RigId::new("r").unwrap(), 2);
        let plan = vec![Planned {
            card: 1,
            after_units: 2,
            fault: SimFault::Crash,
        }];
        let mut gpu = Scheduled::new(sim, plan);
        let card1: Vec<_> = (0..4).map(|_| gpu.unit_starting(1)).collect();
        assert_eq!(card1, [None, None, Some(WorkerFault::Crash), None]);
        assert_eq!(gpu.unit_starting(0), None);
        assert_eq!(gpu.unit_starting(7), None);
    }
}
