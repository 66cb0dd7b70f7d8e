use super::*;
use crate::fixtures::unit;

fn done(u: &WorkUnit) -> Completion {
    crate::fixtures::completion(u, "SIM-0")
}

fn key(dir: &tempfile::TempDir) -> Box<dyn KeyStore> {
    crate::keys::open("file:k", dir.path(), true).unwrap_or_else(|e| panic!("{e}"))
}

fn journal(dir: &tempfile::TempDir) -> Journal {
    let rig = RigId::new("rig-1").unwrap_or_else(|_| unreachable!());
    Journal::open(&dir.path().join("j.db"), rig).unwrap_or_else(|e| panic!("{e}"))
}

/// Both stores, SQLite in `dir` and in memory, for the tests of the behaviour they share.
fn stores(dir: &tempfile::TempDir) -> Vec<Box<dyn JournalStore>> {
    let rig = RigId::new("rig-1").unwrap_or_else(|_| unreachable!());
    vec![Box::new(journal(dir)), Box::new(MemJournal::new(rig))]
}

#[test]
fn sequence_numbers_are_gap_free_and_a_unit_is_receipted_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for mut j in stores(&dir) {
        gap_free(j.as_mut());
    }
}

fn gap_free(j: &mut dyn JournalStore) {
    let units: Vec<_> = (1..=5).map(unit).collect();
    assert_eq!(j.add_units(&units).map(|v| v.len()).ok(), Some(5));
    assert_eq!(
        j.add_units(&units).map(|v| v.len()).ok(),
        Some(0),
        "redelivery is not new"
    );
    let c: Vec<_> = units.iter().map(done).collect();
    let r = j.record(&c[..3]).unwrap_or_default();
    assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let r = j.record(&c).unwrap_or_default();
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
fn the_inbox_holds_at_most_max_inbox_units_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for mut j in stores(&dir) {
        inbox_bound(j.as_mut());
    }
}

fn inbox_bound(j: &mut dyn JournalStore) {
    let units: Vec<_> = (1..=MAX_INBOX + 10).map(unit).collect();
    let (first, rest) = units.split_at(100);
    assert_eq!(j.add_units(first).map(|v| v.len()).ok(), Some(100));
    let added = j.add_units(rest).map(|v| v.len()).ok();
    assert_eq!(added, Some(MAX_INBOX as usize - 100));
    assert_eq!(
        j.queued_units().map(|v| v.len()).ok(),
        Some(MAX_INBOX as usize)
    );
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
        assert_eq!(j.record(&c).map(|r| r.len()).ok(), Some(5));
        assert!(j.seal_all(3, k.as_ref(), Domain::LOCAL).is_ok());
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
            Domain::LOCAL,
            &b.items
                .iter()
                .map(|i| i.receipt.clone())
                .collect::<Vec<_>>(),
        );
        assert_eq!(again.as_ref(), Ok(&b.header));
    }
    assert_eq!(j.stats().map(|s| s.unacked_receipts).ok(), Some(5));
    let acked = |b: &ReceiptBatch| AckedBatch {
        first_seq: b.header.first_seq,
        digest: b.header.signing_digest(),
    };
    let forged = AckedBatch {
        digest: [7; 32],
        ..acked(&batches[1])
    };
    let unknown = AckedBatch {
        first_seq: 99,
        ..acked(&batches[0])
    };
    assert_eq!(
        j.ack(&[forged]).ok(),
        Some((0, 1)),
        "another digest drops nothing"
    );
    assert_eq!(j.ack(&[acked(&batches[0]), unknown]).ok(), Some((1, 0)));
    assert_eq!(
        j.ack(&[acked(&batches[0])]).ok(),
        Some((0, 0)),
        "second ack changes nothing"
    );
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

