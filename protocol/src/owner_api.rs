//! The answers of the owners' dashboard JSON API that programs other than the dashboard read
//! (`rigctl earnings --owner`): an owner's earnings per UTC day and per rig and card, and the
//! sums. Amounts are micro-credits.

use serde::{Deserialize, Serialize};

/// An owner's earnings (`GET /api/earnings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerEarnings {
    /// Sums over every rig, card and day.
    pub total: Totals,
    /// Sums per UTC day (Unix day number), oldest first.
    pub days: Vec<DayTotal>,
    /// Sums per rig and card.
    pub cards: Vec<CardTotal>,
}

/// Earnings summed over some receipts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Credited micro-credits (verified, and their training step stitched).
    pub credited_micros: u64,
    /// Pending micro-credits (verified, step not stitched yet).
    pub pending_micros: u64,
    /// Receipts credited.
    pub credited: u64,
    /// Receipts pending.
    pub pending: u64,
    /// Receipts rejected or forfeited.
    pub rejected: u64,
    /// What is owed and not paid yet: the credited micros less what was paid.
    pub payable_micros: u64,
    /// Micro-credits paid out.
    pub paid_micros: u64,
}

impl Totals {
    /// Adds `other` (saturating: sums of wire values never wrap).
    pub fn add(&mut self, other: &Totals) {
        self.credited_micros = self.credited_micros.saturating_add(other.credited_micros);
        self.pending_micros = self.pending_micros.saturating_add(other.pending_micros);
        self.credited = self.credited.saturating_add(other.credited);
        self.pending = self.pending.saturating_add(other.pending);
        self.rejected = self.rejected.saturating_add(other.rejected);
        self.paid_micros = self.paid_micros.saturating_add(other.paid_micros);
        self.payable_micros = self.credited_micros.saturating_sub(self.paid_micros);
    }
}

/// One day's sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotal {
    /// Days since 1970-01-01 (UTC).
    pub day: u64,
    /// The sums.
    #[serde(flatten)]
    pub totals: Totals,
}

/// One card's sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardTotal {
    /// The rig.
    pub rig: String,
    /// The card's UUID.
    pub card: String,
    /// The sums.
    #[serde(flatten)]
    pub totals: Totals,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate_and_payable_is_credited_less_paid() {
        let mut t = Totals {
            credited_micros: u64::MAX - 1,
            paid_micros: 5,
            ..Totals::default()
        };
        t.add(&Totals {
            credited_micros: 10,
            credited: 1,
            ..Totals::default()
        });
        assert_eq!(t.credited_micros, u64::MAX);
        assert_eq!(t.payable_micros, u64::MAX - 5);
        assert_eq!(t.credited, 1);
    }

    #[test]
    fn the_json_flattens_the_sums_into_each_row() {
        let e = OwnerEarnings {
            cards: vec![CardTotal {
                rig: "rig-a".into(),
                card: "GPU-1".into(),
                totals: Totals {
                    credited_micros: 7,
                    ..Totals::default()
                },
            }],
            ..OwnerEarnings::default()
        };
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(json["cards"][0]["credited_micros"], 7);
        let back: OwnerEarnings = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, e);
    }
}
