//! Messages of every kind with plausible values, for the tests of every crate.

use rigd_protocol::{
    CardEarnings, CardInfo, CardState, CoordinatorStatus, Earnings, GpuSample, GpuUuid, JobId,
    PublicKey, Receipt, RigId, RigState, RigStatus, Telemetry,
};

/// Start of the fixtures' clock, Unix ms.
pub const T0: u64 = 1_700_000_000_000;

/// The rig id `name`.
pub fn rig_id(name: &str) -> RigId {
    RigId::new(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The job id `name`.
pub fn job_id(name: &str) -> JobId {
    JobId::new(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The UUID of simulated card `index` of `rig`.
pub fn uuid(rig: &str, index: u32) -> GpuUuid {
    GpuUuid::new(format!("SIM-{rig}-{index}")).unwrap_or_else(|e| panic!("{e}"))
}

/// Receipt `seq` of `rig` for unit `unit` of job `job`, computed on card `card` (2 MFLOP).
pub fn receipt(rig: &str, seq: u64, job: &str, unit: u64, card: u32) -> Receipt {
    Receipt {
        rig: rig_id(rig),
        seq,
        card: uuid(rig, card),
        job: job_id(job),
        unit,
        attempt: 0,
        work: 2_000_000,
        input_digest: [1; 32],
        output_digest: [2; 32],
        started_ms: 1,
        finished_ms: 2,
        governor_level: 0,
    }
}

/// A working rig's retained status with `cards` cards.
pub fn status(rig: &str, cards: u32) -> RigStatus {
    RigStatus {
        rig: rig_id(rig),
        agent_version: "0.1.0".into(),
        pubkey: PublicKey::Secp256k1(vec![2; 33]),
        key_backend: "file (software, not hardware-held)".into(),
        key_health: rigd_protocol::KeyHealth::Answering,
        state: RigState::Working,
        cards: (0..cards)
            .map(|index| CardInfo {
                uuid: uuid(rig, index),
                index,
                name: "Sim RTX 3090".into(),
                vram_mib: 24576,
                power_limit_w: 350,
            })
            .collect(),
        units_running: cards,
        units_queued: 4,
        seq_journaled: 41,
        receipts_unacked: 3,
        started_ms: T0,
        sent_ms: T0 + 10_000,
    }
}

/// Telemetry of `cards` cards of `rig`.
pub fn telemetry(rig: &str, cards: u32) -> Telemetry {
    Telemetry {
        rig: rig_id(rig),
        at_ms: T0 + 10_000,
        gpus: (0..cards)
            .map(|index| GpuSample {
                uuid: uuid(rig, index),
                core_dc: 765,
                mem_dc: (index == 0).then_some(882),
                power_w: 331,
                power_limit_w: 350,
                fan_pct: 60,
                util_pct: 97,
                sm_mhz: 1695,
                governor_level: 1,
                state: CardState::Busy,
                unit: Some(100 + u64::from(index)),
                units_done: 12,
                worker_restarts: 0,
                fb_used_mib: 6_144,
                xid: 0,
            })
            .collect(),
    }
}

/// The coordinator's earnings of `rig` over `cards` cards.
pub fn earnings(rig: &str, cards: u32) -> Earnings {
    Earnings {
        rig: rig_id(rig),
        cards: (0..cards)
            .map(|index| CardEarnings {
                card: Some(uuid(rig, index)),
                credited_units: 10,
                credited_micros: 1_234_567,
                pending_units: 2,
                pending_micros: 5,
                rejected_units: u64::from(index),
            })
            .collect(),
        micros_per_mflop: 3,
        last_seq: 41,
        missing_seqs: 0,
        updated_ms: T0 + 9_000,
        pinned_key: None,
        key_changed: false,
    }
}

/// The coordinator's status at step 12 of 60, `finished` or not.
pub fn coordinator(finished: bool) -> CoordinatorStatus {
    CoordinatorStatus {
        job: job_id("mlp-1"),
        step: 12,
        steps_total: 60,
        loss: Some(0.4312),
        units_done: 96,
        units_verified: 14,
        units_rejected: 1,
        leases_expired: 2,
        batches_refused: 1,
        receipts_credited: 90,
        rigs_online: 3,
        finished,
        updated_ms: T0 + 9_500,
    }
}