#[test]
fn receipts_are_durable_before_signing_and_a_batch_cut_before_a_kill_is_cut_again() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let k = key(&dir);
    let units: Vec<_> = (1..=4).map(unit).collect();
    let header = {
        let mut j = journal(&dir);
        let _ = j.add_units(&units);
        let c: Vec<_> = units.iter().map(done).collect();
        assert_eq!(j.record(&c).map(|r| r.len()).ok(), Some(4));
        let stats = j.stats().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (stats.last_seq, stats.sealed_seq),
            (4, 0),
            "journaled, not signed"
        );
        assert_eq!(
            j.unacked_batches(10, &Default::default())
                .map(|b| b.len())
                .ok(),
            Some(0)
        );
        j.next_batch(3, Domain::LOCAL)
            .unwrap_or_else(|e| panic!("{e}"))
        // Dropped here as by a kill: cut and maybe signed, never stored.
    };
    let mut j = journal(&dir);
    let again = j
        .next_batch(3, Domain::LOCAL)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, header, "the same batch is cut again after a restart");
    let header = again.unwrap_or_else(|| panic!("a batch"));
    let sig = k
        .sign_digest(&header.signing_digest())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(j.store_batch(&header, &sig).is_ok());
    assert!(
        matches!(
            j.store_batch(&header, &sig),
            Err(JournalError::Stale { first_seq: 1 })
        ),
        "a batch is stored once"
    );
    // More receipts arrive while the next signature would be pending.
    let more: Vec<_> = (5..=6).map(unit).collect();
    let _ = j.add_units(&more);
    let pending = j
        .next_batch(256, Domain::LOCAL)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pending.as_ref().map(|h| (h.first_seq, h.count)),
        Some((4, 1))
    );
    let c: Vec<_> = more.iter().map(done).collect();
    assert_eq!(j.record(&c).map(|r| r.len()).ok(), Some(2));
    let pending = pending.unwrap_or_else(|| panic!("a batch"));
    let sig = k
        .sign_digest(&pending.signing_digest())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(j.store_batch(&pending, &sig).is_ok());
    let stats = j.stats().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((stats.last_seq, stats.sealed_seq), (6, 4));
    assert!(j.seal_all(256, k.as_ref(), Domain::LOCAL).is_ok());
    let batches = j
        .unacked_batches(10, &Default::default())
        .unwrap_or_default();
    assert_eq!(
        batches
            .iter()
            .map(|b| (b.header.first_seq, b.header.count))
            .collect::<Vec<_>>(),
        vec![(1, 3), (4, 1), (5, 2)]
    );
    for b in &batches {
        assert!(rigd_protocol::verify::verify_batch(b, &k.public_key()).is_ok());
    }
}

#[test]
fn seal_next_signs_the_oldest_waiting_receipts_and_says_when_none_wait() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let k = key(&dir);
    let j = std::sync::Mutex::new(journal(&dir));
    let nothing = seal_next(&j, k.as_ref(), 2, Domain::LOCAL).unwrap_or_else(|e| panic!("{e}"));
    assert!(nothing.took.is_none());
    let units: Vec<_> = (1..=3).map(unit).collect();
    let c: Vec<_> = units.iter().map(done).collect();
    {
        let mut g = j.lock().unwrap_or_else(|e| panic!("{e}"));
        let _ = g.add_units(&units);
        assert_eq!(g.record(&c).map(|r| r.len()).ok(), Some(3));
    }
    let first = seal_next(&j, k.as_ref(), 2, Domain::LOCAL).unwrap_or_else(|e| panic!("{e}"));
    assert!(first.took.is_some());
    assert_eq!((first.stats.sealed_seq, first.stats.last_seq), (2, 3));
    let second = seal_next(&j, k.as_ref(), 2, Domain::LOCAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.stats.sealed_seq, 3);
}

/// The same operations on the SQLite and the in-memory store give the same receipts, batches
/// (byte for byte), acknowledgements, counters and renumbering.
#[test]
fn the_in_memory_journal_behaves_as_the_sqlite_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let k = key(&dir);
    let runs: Vec<Vec<String>> = stores(&dir)
        .into_iter()
        .map(|mut j| script(j.as_mut(), k.as_ref()))
        .collect();
    assert_eq!(runs[0], runs[1]);
    let said = |what: &str| runs[0].iter().any(|l| l.starts_with(what));
    assert!(said("Renumbered { floor: 70, moved: 2 }"), "{:#?}", runs[0]);
    assert!(
        said("Signed { recorded: 120 }") && said("(1, 1)"),
        "{:#?}",
        runs[0]
    );
}

