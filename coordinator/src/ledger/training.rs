//! The MLP side of the ledger: stitching a step and the state a restart resumes from.

use super::{blob_f32, f32_blob, parse_rig, u, Ledger, LedgerError};
use rigd_protocol::{JobId, RigId, UnitOutput};
use rusqlite::{params, OptionalExtension};
use std::ops::Range;

/// A stitched MLP step, kept so that a restarted coordinator resumes from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Steps stitched.
    pub step: u64,
    /// Parameters after the last stitched step.
    pub params: Vec<f32>,
    /// Held-out loss after the last stitched step.
    pub loss: Option<f32>,
}

impl Ledger {
    /// Stitches an MLP step in one transaction: credits the pending receipts of `units`,
    /// drops their kept outputs and stores `checkpoint`. Returns the rigs whose earnings
    /// changed and how many receipts were credited.
    pub fn stitch(
        &mut self,
        job: &JobId,
        units: Range<u64>,
        checkpoint: &Checkpoint,
        now_ms: u64,
    ) -> Result<(Vec<RigId>, u64), LedgerError> {
        let tx = self.conn.savepoint()?;
        let range = params![job.as_str(), u(units.start), u(units.end)];
        let rigs = {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT rig FROM receipts WHERE job = ?1 AND unit >= ?2 AND unit < ?3
                 AND state = 'pending' ORDER BY rig",
            )?;
            let names = stmt
                .query_map(range, |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            names
                .into_iter()
                .map(parse_rig)
                .collect::<Result<Vec<_>, _>>()?
        };
        let credited = tx.execute(
            "UPDATE receipts SET state = 'credited', changed_ms = ?4
             WHERE job = ?1 AND unit >= ?2 AND unit < ?3 AND state = 'pending'",
            params![job.as_str(), u(units.start), u(units.end), u(now_ms)],
        )?;
        tx.execute(
            "DELETE FROM mlp_results WHERE job = ?1 AND unit >= ?2 AND unit < ?3",
            range,
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO mlp_checkpoints(job, step, params, loss_bits) VALUES(?1, ?2, ?3, ?4)",
            params![
                job.as_str(),
                u(checkpoint.step),
                f32_blob(&checkpoint.params),
                checkpoint.loss.map(f32::to_bits)
            ],
        )?;
        tx.commit()?;
        Ok((rigs, u64::try_from(credited).unwrap_or(u64::MAX)))
    }

    /// The last stitched step of `job`, if any.
    pub fn checkpoint(&self, job: &JobId) -> Result<Option<Checkpoint>, LedgerError> {
        let row = self
            .conn
            .query_row(
                "SELECT step, params, loss_bits FROM mlp_checkpoints WHERE job = ?1",
                [job.as_str()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<u32>>(2)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(step, params, loss)| {
            Ok(Checkpoint {
                step,
                params: blob_f32(&params)?,
                loss: loss.map(f32::from_bits),
            })
        })
        .transpose()
    }

    /// Accepted MLP outputs of `job` kept for steps not stitched yet: `(unit, output)`.
    pub fn kept_outputs(&self, job: &JobId) -> Result<Vec<(u64, UnitOutput)>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT unit, loss_bits, samples, grad FROM mlp_results WHERE job = ?1 ORDER BY unit",
        )?;
        let rows = stmt
            .query_map([job.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(unit, loss, samples, grad)| {
                Ok((
                    unit,
                    UnitOutput::MlpGrad {
                        loss_sum: f32::from_bits(loss),
                        samples,
                        grad_sum: blob_f32(&grad)?,
                    },
                ))
            })
            .collect()
    }
}
