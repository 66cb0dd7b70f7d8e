//! The shell carries out the core's effects: on the card tasks, the cards' driver, the
//! journal and the link, feeding back to the core what they answer.

use super::{journal_op, Rig};
use crate::gpu::{GpuError, Reading, XID_FALLEN_OFF_BUS};
use crate::supervisor::{CardRead, Effect, Input, Setting};
use crate::update::Progress;
use crate::RunError;
use rigd_protocol::command::Outcome;
use std::collections::VecDeque;
use std::time::Instant;

impl Rig {
    /// Gives `input` to the core and carries out what it asks, feeding back what the cards
    /// and the journal answer, until nothing is left to do.
    pub(super) async fn step(&mut self, input: Input) -> Result<(), RunError> {
        let mut todo: VecDeque<Effect> = self.core.handle(input, self.now_ms()).into();
        while let Some(effect) = todo.pop_front() {
            if let Some(next) = self.carry_out(effect).await? {
                todo.extend(self.core.handle(next, self.now_ms()));
            }
        }
        Ok(())
    }

    /// Carries out one effect; what it learned, if the core must hear it.
    async fn carry_out(&mut self, effect: Effect) -> Result<Option<Input>, RunError> {
        match effect {
            Effect::Start { card, mut job } => {
                job.fault = self.gpu.unit_starting(card);
                let Some(handle) = self.cards.get(card) else {
                    return Ok(Some(Input::NotStarted {
                        card,
                        unit: job.unit,
                    }));
                };
                if let Err(e) = handle.jobs.try_send(job) {
                    return Ok(Some(Input::NotStarted {
                        card,
                        unit: e.into_inner().unit,
                    }));
                }
            }
            Effect::Abort { card } => {
                if let Some(handle) = self.cards.get(card) {
                    let _ = handle.abort.try_send(());
                }
            }
            Effect::SetPower { card, watts } => {
                if let Err(e) = self.gpu.set_power_limit(card, watts) {
                    tracing::warn!(gpu = card, watts, error = %e, "power limit not set");
                    return Ok(Some(Input::NotApplied {
                        card,
                        setting: Setting::Power,
                    }));
                }
            }
            Effect::SetFan { card, pct } => match self.gpu.set_fan(card, pct) {
                Ok(()) | Err(GpuError::NoFanControl(_)) => {}
                Err(e) => {
                    tracing::warn!(gpu = card, fan_pct = ?pct, error = %e, "fan not set");
                    return Ok(Some(Input::NotApplied {
                        card,
                        setting: Setting::Fan,
                    }));
                }
            },
            Effect::Record(done) => {
                let (receipts, stats) = journal_op(&self.journal, move |j| {
                    let receipts = j.record(&done)?;
                    Ok((receipts.len(), j.stats()?))
                })
                .await?;
                self.batcher.journaled(stats.last_seq, Instant::now());
                tracing::debug!(
                    receipts,
                    waiting = self.batcher.waiting(),
                    "receipts journaled"
                );
                self.start_seal();
                return Ok(Some(Input::Recorded(stats)));
            }
            Effect::Discard(unit) => {
                journal_op(&self.journal, move |j| j.discard_unit(&unit)).await?;
            }
            Effect::SaveHolds { holds, reply } => {
                let saved = self.commands.save_holds(&holds);
                if let Some(mut reply) = reply {
                    if !saved {
                        reply.outcome = Outcome::Failed(
                            "in effect now, but not recorded on disk: a restart of rigd would lose it"
                                .into(),
                        );
                    }
                    self.reply(&reply.to, reply.outcome);
                }
            }
            Effect::Reply(reply) => self.reply(&reply.to, reply.outcome),
            Effect::Diagnose(to) => {
                if let Some(to) = to {
                    let report = self.diagnostics();
                    self.reply(&to, Outcome::Diagnostics(Box::new(report)));
                }
            }
            Effect::Install { update, reply } => {
                self.update_reply = reply;
                let begun = self.updater.begin(&update);
                self.publish_update();
                if let Err(reason) = begun {
                    if let Some(to) = self.update_reply.take() {
                        self.reply(&to, Outcome::Failed(reason));
                    }
                    return Ok(Some(Input::UpdateFailed));
                }
            }
            Effect::PublishStatus => self.publish_status(self.core.state()),
        }
        Ok(None)
    }

    /// What the install task reported: the status goes out; once the update is done with,
    /// the operator hears how, and a failed one puts the rig back to work.
    pub(super) async fn on_update(&mut self, progress: Progress) -> Result<(), RunError> {
        let answer = self.updater.on_progress(progress);
        self.publish_update();
        match answer {
            None => {}
            Some(Ok(done)) => {
                if let Some(to) = self.update_reply.take() {
                    self.reply(&to, Outcome::Completed(done));
                }
            }
            Some(Err(reason)) => {
                if let Some(to) = self.update_reply.take() {
                    self.reply(&to, Outcome::Failed(reason));
                }
                self.step(Input::UpdateFailed).await?;
            }
        }
        Ok(())
    }

    /// A governor period: reads every card the core governs and hands it the readings.
    pub(super) async fn govern(&mut self) -> Result<(), RunError> {
        let now_ms = self.now_ms();
        let mut reads = vec![];
        for (i, busy) in self.core.to_read() {
            let xids = self.gpu.take_xid_events(i).unwrap_or_default();
            let read = if xids.contains(&XID_FALLEN_OFF_BUS) {
                CardRead::FallenOffBus
            } else {
                match self.gpu.read(i, now_ms, busy) {
                    Ok(r) => CardRead::Reading(Reading {
                        xid: xids.last().copied(),
                        ..r
                    }),
                    Err(GpuError::FallenOffBus(_)) => CardRead::FallenOffBus,
                    Err(e) => CardRead::Lost(e.to_string()),
                }
            };
            reads.push((i, read));
        }
        self.step(Input::Readings(reads)).await
    }
}
