use super::*;
use rigd_protocol::{JobId, UnitKind};

fn unit(n: u64) -> WorkUnit {
    WorkUnit {
        job: JobId::new("job").unwrap_or_else(|_| unreachable!()),
        unit: n,
        attempt: 0,
        kind: UnitKind::GemmI8 {
            seed: n,
            m: 2,
            n: 2,
            k: 2,
        },
    }
}

fn done(u: &WorkUnit) -> Completion {
    Completion {
        unit: u.clone(),
        card: GpuUuid::new("SIM-0").unwrap_or_else(|_| unreachable!()),
        output: UnitOutput::GemmI8 {
            c_digest: [u.unit as u8; 32],
        },
        work: 16,
        started_ms: 1,
        finished_ms: 2,
        governor_level: 0,
    }
}

fn key(dir: &tempfile::TempDir) -> Box<dyn KeyStore> {
    crate::keys::open("file:k", dir.path(), true).unwrap_or_else(|e| panic!("{e}"))
}

fn journal(dir: &tempfile::TempDir) -> Journal {
    let rig = RigId::new("rig-1").unwrap_or_else(|_| unreachable!());
    Journal::open(&dir.path().join("j.db"), rig).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn sequence_numbers_are_gap_free_and_a_unit_is_receipted_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut j = journal(&dir);
    let units: Vec<_> = (1..=5).map(unit).collect();
    assert_eq!(j.add_units(&units).map(|v| v.len()).ok(), Some(5));
    assert_eq!(
        j.add_units(&units).map(|v| v.len()).ok(),
        Some(0),
        "redelivery is not new"
    );
    let c: Vec<_> = units.iter().map(done).collect();
    let k = key(&dir);
    let r = j.record(&c[..3], 256, k.as_ref()).unwrap_or_default();
    assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let r = j.record(&c, 256, k.as_ref()).unwrap_or_default();
    assert_eq!(
        r.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![4, 5],
        "done units skipped"
    );
    assert_eq!(
        j.add_units(&units).map(|v| v.len()).ok(),
        Some(0),
        "done units are not queued again"
    );
    assert_eq!(j.queued_units().map(|v| v.len()).ok(), Some(0));
}

#[test]
fn receipts_are_sealed_into_signed_batches_that_survive_reopen_until_acked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let k = key(&dir);
    {
        let mut j = journal(&dir);
        let units: Vec<_> = (1..=5).map(unit).collect();
        let _ = j.add_units(&units);
        let c: Vec<_> = units.iter().map(done).collect();
        assert_eq!(j.record(&c, 3, k.as_ref()).map(|r| r.len()).ok(), Some(5));
    }
    let mut j = journal(&dir);
    let batches = j
        .unacked_batches(10, &Default::default())
        .unwrap_or_default();
    let sizes: Vec<_> = batches
        .iter()
        .map(|b| (b.header.first_seq, b.items.len()))
        .collect();
    assert_eq!(sizes, vec![(1, 3), (4, 2)]);
    let skipped = j
        .unacked_batches(10, &std::collections::HashSet::from([1]))
        .unwrap_or_default();
    assert_eq!(
        skipped
            .iter()
            .map(|b| b.header.first_seq)
            .collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(
        j.unacked_batches(1, &Default::default())
            .map(|v| v.len())
            .ok(),
        Some(1)
    );
    for b in &batches {
        assert_eq!(
            k.public_key()
                .verify(&b.header.signing_digest(), &b.signature),
            Ok(())
        );
        let again = BatchHeader::over(
            &b.header.rig,
            &b.items
                .iter()
                .map(|i| i.receipt.clone())
                .collect::<Vec<_>>(),
        );
        assert_eq!(again.as_ref(), Ok(&b.header));
    }
    assert_eq!(j.stats().map(|s| s.unacked_receipts).ok(), Some(5));
    assert_eq!(j.ack(&[1, 99]).ok(), Some(1));
    assert_eq!(j.ack(&[1]).ok(), Some(0), "second ack changes nothing");
    assert_eq!(
        j.unacked_batches(10, &Default::default())
            .map(|v| v.len())
            .ok(),
        Some(1)
    );
    assert_eq!(j.stats().map(|s| s.unacked_receipts).ok(), Some(2));
}

#[test]
fn a_corrupt_row_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let j = journal(&dir);
    j.db.execute(
        "INSERT INTO inbox (job, unit, attempt, body) VALUES ('j', 1, 0, x'ffff')",
        [],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        j.queued_units(),
        Err(JournalError::Corrupt { .. })
    ));
}
