use crate::fleet::Fleet;
use crate::metrics::render;
use crate::Exporter;
use prometheus::Registry;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{encode, RigState};
use rigd_testkit::fixtures::{coordinator, rig_id, status, telemetry};
use std::collections::BTreeSet;

const STALE_MS: u64 = 60_000;

fn fleet_of(rigs: &[(&str, u32, RigState)], heard_ms: u64) -> Fleet {
    let mut fleet = Fleet::new(100);
    for (rig, cards, state) in rigs {
        let mut st = status(rig, *cards);
        st.state = *state;
        let id = rig_id(rig);
        let applied = [
            fleet.apply(&topics::rig(&id, Channel::Status), &encode(&st), heard_ms),
            fleet.apply(
                &topics::rig(&id, Channel::Telemetry),
                &encode(&telemetry(rig, *cards)),
                heard_ms,
            ),
        ];
        assert!(applied.iter().all(Result::is_ok), "{applied:?}");
    }
    let progress = encode(&coordinator(false));
    assert!(fleet
        .apply(topics::COORDINATOR_STATUS, &progress, heard_ms)
        .is_ok());
    fleet
}

fn text(fleet: &Fleet, now_ms: u64) -> String {
    render(fleet, &Registry::new(), now_ms, STALE_MS).unwrap_or_else(|e| panic!("{e}"))
}

fn lines<'t>(text: &'t str, family: &str) -> Vec<&'t str> {
    let prefix = format!("{family}{{");
    text.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[test]
fn each_card_is_one_series_with_dcgm_labels_and_each_rig_its_own() {
    let fleet = fleet_of(
        &[
            ("rig-a", 2, RigState::Working),
            ("rig-b", 3, RigState::Idle),
        ],
        1000,
    );
    let out = text(&fleet, 2000);
    let temps = lines(&out, "DCGM_FI_DEV_GPU_TEMP");
    assert_eq!(temps.len(), 5, "{out}");
    assert!(temps.contains(
        &"DCGM_FI_DEV_GPU_TEMP{UUID=\"SIM-rig-b-2\",device=\"nvidia2\",gpu=\"2\",modelName=\"Sim RTX 3090\",rig=\"rig-b\"} 76.5"
    ), "{temps:?}");
    assert!(out.contains(
        "DCGM_FI_DEV_FB_USED{UUID=\"SIM-rig-b-2\",device=\"nvidia2\",gpu=\"2\",modelName=\"Sim RTX 3090\",rig=\"rig-b\"} 6144"
    ));
    assert_eq!(lines(&out, "DCGM_FI_DEV_XID_ERRORS").len(), 5);
    assert!(lines(&out, "DCGM_FI_DEV_XID_ERRORS")
        .iter()
        .all(|l| l.ends_with("} 0")));
    assert_eq!(
        lines(&out, "DCGM_FI_DEV_MEMORY_TEMP").len(),
        2,
        "only card 0 reports it"
    );
    assert!(out.contains("# TYPE rigd_card_units_done_total counter"));
    assert!(out.contains("rigd_rig_state{rig=\"rig-b\",state=\"idle\"} 1"));
    assert!(out.contains("rigd_rig_up{rig=\"rig-a\"} 1"));
    assert!(
        out.contains("rigd_coordinator_units_done_total{job=\"mlp-1\"} 96"),
        "{out}"
    );
    assert!(out.contains("rigd_coordinator_leases_expired_total{job=\"mlp-1\"} 2"));
    assert!(out.contains("rigd_coordinator_batches_refused_total{job=\"mlp-1\"} 1"));
    assert!(out.contains("rigd_coordinator_receipts_credited_total{job=\"mlp-1\"} 90"));
}

#[test]
fn an_offline_rig_or_stale_telemetry_leaves_no_card_series() {
    let fleet = fleet_of(
        &[
            ("rig-a", 2, RigState::Offline),
            ("rig-b", 1, RigState::Working),
        ],
        1000,
    );
    let out = text(&fleet, 2000);
    assert_eq!(lines(&out, "DCGM_FI_DEV_GPU_TEMP").len(), 1, "{out}");
    assert!(out.contains("rigd_rig_up{rig=\"rig-a\"} 0"));
    let later = text(&fleet, 1000 + STALE_MS + 1);
    assert!(lines(&later, "DCGM_FI_DEV_GPU_TEMP").is_empty(), "{later}");
    assert!(
        later.contains("rigd_rig_up{rig=\"rig-b\"} 1"),
        "the status still stands"
    );
}

