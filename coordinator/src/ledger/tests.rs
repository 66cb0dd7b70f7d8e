use super::*;

fn rig() -> RigId {
    RigId::new("rig-1").unwrap_or_else(|_| unreachable!())
}

fn job() -> JobId {
    JobId::new("job").unwrap_or_else(|_| unreachable!())
}

fn receipt(seq: u64, unit: u64) -> Receipt {
    rigd_testkit::fixtures::receipt("rig-1", seq, "job", unit, (seq % 2) as u32)
}

/// The database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A test's database: its file's directory or its server, and where the ledger is.
struct Store {
    _dir: Option<tempfile::TempDir>,
    _server: Option<rigd_testkit::postgres::Postgres>,
    location: Location,
}

impl Store {
    /// A second connection to the same ledger, read-only.
    fn reader(&self) -> Ledger {
        Ledger::open_at(&self.location).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn fresh(backend: Backend) -> (Store, Ledger) {
    let store = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
            let location = Location::File(dir.path().join("ledger.db"));
            Store {
                _dir: Some(dir),
                _server: None,
                location,
            }
        }
        Backend::Postgres => {
            let server = rigd_testkit::postgres::Postgres::start();
            let location = Location::parse(&server.url());
            Store {
                _dir: None,
                _server: Some(server),
                location,
            }
        }
    };
    let ledger = Ledger::create_at(&store.location, 3).unwrap_or_else(|e| panic!("{e}"));
    (store, ledger)
}

/// Runs each named test on SQLite and on PostgreSQL, as `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Backend::Postgres)
            }
        })*
    };
}

fn credited(r: &Receipt) -> Entry<'_> {
    Entry {
        receipt: r,
        state: ReceiptState::Credited,
        reason: None,
        micros: 6,
    }
}

fn duplicate_delivery_changes_nothing_but_the_duplicate_count(backend: Backend) {
    let (_store, mut ledger) = fresh(backend);
    let receipts: Vec<Receipt> = (1..=3).map(|s| receipt(s, s)).collect();
    let batch = BatchRecord {
        entries: receipts.iter().map(credited).collect(),
        ..BatchRecord::default()
    };
    ledger
        .record_batch(&rig(), &batch, 10)
        .unwrap_or_else(|e| panic!("{e}"));
    let before = ledger.earnings(&rig()).unwrap_or_else(|e| panic!("{e}"));
    ledger
        .record_batch(&rig(), &batch, 20)
        .unwrap_or_else(|e| panic!("{e}"));
    let after = ledger.earnings(&rig()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before, after);
    assert_eq!(ledger.duplicate_deliveries(&rig()).unwrap_or(0), 3);
    assert_eq!(
        ledger.recorded_seqs(&rig()).unwrap_or_default(),
        vec![1, 2, 3]
    );
    assert_eq!(
        ledger.credited_units(&job()).unwrap_or_default(),
        vec![(1, 1), (2, 1), (3, 1)]
    );
}

fn totals_are_exact_per_card_and_state(backend: Backend) {
    let (_store, mut ledger) = fresh(backend);
    let receipts: Vec<Receipt> = (1..=5).map(|s| receipt(s, s)).collect();
    let mut entries: Vec<Entry<'_>> = receipts.iter().map(credited).collect();
    entries[3].state = ReceiptState::Rejected;
    entries[3].reason = Some("result mismatch");
    entries[3].micros = 0;
    entries[4].state = ReceiptState::Pending;
    let batch = BatchRecord {
        entries,
        ..BatchRecord::default()
    };
    ledger
        .record_batch(&rig(), &batch, 10)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = ledger.earnings(&rig()).unwrap_or_else(|e| panic!("{e}"));
    let t = e.total();
    assert_eq!((t.credited_units, t.credited_micros), (3, 18));
    assert_eq!((t.pending_units, t.pending_micros), (1, 6));
    assert_eq!(t.rejected_units, 1);
    assert_eq!(e.cards.len(), 2);
    assert_eq!((e.last_seq, e.missing_seqs, e.micros_per_mflop), (5, 0, 3));
}

