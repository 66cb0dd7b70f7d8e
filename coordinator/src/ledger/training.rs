//! The MLP side of the ledger: stitching a step and the state a restart resumes from.

use super::db::p;
use super::{blob_f32, f32_blob, parse_rig, Ledger, LedgerError};
use rigd_protocol::{JobId, RigId, UnitOutput};
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
        let range = p![job.as_str(), units.start, units.end];
        let params = f32_blob(&checkpoint.params);
        self.db.atomic(|tx| {
            let rigs = tx
                .query(
                    "SELECT DISTINCT rig FROM receipts WHERE job = ?1 AND unit >= ?2 AND unit < ?3
                     AND state = 'pending' ORDER BY rig",
                    range,
                )?
                .iter()
                .map(|r| parse_rig(r.text(0)?))
                .collect::<Result<Vec<_>, _>>()?;
            let credited = tx.exec(
                "UPDATE receipts SET state = 'credited', changed_ms = ?4
                 WHERE job = ?1 AND unit >= ?2 AND unit < ?3 AND state = 'pending'",
                p![job.as_str(), units.start, units.end, now_ms],
            )?;
            tx.exec(
                "DELETE FROM mlp_results WHERE job = ?1 AND unit >= ?2 AND unit < ?3",
                range,
            )?;
            let loss = checkpoint.loss.map(|l| i64::from(l.to_bits()));
            tx.exec(
                "INSERT INTO mlp_checkpoints(job, step, params, loss_bits) VALUES(?1, ?2, ?3, ?4)
                 ON CONFLICT(job) DO UPDATE SET step = excluded.step, params = excluded.params,
                 loss_bits = excluded.loss_bits",
                p![
                    job.as_str(),
                    checkpoint.step,
                    &params,
                    loss.map_or(super::db::Val::Null, super::db::Val::Int)
                ],
            )?;
            Ok((rigs, credited))
        })
    }

    /// The last stitched step of `job`, if any.
    pub fn checkpoint(&self, job: &JobId) -> Result<Option<Checkpoint>, LedgerError> {
        let Some(r) = self.db.query_opt(
            "SELECT step, params, loss_bits FROM mlp_checkpoints WHERE job = ?1",
            p![job.as_str()],
        )?
        else {
            return Ok(None);
        };
        let loss = r
            .opt_int(2)?
            .map(|b| u32::try_from(b).map(f32::from_bits))
            .transpose()
            .map_err(|_| LedgerError::Corrupt("a checkpoint's loss is not 32 bits".into()))?;
        Ok(Some(Checkpoint {
            step: r.u64(0)?,
            params: blob_f32(&r.blob(1)?)?,
            loss,
        }))
    }

    /// Accepted MLP outputs of `job` kept for steps not stitched yet: `(unit, output)`.
    pub fn kept_outputs(&self, job: &JobId) -> Result<Vec<(u64, UnitOutput)>, LedgerError> {
        self.db
            .query(
                "SELECT unit, loss_bits, samples, grad FROM mlp_results WHERE job = ?1
                 ORDER BY unit",
                p![job.as_str()],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.u64(0)?,
                    UnitOutput::MlpGrad {
                        loss_sum: f32::from_bits(r.u32(1)?),
                        samples: r.u32(2)?,
                        grad_sum: blob_f32(&r.blob(3)?)?,
                    },
                ))
            })
            .collect()
    }
}
