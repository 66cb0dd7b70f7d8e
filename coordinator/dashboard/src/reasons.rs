//! The coordinator's reason codes, as sentences an owner can act on.

/// What `code` (a rejected receipt's or a refused run's reason in the ledger) means for the
/// owner of the rig.
pub fn explain(code: &str) -> &'static str {
    match code {
        "result mismatch" => {
            "The network recomputed this unit and got a different result; it is not paid. \
             Repeated mismatches point at a faulty card (memory errors, overclock)."
        }
        "forfeited" => {
            "Forfeited: another result of this rig in the same audit window was caught wrong, \
             so its credit of that window was taken back and the rig was suspended from the job."
        }
        "key changed" => {
            "The rig signed these receipts with a different key than the one the network \
             pinned for it (for example after a TPM or token was replaced): receipts made \
             before the change cannot be attributed to the rig and are not credited. A rig \
             provisioned again with your claim earns under its new key from then on. The rig \
             keeps these receipts as refused and stops sending them."
        }
        "signed for another deployment" => {
            "The rig signed these receipts for another chain or settlement contract than the \
             ones this network pays through (a rig.conf or provisioning from another network): \
             they are not credited here. The rig keeps them as refused and stops sending them; \
             receipts it signs for this network's deployment are credited as usual."
        }
        "unit not leased to the rig" => {
            "The unit was not leased to this rig, or its lease had ended (the rig was offline \
             or too slow) and it went to another rig."
        }
        "unit already done" => "Another rig delivered this unit first; only one result is paid.",
        "unit not assigned" | "unknown job" => {
            "The network never issued this unit (a rig journal from another network, or \
             damaged)."
        }
        "input digest mismatch" => {
            "The receipt names other input data than the unit had; the rig's journal may be \
             damaged."
        }
        "output digest mismatch" => {
            "The result the rig sent does not match the digest it signed; the rig's journal or \
             memory may be damaged."
        }
        "work mismatch" => "The receipt claims another amount of work than the unit holds.",
        "malformed output" => "The result is not of the unit's kind or shape.",
        _ => "Refused by the network for a reason this dashboard does not know yet.",
    }
}

#[cfg(test)]
mod tests {
    use super::explain;
    use rigd_coordinator::verify::Rejection;

    #[test]
    fn every_reason_the_coordinator_records_has_its_own_sentence() {
        let unknown = explain("");
        let recorded = Rejection::ALL.map(Rejection::reason);
        let others = [
            rigd_coordinator::ledger::FORFEITED,
            rigd_protocol::RefusalReason::KeyChanged.as_str(),
            rigd_protocol::RefusalReason::ForeignDomain.as_str(),
        ];
        for code in recorded.iter().chain(&others) {
            assert_ne!(explain(code), unknown, "{code}");
        }
    }
}