#[test]
fn a_card_missing_from_the_status_keeps_its_uuid_with_empty_index_and_model() {
    let mut fleet = Fleet::new(10);
    let id = rig_id("rig-a");
    let t = encode(&telemetry("rig-a", 1));
    assert!(fleet
        .apply(&topics::rig(&id, Channel::Telemetry), &t, 1)
        .is_ok());
    let mut st = status("rig-a", 1);
    st.cards.clear();
    assert!(fleet
        .apply(&topics::rig(&id, Channel::Status), &encode(&st), 1)
        .is_ok());
    let out = text(&fleet, 2);
    assert_eq!(
        lines(&out, "DCGM_FI_DEV_GPU_TEMP"),
        ["DCGM_FI_DEV_GPU_TEMP{UUID=\"SIM-rig-a-0\",device=\"\",gpu=\"\",modelName=\"\",rig=\"rig-a\"} 76.5"]
    );
}

#[test]
fn label_values_from_rigs_are_escaped() {
    let mut fleet = Fleet::new(10);
    let mut st = status("rig-a", 1);
    st.agent_version = "1\"} evil 1\n# TYPE".into();
    let id = rig_id("rig-a");
    assert!(fleet
        .apply(&topics::rig(&id, Channel::Status), &encode(&st), 1)
        .is_ok());
    let out = text(&fleet, 2);
    let info = lines(&out, "rigd_rig_info");
    assert_eq!(info.len(), 1, "{out}");
    assert!(
        info[0].contains(r#"version="1\"} evil 1\n# TYPE""#),
        "{}",
        info[0]
    );
}

/// Every metric the Grafana dashboard in the tree queries is one the exporter serves.
#[test]
fn the_grafana_dashboard_queries_only_metrics_the_exporter_serves() {
    let exporter = Exporter::new(10, STALE_MS).unwrap_or_else(|e| panic!("{e}"));
    let id = rig_id("rig-a");
    for (topic, payload) in [
        (
            topics::rig(&id, Channel::Status),
            encode(&status("rig-a", 1)),
        ),
        (
            topics::rig(&id, Channel::Telemetry),
            encode(&telemetry("rig-a", 1)),
        ),
        (
            topics::COORDINATOR_STATUS.to_owned(),
            encode(&coordinator(false)),
        ),
        ("rigd/v1/nope".to_owned(), vec![]),
    ] {
        exporter.receive(&topic, &payload, 1);
    }
    let out = exporter.scrape(2).unwrap_or_else(|e| panic!("{e}"));
    let served: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../grafana/rigd-fleet.json")).unwrap_or_default();
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in &panels {
        let expr = panel["targets"][0]["expr"].as_str().unwrap_or_default();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("rigd_") || w.starts_with("DCGM_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(
                served.contains(name),
                "{name} in {:?} is not served",
                panel["title"]
            );
        }
    }
}

#[test]
fn a_card_named_twice_in_one_sample_is_one_series() {
    let mut fleet = fleet_of(&[("rig-a", 2, RigState::Working)], 1000);
    let id = rig_id("rig-a");
    let mut t = telemetry("rig-a", 2);
    t.gpus[1].uuid = t.gpus[0].uuid.clone();
    t.gpus[1].core_dc = 999;
    assert!(fleet
        .apply(&topics::rig(&id, Channel::Telemetry), &encode(&t), 1000)
        .is_ok());
    let out = text(&fleet, 2000);
    let temps = lines(&out, "DCGM_FI_DEV_GPU_TEMP");
    assert_eq!(temps.len(), 1, "{out}");
    assert!(
        temps[0].ends_with("} 76.5"),
        "the first sample stands: {temps:?}"
    );
    assert_eq!(lines(&out, "rigd_card_state").len(), 5);
}
