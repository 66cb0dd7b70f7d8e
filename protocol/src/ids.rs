//! Validated identifiers. Parsed once at the boundary; invalid ones never get in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than the cap.
    #[error("{what} must be 1 to {max} characters, got {len}")]
    Length {
        /// Which identifier.
        what: &'static str,
        /// The cap.
        max: usize,
        /// The length given.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("{what} may hold only letters, digits, '.', '_' and '-', got {value:?}")]
    Charset {
        /// Which identifier.
        what: &'static str,
        /// The value given.
        value: String,
    },
}

fn check(what: &'static str, max: usize, value: &str) -> Result<(), IdError> {
    if value.is_empty() || value.len() > max {
        return Err(IdError::Length {
            what,
            max,
            len: value.len(),
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(IdError::Charset {
            what,
            value: crate::clip(value, 80),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($what, Self::MAX_LEN, &value)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A rig's identity: one MQTT topic level, so no `/`, `+` or `#`.
    RigId,
    "rig id",
    64
);
id_type!(
    /// A card's UUID as NVML reports it (`GPU-...`), or `SIM-...` for simulated cards.
    GpuUuid,
    "gpu uuid",
    64
);
id_type!(
    /// A job's identity, chosen by the coordinator.
    JobId,
    "job id",
    64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rig_id_refuses_topic_wildcards_and_separators() {
        for bad in ["", "a/b", "a+", "#", "rig 1", &"x".repeat(65)] {
            assert!(RigId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(RigId::new("rig-01.garage_2").is_ok());
    }

    #[test]
    fn ids_are_validated_when_decoded_from_the_wire() {
        let bytes = postcard::to_allocvec(&"bad/id".to_string()).unwrap_or_default();
        assert!(postcard::from_bytes::<RigId>(&bytes).is_err());
    }
}
