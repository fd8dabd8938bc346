//! The one place PVE's loose JSON typing is handled.
//!
//! PVE's Perl backend sends numbers as numbers or as strings (`"memory": "1024"`,
//! `GET /cluster/nextid` → `"100"`), and booleans as `0`/`1`, `"0"`/`"1"` or true/false
//! depending on the endpoint and version. Response types use these functions through
//! `#[serde(deserialize_with = ...)]`, so the rest of the crate only sees Rust types.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// A JSON scalar as PVE might send it, before we pick the type we want.
enum Scalar {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Null,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a boolean or a string")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
    d.deserialize_any(ScalarVisitor)
}

/// Parse a boolean in any of PVE's spellings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn to_int<E: de::Error>(s: Scalar) -> Result<Option<i128>, E> {
    match s {
        Scalar::Int(i) => Ok(Some(i)),
        // PVE sometimes sends an integer field as 2.0; accept exact floats only.
        Scalar::Float(f) if f.fract() == 0.0 && f.is_finite() => Ok(Some(f as i128)),
        Scalar::Float(f) => Err(E::custom(format!("expected an integer, got {f}"))),
        Scalar::Bool(b) => Ok(Some(i128::from(b))),
        Scalar::Str(s) if s.trim().is_empty() => Ok(None),
        Scalar::Str(s) => s
            .trim()
            .parse::<i128>()
            .map(Some)
            .map_err(|_| E::custom(format!("expected an integer, got {s:?}"))),
        Scalar::Null => Ok(None),
    }
}

fn to_float<E: de::Error>(s: Scalar) -> Result<Option<f64>, E> {
    match s {
        Scalar::Int(i) => Ok(Some(i as f64)),
        Scalar::Float(f) => Ok(Some(f)),
        Scalar::Bool(b) => Ok(Some(if b { 1.0 } else { 0.0 })),
        Scalar::Str(s) if s.trim().is_empty() => Ok(None),
        Scalar::Str(s) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| E::custom(format!("expected a number, got {s:?}"))),
        Scalar::Null => Ok(None),
    }
}

fn to_bool<E: de::Error>(s: Scalar) -> Result<Option<bool>, E> {
    match s {
        Scalar::Bool(b) => Ok(Some(b)),
        Scalar::Int(i) => Ok(Some(i != 0)),
        Scalar::Float(f) => Ok(Some(f != 0.0)),
        Scalar::Str(s) => parse_bool(&s)
            .map(Some)
            .ok_or_else(|| E::custom(format!("expected a boolean, got {s:?}"))),
        Scalar::Null => Ok(None),
    }
}

/// Convert to any integer type, with a clear error when out of range.
fn narrow<T: TryFrom<i128>, E: de::Error>(v: i128) -> Result<T, E> {
    T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
}

/// An integer that may arrive as a number, a numeric string or a boolean.
pub fn int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
    let v = to_int::<D::Error>(scalar(d)?)?.ok_or_else(|| de::Error::custom("missing integer"))?;
    narrow(v)
}

/// Like [`int`], with `null` and `""` as the type's default (0), for fields that also carry
/// `#[serde(default)]`: PVE leaves usage figures empty for guests on an offline node.
pub fn int_or_default<'de, D: Deserializer<'de>, T: TryFrom<i128> + Default>(
    d: D,
) -> Result<T, D::Error> {
    to_int::<D::Error>(scalar(d)?)?
        .map(narrow)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Like [`int`], with `null`, `""` and absence (with `#[serde(default)]`) as `None`.
pub fn opt_int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
    to_int::<D::Error>(scalar(d)?)?.map(narrow).transpose()
}

/// A float that may arrive as a number or a numeric string.
pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(to_float::<D::Error>(scalar(d)?)?.unwrap_or(0.0))
}

/// Like [`float`], with `null` and `""` as `None`.
pub fn opt_float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    to_float::<D::Error>(scalar(d)?)
}

/// A boolean as `true`/`false`, `0`/`1` or a string spelling of either; `null` is `false`.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(to_bool::<D::Error>(scalar(d)?)?.unwrap_or(false))
}

/// Like [`bool`], with `null` and absence (with `#[serde(default)]`) as `None`: for
/// options whose absence means PVE's default, which differs per option.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    to_bool::<D::Error>(scalar(d)?)
}

/// A string that PVE sometimes sends as a number (names like `100`, tags, ids).
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match scalar(d)? {
        Scalar::Str(s) => Some(s),
        Scalar::Int(i) => Some(i.to_string()),
        Scalar::Float(f) => Some(f.to_string()),
        Scalar::Bool(b) => Some(if b { "1" } else { "0" }.to_owned()),
        Scalar::Null => None,
    })
}

/// A JSON scalar as the string PVE would accept back (`1024`, `1`, `virtio,bridge=vmbr0`).
/// Used for config maps, whose values are typed only by their key.
pub(crate) fn scalar_to_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        serde_json::Value::Null => None,
        // Objects and arrays do not occur in qemu configs; keep their JSON so nothing is lost.
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "super::int")]
        a: u32,
        #[serde(default, deserialize_with = "super::opt_int")]
        b: Option<u64>,
        #[serde(default, deserialize_with = "super::bool")]
        c: bool,
        #[serde(default, deserialize_with = "super::float")]
        d: f64,
        #[serde(default, deserialize_with = "super::opt_string")]
        e: Option<String>,
    }

    #[test]
    fn numbers_and_bools_in_every_spelling() {
        let t: T = serde_json::from_str(r#"{"a":"42","b":7,"c":"1","d":"0.5","e":100}"#).unwrap();
        assert_eq!(
            (t.a, t.b, t.c, t.d, t.e.as_deref()),
            (42, Some(7), true, 0.5, Some("100"))
        );
        let t: T = serde_json::from_str(r#"{"a":3,"b":"","c":0,"d":2}"#).unwrap();
        assert_eq!((t.a, t.b, t.c, t.d), (3, None, false, 2.0));
        let t: T = serde_json::from_str(r#"{"a":1.0,"c":true}"#).unwrap();
        assert_eq!((t.a, t.b, t.c), (1, None, true));
        let t: T = serde_json::from_str(r#"{"a":1,"b":null,"c":"false"}"#).unwrap();
        assert_eq!((t.b, t.c), (None, false));
    }

    #[test]
    fn null_usage_figures_default_to_zero() {
        #[derive(Deserialize)]
        struct U {
            #[serde(default, deserialize_with = "super::int_or_default")]
            mem: u64,
        }
        assert_eq!(serde_json::from_str::<U>(r#"{"mem":null}"#).unwrap().mem, 0);
        assert_eq!(serde_json::from_str::<U>(r#"{}"#).unwrap().mem, 0);
        assert_eq!(serde_json::from_str::<U>(r#"{"mem":"5"}"#).unwrap().mem, 5);
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(serde_json::from_str::<T>(r#"{"a":"x"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a":-1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a":1.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a":1,"c":"maybe"}"#).is_err());
    }
}
