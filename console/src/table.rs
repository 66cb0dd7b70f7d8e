//! Text rendering of the reports: aligned columns, amounts in credits with six decimals.
//! Text that came off the wire has its control characters replaced, so a hostile name cannot
//! drive the terminal.

use crate::fleet::FleetReport;
use crate::report::{credits, Amounts, CoordinatorLine, EarningsReport, GpusReport, StatusReport};
use rigd_protocol::owner_api::{OwnerEarnings, Totals};
use std::fmt::Display;

/// A table of left- or right-aligned columns.
struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns as `(header, right_aligned)`.
    fn new(columns: &[(&'static str, bool)]) -> Self {
        Self {
            headers: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, cell) in cells.enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
                if i > 0 {
                    out.push_str("  ");
                }
                if self.right.get(i).copied().unwrap_or(false) {
                    out.push_str(&pad);
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&pad);
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line(&mut self.headers.iter().copied());
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }
}

/// Replaces control characters of text received from the network.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// An age as `"3s ago"`, `"4m ago"`, `"2h ago"` or `"5d ago"`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// The coordinator's progress as one line.
pub fn coordinator_line(c: &CoordinatorLine) -> String {
    format!(
        "job {}  step {}/{}  loss {}  units done {}  verified {}  rejected {}  receipts credited {}  leases expired {}  batches refused {}  rigs online {}{}",
        clean(&c.job),
        c.step,
        c.steps_total,
        c.loss
            .map_or_else(|| "-".to_string(), |l| format!("{l:.4}")),
        c.units_done,
        c.units_verified,
        c.units_rejected,
        c.receipts_credited,
        c.leases_expired,
        c.batches_refused,
        c.rigs_online,
        if c.finished { "  (finished)" } else { "" }
    )
}

/// `rigctl status` as text.
pub fn status(report: &StatusReport) -> String {
    let mut out = String::new();
    if let Some(c) = &report.coordinator {
        out.push_str(&format!("coordinator: {}\n", coordinator_line(c)));
    }
    if report.rigs.is_empty() {
        out.push_str("no rig has a retained status on this broker\n");
        return out;
    }
    let mut t = Table::new(&[
        ("RIG", false),
        ("ONLINE", false),
        ("STATE", false),
        ("CARDS", true),
        ("RUNNING", true),
        ("QUEUED", true),
        ("JOURNALED", true),
        ("UNACKED", true),
        ("LAST SEEN", false),
        ("KEY", false),
        ("KEY STORE", false),
    ]);
    for r in &report.rigs {
        t.row(vec![
            clean(&r.rig),
            if r.online { "yes" } else { "no" }.to_string(),
            opt(r.state.as_deref()),
            opt(r.cards),
            opt(r.running),
            opt(r.queued),
            opt(r.journaled),
            opt(r.unacked),
            opt(r.last_seen_age_ms.map(age)),
            opt(r.key_backend.as_deref().map(clean)),
            opt(r.key_health.as_deref().map(clean)),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// A fleet command's per-rig results as text.
pub fn fleet(report: &FleetReport) -> String {
    let mut t = Table::new(&[
        ("RIG", false),
        ("ACTION", false),
        ("OUTCOME", false),
        ("TIME", true),
        ("DETAIL", false),
    ]);
    for r in &report.rigs {
        t.row(vec![
            clean(&r.rig),
            report.action.clone(),
            r.outcome.to_string(),
            opt(r.elapsed_ms.map(|ms| format!("{ms} ms"))),
            clean(&r.detail),
        ]);
    }
    t.render()
}

/// `rigctl gpus RIG` as text, `now_ms` for the age of the sample.
pub fn gpus(report: &GpusReport, now_ms: u64) -> String {
    let mut out = format!(
        "rig {}  state {}  sampled {}\n",
        clean(&report.rig),
        opt(report.state.as_deref()),
        opt(report.sampled_ms.map(|at| age(now_ms.saturating_sub(at))))
    );
    let mut t = Table::new(&[
        ("INDEX", true),
        ("UUID", false),
        ("NAME", false),
        ("STATE", false),
        ("TEMP", true),
        ("POWER/LIMIT W", true),
        ("FAN %", true),
        ("UTIL %", true),
        ("LEVEL", false),
        ("UNIT", true),
        ("DONE", true),
        ("RESTARTS", true),
    ]);
    for c in &report.cards {
        let temp = match (c.core_c, c.mem_c) {
            (Some(core), Some(mem)) => format!("{core:.1} °C (mem {mem:.1})"),
            (Some(core), None) => format!("{core:.1} °C"),
            _ => "-".to_string(),
        };
        t.row(vec![
            opt(c.index),
            clean(&c.uuid),
            opt(c.name.as_deref().map(clean)),
            opt(c.state.as_deref()),
            temp,
            format!("{}/{}", opt(c.power_w), opt(c.power_limit_w)),
            opt(c.fan_pct),
            opt(c.util_pct),
            opt(c.governor_level.map(|l| format!("L{l}"))),
            opt(c.unit),
            opt(c.units_done),
            opt(c.worker_restarts),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// Earnings as text: a line per rig and card, a total per rig and one overall.
pub fn earnings(report: &EarningsReport) -> String {
    if report.rigs.is_empty() {
        return "no earnings recorded yet\n".to_string();
    }
    let mut t = Table::new(&[
        ("RIG", false),
        ("CARD", false),
        ("CREDITED UNITS", true),
        ("CREDITED", true),
        ("PENDING UNITS", true),
        ("PENDING", true),
        ("REJECTED", true),
    ]);
    let cells = |rig: String, card: String, a: &Amounts| {
        vec![
            rig,
            card,
            a.credited_units.to_string(),
            a.credited.clone(),
            a.pending_units.to_string(),
            a.pending.clone(),
            a.rejected_units.to_string(),
        ]
    };
    for r in &report.rigs {
        for c in &r.cards {
            let card = c.card.as_deref().map_or_else(|| "-".to_string(), clean);
            t.row(cells(clean(&r.rig), card, &c.amounts));
        }
        t.row(cells(clean(&r.rig), "(rig total)".into(), &r.total));
    }
    t.row(cells("TOTAL".into(), String::new(), &report.total));
    t.render()
}

/// An owner's earnings as text: a line per rig and card with its total, then a line per
/// UTC day.
pub fn owner_earnings(e: &OwnerEarnings) -> String {
    if e.cards.is_empty() {
        return "no earnings recorded yet\n".to_string();
    }
    let cols = [
        ("CREDITED UNITS", true),
        ("CREDITED", true),
        ("PENDING UNITS", true),
        ("PENDING", true),
        ("REJECTED", true),
        ("PAYABLE", true),
        ("PAID", true),
    ];
    let amounts = |t: &Totals| {
        vec![
            t.credited.to_string(),
            credits(t.credited_micros),
            t.pending.to_string(),
            credits(t.pending_micros),
            t.rejected.to_string(),
            credits(t.payable_micros),
            credits(t.paid_micros),
        ]
    };
    let mut cards = Table::new(&[&[("RIG", false), ("CARD", false)][..], &cols].concat());
    for c in &e.cards {
        cards.row([vec![clean(&c.rig), clean(&c.card)], amounts(&c.totals)].concat());
    }
    cards.row([vec!["TOTAL".into(), String::new()], amounts(&e.total)].concat());
    let mut out = cards.render();
    if !e.days.is_empty() {
        let mut days = Table::new(&[&[("DAY (UTC)", false)][..], &cols].concat());
        for d in &e.days {
            days.row([vec![crate::owner::date(d.day)], amounts(&d.totals)].concat());
        }
        out.push('\n');
        out.push_str(&days.render());
    }
    out
}

/// `rigctl update-status` as text.
pub fn images(rigs: &[crate::update::RigImage]) -> String {
    let mut t = Table::new(&[
        ("RIG", false),
        ("IMAGE", false),
        ("SLOT", false),
        ("UPDATE", false),
        ("TARGET", false),
        ("LAST", false),
        ("DETAIL", false),
    ]);
    for r in rigs {
        t.row(vec![
            clean(&r.rig),
            if r.version.is_empty() {
                "-".into()
            } else {
                clean(&r.version)
            },
            if r.slot.is_empty() {
                "-".into()
            } else {
                clean(&r.slot)
            },
            r.state.clone(),
            opt(r.target.as_deref().map(clean)),
            opt(r.last.as_deref().map(clean)),
            opt(r.detail.as_deref().map(clean)),
        ]);
    }
    t.render()
}

/// `rigctl update` as text.
pub fn rollout(rigs: &[crate::update::RigUpdate]) -> String {
    let mut t = Table::new(&[
        ("RIG", false),
        ("WAVE", true),
        ("OUTCOME", false),
        ("TIME", true),
        ("DETAIL", false),
    ]);
    for r in rigs {
        t.row(vec![
            clean(&r.rig),
            r.wave.to_string(),
            r.outcome.to_string(),
            opt(r
                .elapsed_ms
                .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))),
            clean(&r.detail),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report;
    use crate::view::FleetView;
    use rigd_protocol::{encode, topics, topics::Channel};
    use rigd_testkit::fixtures::telemetry;
    use rigd_testkit::fixtures::{coordinator, earnings as earnings_msg, rig_id, status as st, T0};

    fn view() -> FleetView {
        let mut v = FleetView::default();
        for (rig, cards) in [("rig-a", 1), ("rig-b", 2)] {
            let id = rig_id(rig);
            let frames = [
                (Channel::Status, encode(&st(rig, cards))),
                (Channel::Telemetry, encode(&telemetry(rig, cards))),
                (Channel::Earnings, encode(&earnings_msg(rig, cards))),
            ];
            for (ch, payload) in frames {
                assert!(v.apply(&topics::rig(&id, ch), &payload).is_ok());
            }
        }
        assert!(v
            .apply(topics::COORDINATOR_STATUS, &encode(&coordinator(false)))
            .is_ok());
        v
    }

    fn header_and_rows(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn status_table_has_the_columns_a_line_per_rig_and_the_coordinator_above() {
        let text = status(&report::status(&view(), T0 + 13_000));
        let lines = header_and_rows(&text);
        assert!(lines[0].starts_with("coordinator: job mlp-1  step 12/60  loss 0.4312"));
        assert!(lines[0].contains("units done 96  verified 14"));
        assert!(lines[0].contains("leases expired 2  batches refused 1"));
        let header: Vec<&str> = lines[1].split("  ").filter(|s| !s.is_empty()).collect();
        assert_eq!(
            header.iter().map(|h| h.trim()).collect::<Vec<_>>(),
            [
                "RIG",
                "ONLINE",
                "STATE",
                "CARDS",
                "RUNNING",
                "QUEUED",
                "JOURNALED",
                "UNACKED",
                "LAST SEEN",
                "KEY",
                "KEY STORE"
            ]
        );
        assert_eq!(lines.len(), 4);
        assert!(lines[2].starts_with("rig-a"));
        assert!(lines[2].contains("yes"));
        assert!(lines[2].contains("working"));
        assert!(lines[2].contains("3s ago"));
        assert!(lines[3].contains("file (software, not hardware-held)"));
        assert!(lines[3].contains("answering"));
    }

    #[test]
    fn status_without_rigs_says_so() {
        let text = status(&report::status(&FleetView::default(), T0));
        assert_eq!(text, "no rig has a retained status on this broker\n");
    }

    #[test]
    fn columns_line_up() {
        let text = status(&report::status(&view(), T0 + 13_000));
        let lines: Vec<&str> = text.lines().skip(1).collect();
        let at = |l: &str| {
            l.find("LAST SEEN")
                .or_else(|| l.find(" ago").map(|i| i - 2))
        };
        let col = at(lines[0]);
        assert!(col.is_some());
        for l in &lines[1..] {
            assert_eq!(at(l), col, "{text}");
        }
    }

    #[test]
    fn gpus_table_joins_inventory_and_telemetry() {
        let r = report::gpus(&view(), &rig_id("rig-b"));
        let Some(r) = r else { panic!("no report") };
        let text = gpus(&r, T0 + 12_000);
        let lines = header_and_rows(&text);
        assert_eq!(lines[0], "rig rig-b  state working  sampled 2s ago");
        for col in [
            "INDEX",
            "UUID",
            "NAME",
            "STATE",
            "TEMP",
            "POWER/LIMIT W",
            "FAN %",
            "UTIL %",
            "LEVEL",
            "UNIT",
            "DONE",
            "RESTARTS",
        ] {
            assert!(lines[1].contains(col), "{col} missing: {}", lines[1]);
        }
        assert!(lines[2].contains("SIM-rig-b-0"));
        assert!(lines[2].contains("76.5 °C (mem 88.2)"));
        assert!(lines[2].contains("331/350"));
        assert!(lines[2].contains("L1"));
        assert!(lines[3].contains("76.5 °C"));
        assert!(!lines[3].contains("mem"));
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn gpus_of_an_unknown_rig_is_none() {
        assert!(report::gpus(&view(), &rig_id("nope")).is_none());
    }

    #[test]
    fn earnings_print_credits_with_six_decimals_and_totals() {
        let text = earnings(&report::earnings(&view()));
        let lines = header_and_rows(&text);
        assert!(lines[0].starts_with("RIG"));
        assert!(lines[0].contains("CREDITED UNITS"));
        // rig-a: 1 card + total; rig-b: 2 cards + total; overall total.
        assert_eq!(lines.len(), 1 + 2 + 3 + 1, "{text}");
        assert!(lines[1].contains("1.234567"));
        assert!(lines[1].contains("0.000005"));
        assert!(lines[2].contains("(rig total)"));
        assert!(lines[5].contains("(rig total)"));
        assert!(lines[5].contains("2.469134"));
        let total = lines[6];
        assert!(total.starts_with("TOTAL"));
        assert!(total.contains("3.703701"), "{total}");
        assert!(total.contains(" 30 "), "{total}");
    }

    #[test]
    fn credits_have_six_decimals() {
        assert_eq!(report::credits(0), "0.000000");
        assert_eq!(report::credits(5), "0.000005");
        assert_eq!(report::credits(1_000_000), "1.000000");
        assert_eq!(report::credits(u64::MAX), "18446744073709.551615");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(0), "0s ago");
        assert_eq!(age(3_999), "3s ago");
        assert_eq!(age(125_000), "2m ago");
        assert_eq!(age(7_200_000), "2h ago");
        assert_eq!(age(3 * 86_400_000), "3d ago");
    }

    #[test]
    fn control_characters_from_the_wire_are_not_printed() {
        assert_eq!(clean("ok\x1b[2Jname\n"), "ok?[2Jname?");
    }

    #[test]
    fn json_reports_carry_the_same_data() {
        let v = view();
        let s = serde_json::to_value(report::status(&v, T0 + 13_000));
        let Ok(s) = s else { panic!("{s:?}") };
        assert_eq!(s["rigs"][0]["rig"], "rig-a");
        assert_eq!(s["rigs"][0]["online"], true);
        assert_eq!(s["rigs"][1]["cards"], 2);
        assert_eq!(s["rigs"][1]["last_seen_age_ms"], 3000);
        assert_eq!(s["coordinator"]["units_verified"], 14);

        let g = serde_json::to_value(report::gpus(&v, &rig_id("rig-b")));
        let Ok(g) = g else { panic!("{g:?}") };
        assert_eq!(g["cards"][0]["uuid"], "SIM-rig-b-0");
        assert_eq!(g["cards"][0]["core_c"], 76.5);
        assert_eq!(g["cards"][1]["mem_c"], serde_json::Value::Null);

        let e = serde_json::to_value(report::earnings(&v));
        let Ok(e) = e else { panic!("{e:?}") };
        assert_eq!(e["rigs"][1]["cards"][1]["credited"], "1.234567");
        assert_eq!(e["rigs"][1]["cards"][1]["credited_micros"], 1_234_567);
        assert_eq!(e["rigs"][1]["cards"][1]["rejected_units"], 1);
        assert_eq!(e["total"]["credited_micros"], 3 * 1_234_567);
        assert_eq!(e["total"]["credited"], "3.703701");
    }

    #[test]
    fn hostile_amounts_saturate_instead_of_overflowing() {
        let mut e = earnings_msg("rig-a", 2);
        for c in &mut e.cards {
            c.credited_micros = u64::MAX;
        }
        let r = report::earnings_of([&e]);
        assert_eq!(r.total.credited_micros, u64::MAX);
    }
}