fn missing_seqs_count_the_gaps_below_the_highest(backend: Backend) {
    let (_store, mut ledger) = fresh(backend);
    let receipts = [receipt(1, 1), receipt(4, 4)];
    let batch = BatchRecord {
        entries: receipts.iter().map(credited).collect(),
        ..BatchRecord::default()
    };
    ledger
        .record_batch(&rig(), &batch, 10)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = ledger.earnings(&rig()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((e.last_seq, e.missing_seqs), (4, 2));
}

fn a_failed_batch_transaction_leaves_nothing_behind(backend: Backend) {
    let (_store, mut ledger) = fresh(backend);
    let receipts = [receipt(1, 1), receipt(2, 2)];
    let batch = BatchRecord {
        entries: receipts.iter().map(credited).collect(),
        ..BatchRecord::default()
    };
    // The last statement of the transaction fails: nothing before it may stay.
    ledger
        .db
        .batch("DROP TABLE deliveries")
        .unwrap_or_else(|e| panic!("{e}"));
    let dup = BatchRecord {
        duplicates: 1,
        ..batch.clone()
    };
    assert!(ledger.record_batch(&rig(), &dup, 10).is_err());
    assert!(ledger.recorded_seqs(&rig()).unwrap_or_default().is_empty());
}

fn stitch_credits_pending_receipts_and_keeps_a_checkpoint(backend: Backend) {
    let (_store, mut ledger) = fresh(backend);
    let receipts = [receipt(1, 0), receipt(2, 1), receipt(3, 2)];
    let output = UnitOutput::MlpGrad {
        loss_sum: 1.5,
        samples: 4,
        grad_sum: vec![0.25, -1.0],
    };
    let j = job();
    let batch = BatchRecord {
        entries: receipts
            .iter()
            .map(|r| Entry {
                state: ReceiptState::Pending,
                ..credited(r)
            })
            .collect(),
        refused: vec![],
        forfeit: None,
        suspend: None,
        duplicates: 0,
        kept_outputs: vec![(&j, 2, &output)],
    };
    ledger
        .record_batch(&rig(), &batch, 10)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ledger.kept_outputs(&j).unwrap_or_default(),
        vec![(2, output.clone())]
    );
    let cp = Checkpoint {
        step: 1,
        params: vec![1.0, 2.0],
        loss: Some(0.5),
    };
    let (rigs, credited) = ledger
        .stitch(&j, 0..2, &cp, 20)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((rigs, credited), (vec![rig()], 2));
    let t = ledger
        .earnings(&rig())
        .unwrap_or_else(|e| panic!("{e}"))
        .total();
    assert_eq!((t.credited_units, t.pending_units), (2, 1));
    assert_eq!(ledger.checkpoint(&j).unwrap_or(None), Some(cp));
    assert_eq!(ledger.kept_outputs(&j).unwrap_or_default().len(), 1);
}

fn keys_are_pinned_on_first_sight_and_a_change_is_remembered(backend: Backend) {
    let (store, ledger) = fresh(backend);
    let k1 = PublicKey::Secp256k1(vec![2; 33]);
    let k2 = PublicKey::P256(vec![3; 33]);
    assert_eq!(ledger.pin_key(&rig(), &k1, 1).ok(), Some(KeyCheck::Pinned));
    assert_eq!(ledger.pin_key(&rig(), &k1, 2).ok(), Some(KeyCheck::Same));
    assert_eq!(ledger.pin_key(&rig(), &k2, 3).ok(), Some(KeyCheck::Changed));
    let reader = store.reader();
    let reg = reader.registry().unwrap_or_default();
    assert_eq!(reg.len(), 1);
    assert_eq!(reg[0].key, k1);
    assert!(reg[0].key_changed);
    assert_eq!(reader.rigs().unwrap_or_default(), vec![rig()]);
    assert!(
        reader.set_meta("written", 1).is_err(),
        "the read side writes nothing"
    );
}

#[test]
fn the_read_side_opens_after_the_writer_closed() {
    let (store, mut ledger) = fresh(Backend::Sqlite);
    let r = receipt(1, 1);
    let batch = BatchRecord {
        entries: vec![credited(&r)],
        ..BatchRecord::default()
    };
    ledger
        .record_batch(&rig(), &batch, 10)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(ledger);
    let reader = store.reader();
    assert_eq!(reader.recorded_seqs(&rig()).unwrap_or_default(), vec![1]);
    assert!(Ledger::open(Path::new("/nonexistent/missing.db")).is_err());
}

