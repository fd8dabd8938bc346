//! Validated scalar newtypes: object names, Unix user names and bounded integers.
//!
//! Validation happens while deserializing, so a bad value is reported by the YAML or
//! JSON parser with its position and field path, and no code path can hold an
//! unchecked value.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::validate;

/// An object name: an RFC 1123 DNS label (it becomes the VM's host name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Validates and wraps a name.
    pub fn new(name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        validate::dns_label(&name).map_err(|e| format!("invalid name: {e}"))?;
        Ok(Self(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Name {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Name".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": validate::DNS_LABEL_MAX,
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            "description": "An RFC 1123 DNS label: lower-case letters, digits and '-', at most 63 characters."
        })
    }
}

/// A Unix user name allowed to log in with a wallet (never `root`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct UnixUser(String);

impl UnixUser {
    /// Validates and wraps a user name.
    pub fn new(name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        validate::unix_user(&name)?;
        Ok(Self(name))
    }

    /// The user name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnixUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UnixUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Default for UnixUser {
    fn default() -> Self {
        Self("user".into())
    }
}

impl<'de> Deserialize<'de> for UnixUser {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UnixUser::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for UnixUser {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "UnixUser".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[a-z_][a-z0-9_-]{0,31}$",
            "not": { "const": "root" },
            "description": "A Unix user name (not root)."
        })
    }
}

/// Defines a `u32` newtype that only holds values within `[MIN, MAX]`.
macro_rules! bounded_u32 {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $unit:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(u32);

        impl $name {
            /// Smallest allowed value.
            pub const MIN: u32 = $min;
            /// Largest allowed value.
            pub const MAX: u32 = $max;

            /// Checks the bounds and wraps the value.
            pub fn new(v: u32) -> Result<Self, String> {
                if (Self::MIN..=Self::MAX).contains(&v) {
                    Ok(Self(v))
                } else {
                    Err(format!(
                        "{v} {} is out of range: allowed {}..={} {}",
                        $unit, Self::MIN, Self::MAX, $unit
                    ))
                }
            }

            /// The value.
            pub const fn get(self) -> u32 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "integer",
                    "minimum": $min,
                    "maximum": $max,
                    "description": concat!("In ", $unit, ".")
                })
            }
        }
    };
}

bounded_u32!(
    /// Virtual CPU cores.
    Cores, 1, 128, "cores"
);
bounded_u32!(
    /// Memory in MiB (256 MiB to 1 TiB).
    MemoryMib, 256, 1_048_576, "MiB"
);
bounded_u32!(
    /// Root disk size in GiB (1 GiB to 64 TiB).
    DiskGib, 1, 65_536, "GiB"
);
bounded_u32!(
    /// A Proxmox VMID (PVE allows 100 to 999,999,999).
    Vmid, 100, 999_999_999, "(VMID)"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced_when_deserializing() {
        assert!(serde_json::from_str::<Cores>("4").is_ok());
        let err = serde_json::from_str::<Cores>("0").unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        assert!(serde_json::from_str::<MemoryMib>("128").is_err());
        assert!(serde_json::from_str::<DiskGib>("65537").is_err());
        assert!(serde_json::from_str::<Vmid>("99").is_err());
        assert!(serde_json::from_str::<Cores>("-1").is_err());
    }

    #[test]
    fn names_and_users_are_checked() {
        assert!(serde_json::from_str::<Name>("\"web-1\"").is_ok());
        assert!(serde_json::from_str::<Name>("\"Web_1\"").is_err());
        assert!(serde_json::from_str::<UnixUser>("\"root\"").is_err());
        assert_eq!(UnixUser::default().as_str(), "user");
    }
}