/// A life of a journal, each answer written down.
fn script(j: &mut dyn JournalStore, k: &dyn KeyStore) -> Vec<String> {
    let mut log = vec![];
    let units: Vec<_> = (1..=7).map(unit).collect();
    let c: Vec<_> = units.iter().map(done).collect();
    let ok = |r: Result<String, JournalError>| r.unwrap_or_else(|e| format!("error: {e}"));
    // A fresh journal learns the network recorded 40 receipts of the rig.
    log.push(ok(j.continue_above(40, 10).map(|c| format!("{c:?}"))));
    log.push(ok(j
        .add_units(&units[..5])
        .map(|v| format!("added {}", v.len()))));
    log.push(ok(j.record(&c[..2]).map(|r| format!("{r:?}"))));
    log.push(ok(j.continue_above(60, 10).map(|c| format!("{c:?}"))));
    log.push(ok(j.record(&c[..4]).map(|r| format!("{r:?}"))));
    log.push(ok(j
        .seal_all(3, k, Domain::LOCAL)
        .map(|()| "sealed".into())));
    log.push(ok(j.continue_above(120, 10).map(|c| format!("{c:?}"))));
    let batches = j.unacked_batches(64, &HashSet::new()).unwrap_or_default();
    log.push(format!(
        "{:?}",
        batches
            .iter()
            .map(rigd_protocol::encode)
            .collect::<Vec<_>>()
    ));
    let acks: Vec<AckedBatch> = batches
        .iter()
        .map(|b| AckedBatch {
            first_seq: b.header.first_seq,
            digest: b.header.signing_digest(),
        })
        .collect();
    let mut wrong = acks[1];
    wrong.digest = [9; 32];
    log.push(ok(j.ack(&[acks[0], wrong]).map(|r| format!("{r:?}"))));
    log.push(ok(j.stats().map(|s| format!("{s:?}"))));
    log.push(ok(j
        .add_units(&units)
        .map(|v| format!("added {}", v.len()))));
    j.discard_unit(&units[6]).unwrap_or_else(|e| panic!("{e}"));
    log.push(ok(j.queued_units().map(|v| format!("{v:?}"))));
    log.push(ok(j.record(&c).map(|r| format!("{r:?}"))));
    log.push(ok(j.next_batch(8, Domain::LOCAL).map(|h| format!("{h:?}"))));
    log.push(ok(j.stats().map(|s| format!("{s:?}"))));
    log
}

#[test]
fn a_refused_batch_is_kept_but_never_sent_again_and_counts_as_settled() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let k = key(&dir);
    for mut j in stores(&dir) {
        refused_batches(j.as_mut(), k.as_ref());
    }
}

fn refused_batches(j: &mut dyn JournalStore, k: &dyn KeyStore) {
    let units: Vec<_> = (1..=5).map(unit).collect();
    let _ = j.add_units(&units);
    let c: Vec<_> = units.iter().map(done).collect();
    assert_eq!(j.record(&c).map(|r| r.len()).ok(), Some(5));
    assert!(j.seal_all(3, k, Domain::LOCAL).is_ok());
    let batches = j
        .unacked_batches(10, &Default::default())
        .unwrap_or_default();
    assert_eq!(batches.len(), 2);
    let refusal = |b: &ReceiptBatch, digest| rigd_protocol::RefusedBatch {
        first_seq: b.header.first_seq,
        digest,
        reason: rigd_protocol::RefusalReason::KeyChanged,
    };
    let first = &batches[0];
    assert_eq!(
        j.refuse(&[refusal(first, [9; 32])]).ok(),
        Some((0, 1)),
        "another digest changes nothing"
    );
    let right = refusal(first, first.header.signing_digest());
    assert_eq!(j.refuse(&[right]).ok(), Some((1, 0)));
    let open: Vec<u64> = j
        .unacked_batches(10, &Default::default())
        .unwrap_or_default()
        .iter()
        .map(|b| b.header.first_seq)
        .collect();
    assert_eq!(open, vec![4], "the refused batch is not sent again");
    assert_eq!(j.stats().map(|s| s.unacked_receipts).ok(), Some(2));
    let ack = AckedBatch {
        first_seq: 1,
        digest: first.header.signing_digest(),
    };
    assert_eq!(j.ack(&[ack]).ok(), Some((0, 0)), "settled once");
    assert_eq!(j.refuse(&[right]).ok(), Some((0, 0)));
    assert_eq!(j.stats().map(|s| s.last_seq).ok(), Some(5), "receipts kept");
}