/// The rollup as a GROUP BY over the receipts computes it.
fn rollup_from_receipts(ledger: &Ledger) -> Vec<CardDay> {
    super::rollup::card_days(
        &ledger.db,
        &rig(),
        "SELECT card, changed_ms / 86400000,
             CAST(SUM(CASE WHEN state = 'credited' THEN micros ELSE 0 END) AS BIGINT),
             CAST(SUM(CASE WHEN state = 'pending' THEN micros ELSE 0 END) AS BIGINT),
             COUNT(*) FILTER (WHERE state = 'credited'), COUNT(*) FILTER (WHERE state = 'pending'),
             COUNT(*) FILTER (WHERE state = 'rejected')
         FROM receipts WHERE rig = ?1 GROUP BY card, changed_ms / 86400000 ORDER BY 1, 2",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Drops lines whose every count went back to zero (a receipt that moved to another day).
fn nonzero(days: Vec<CardDay>) -> Vec<CardDay> {
    days.into_iter()
        .filter(|d| d.credited + d.pending + d.rejected > 0)
        .collect()
}

fn the_daily_rollup_follows_records_stitches_and_forfeits_and_backfills_once(backend: Backend) {
    let (store, mut ledger) = fresh(backend);
    let receipts: Vec<Receipt> = (1..=40).map(|s| receipt(s, s)).collect();
    for (day, chunk) in receipts.chunks(10).enumerate() {
        let entries = chunk
            .iter()
            .map(|r| Entry {
                receipt: r,
                state: match r.seq % 3 {
                    0 => ReceiptState::Credited,
                    1 => ReceiptState::Pending,
                    _ => ReceiptState::Rejected,
                },
                reason: (r.seq % 3 == 2).then_some("result mismatch"),
                micros: if r.seq % 3 == 2 { 0 } else { r.seq * 7 },
            })
            .collect();
        let batch = BatchRecord {
            entries,
            ..BatchRecord::default()
        };
        let at = day as u64 * DAY_MS + 5;
        ledger
            .record_batch(&rig(), &batch, at)
            .unwrap_or_else(|e| panic!("{e}"));
        // Delivered again: nothing moves.
        ledger
            .record_batch(&rig(), &batch, at + 1)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let checkpoint = Checkpoint {
        step: 1,
        params: vec![0.5],
        loss: None,
    };
    ledger
        .stitch(&job(), 1..20, &checkpoint, 5 * DAY_MS + 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let forfeit = BatchRecord {
        forfeit: Some((&job(), 3 * DAY_MS)),
        ..BatchRecord::default()
    };
    ledger
        .record_batch(&rig(), &forfeit, 6 * DAY_MS + 2)
        .unwrap_or_else(|e| panic!("{e}"));
    let expected = rollup_from_receipts(&ledger);
    assert!(expected.len() > 8, "{expected:?}");
    let rolled = nonzero(ledger.card_days(&rig()).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(rolled, expected);
    let earnings = ledger.earnings(&rig()).unwrap_or_else(|e| panic!("{e}"));
    let credited: u64 = earnings.cards.iter().map(|c| c.credited_micros).sum();
    assert_eq!(
        credited,
        rolled.iter().map(|d| d.credited_micros).sum::<u64>()
    );

    // A SQLite ledger from before the rollup: the table is filled on the next open, once.
    if backend == Backend::Sqlite {
        ledger
            .db
            .batch("DELETE FROM earnings_daily; DELETE FROM meta WHERE key = 'rollup';")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    drop(ledger);
    let ledger = Ledger::create_at(&store.location, 3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        nonzero(ledger.card_days(&rig()).unwrap_or_else(|e| panic!("{e}"))),
        expected
    );
    let before = ledger.credited_since(&rig(), 0).unwrap_or(0);
    assert_eq!(before, credited);
    assert_eq!(ledger.credited_since(&rig(), 7 * DAY_MS).unwrap_or(1), 0);
    let rejected = ledger
        .receipt_lines(&rig(), None, true, 1000)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rejected.iter().all(|r| r.state == "rejected"));
    assert!(rejected
        .iter()
        .any(|r| r.reason.as_deref() == Some("forfeited")));
    assert!(
        rejected.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    let page = ledger
        .receipt_lines(&rig(), Some(11), false, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![10, 9, 8]
    );
}

fn epochs_pay_audited_credit_once_and_an_unposted_one_blocks_the_next(backend: Backend) {
    let (_store, mut ledger) = fresh(backend);
    let receipts: Vec<Receipt> = (1..=4).map(|s| receipt(s, s)).collect();
    let record = |ledger: &mut Ledger, rs: &[Receipt], now| {
        let batch = BatchRecord {
            entries: rs.iter().map(credited).collect(),
            ..BatchRecord::default()
        };
        ledger
            .record_batch(&rig(), &batch, now)
            .unwrap_or_else(|e| panic!("{e}"));
    };
    record(&mut ledger, &receipts[..2], 100);
    record(&mut ledger, &receipts[2..], 200);
    // Credit recorded before the cutoff only: the rest is still in its audit window.
    let owed = ledger.payable(150).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(owed, BTreeMap::from([(rig(), 12)]));
    ledger
        .build_epoch(0, 150, [1; 32], &owed, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    // Built, not posted: what it pays is no longer owed, and no next epoch until it is posted.
    assert!(ledger
        .payable(150)
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
    let open = ledger.unposted_epoch().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(open.as_ref().map(|e| (e.epoch, e.total)), Some((0, 12)));
    let later = ledger.payable(300).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(later, BTreeMap::from([(rig(), 12)]));
    assert!(ledger.build_epoch(1, 300, [2; 32], &later, &[]).is_err());
    ledger
        .mark_posted(0, "0xabc")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ledger.unposted_epoch().unwrap_or_else(|e| panic!("{e}")),
        None
    );
    assert!(
        ledger.build_epoch(2, 300, [2; 32], &later, &[]).is_err(),
        "numbers have no gaps"
    );
    ledger
        .build_epoch(1, 300, [2; 32], &later, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let first = ledger.epoch(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.and_then(|e| e.posted).as_deref(), Some("0xabc"));
    assert!(ledger
        .payable(300)
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
}

fn a_group_commits_at_once_and_a_failed_step_in_it_leaves_only_itself_out(backend: Backend) {
    let (store, mut ledger) = fresh(backend);
    let receipts: Vec<Receipt> = (1..=4).map(|s| receipt(s, s)).collect();
    fn batch(r: &[Receipt]) -> BatchRecord<'_> {
        BatchRecord {
            entries: r.iter().map(credited).collect(),
            ..BatchRecord::default()
        }
    }
    ledger.begin_group().unwrap_or_else(|e| panic!("{e}"));
    ledger
        .record_batch(&rig(), &batch(&receipts[..2]), 10)
        .unwrap_or_else(|e| panic!("{e}"));
    // Fails at its last insert (an owner named twice): all of it is undone, nothing else.
    let owner = rigd_protocol::EthAddress([7; 20]);
    let owed = BTreeMap::from([(rig(), 12)]);
    assert!(ledger
        .build_epoch(0, 100, [1; 32], &owed, &[(owner, 6), (owner, 6)])
        .is_err());
    ledger
        .record_batch(&rig(), &batch(&receipts[2..]), 10)
        .unwrap_or_else(|e| panic!("{e}"));
    // Another connection sees nothing before the commit.
    let outside = store.reader();
    assert_eq!(
        outside.recorded_seqs(&rig()).unwrap_or_default(),
        Vec::<u64>::new()
    );
    ledger.commit_group().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outside.recorded_seqs(&rig()).unwrap_or_default(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(outside.latest_epoch().unwrap_or(Some(9)), None);
}

fn a_group_never_committed_leaves_nothing(backend: Backend) {
    let (store, mut ledger) = fresh(backend);
    let receipts: Vec<Receipt> = (1..=2).map(|s| receipt(s, s)).collect();
    ledger.begin_group().unwrap_or_else(|e| panic!("{e}"));
    let record = BatchRecord {
        entries: receipts.iter().map(credited).collect(),
        ..BatchRecord::default()
    };
    ledger
        .record_batch(&rig(), &record, 10)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(ledger);
    let reopened = store.reader();
    assert_eq!(
        reopened.recorded_seqs(&rig()).unwrap_or_default(),
        Vec::<u64>::new()
    );
}

/// One connection leads a job; while it lives no other does, and once its session ends (here
/// ended by the server, as it ends a killed coordinator's) the lead is free and the old
/// connection can write nothing more.
#[test]
fn one_coordinator_leads_a_job_on_postgresql_until_its_session_ends() {
    let (store, first) = fresh(Backend::Postgres);
    let second = Ledger::create_at(&store.location, 3).unwrap_or_else(|e| panic!("{e}"));
    let other = JobId::new("other-job").unwrap_or_else(|_| unreachable!());
    assert!(first.try_lead(&job()).unwrap_or_else(|e| panic!("{e}")));
    assert!(!second.try_lead(&job()).unwrap_or_else(|e| panic!("{e}")));
    assert!(!second.try_lead(&job()).unwrap_or_else(|e| panic!("{e}")));
    assert!(second.try_lead(&other).unwrap_or_else(|e| panic!("{e}")));
    let pid = first
        .db
        .query_one("SELECT pg_backend_pid()", &[])
        .and_then(|r| r.int(0))
        .unwrap_or_else(|e| panic!("{e}"));
    // Waits (up to 10 s) until the session is gone.
    let ended = second
        .db
        .query_one("SELECT pg_terminate_backend(?1, 10000)", p![pid])
        .and_then(|r| r.int(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ended, 1);
    assert!(second.try_lead(&job()).unwrap_or_else(|e| panic!("{e}")));
    assert!(first.begin_group().is_err(), "the old leader still writes");
}

on_both!(
    duplicate_delivery_changes_nothing_but_the_duplicate_count,
    totals_are_exact_per_card_and_state,
    missing_seqs_count_the_gaps_below_the_highest,
    a_failed_batch_transaction_leaves_nothing_behind,
    stitch_credits_pending_receipts_and_keeps_a_checkpoint,
    keys_are_pinned_on_first_sight_and_a_change_is_remembered,
    the_daily_rollup_follows_records_stitches_and_forfeits_and_backfills_once,
    epochs_pay_audited_credit_once_and_an_unposted_one_blocks_the_next,
    a_group_commits_at_once_and_a_failed_step_in_it_leaves_only_itself_out,
    a_group_never_committed_leaves_nothing,
);
