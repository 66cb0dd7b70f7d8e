//! Ethereum addresses as owners give them for payouts, checked per EIP-55.

use crate::digest::keccak256;
use std::fmt;

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not `0x` and 40 hexadecimal digits.
    #[error("an Ethereum address is 0x and 40 hexadecimal digits")]
    Format,
    /// Mixed case that is not the EIP-55 checksum: a mistyped digit.
    #[error("the address's upper and lower case letters do not match its EIP-55 checksum (a mistyped character?)")]
    Checksum,
}

/// A 20-byte Ethereum address. It parses from `0x` and 40 hex digits, all lower case, all
/// upper case, or mixed case carrying a valid EIP-55 checksum; it displays checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EthAddress(pub [u8; 20]);

impl EthAddress {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .ok_or(AddressError::Format)?;
        if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AddressError::Format);
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| AddressError::Format)?;
        let address = EthAddress(bytes);
        let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
        let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
        if has_upper && has_lower && address.checksummed()[2..] != *digits {
            return Err(AddressError::Checksum);
        }
        Ok(address)
    }

    /// The EIP-55 form: a hex letter is upper case where the matching nibble of the keccak of
    /// the lower-case hex is 8 or more.
    pub fn checksummed(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = keccak256(&[lower.as_bytes()]);
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let byte = hash[i / 2];
            let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
            out.push(if nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
        out
    }
}

impl fmt::Display for EthAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.checksummed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of EIP-55.
    const EIP55: [&str; 4] = [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ];

    #[test]
    fn eip55_vectors_round_trip_in_every_case() {
        for v in EIP55 {
            let a = EthAddress::parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(a.to_string(), v);
            let lower = format!("0x{}", v[2..].to_ascii_lowercase());
            let upper = format!("0x{}", v[2..].to_ascii_uppercase());
            assert_eq!(EthAddress::parse(&lower), Ok(a));
            assert_eq!(EthAddress::parse(&upper), Ok(a));
        }
    }

    #[test]
    fn a_flipped_case_fails_the_checksum() {
        let bad = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        assert_eq!(EthAddress::parse(bad), Err(AddressError::Checksum));
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "0x",
            "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedd",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAé",
            "' OR 1=1 --",
        ] {
            assert_eq!(EthAddress::parse(bad), Err(AddressError::Format), "{bad:?}");
        }
    }
}
