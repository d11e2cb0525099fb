//! Money: an exact decimal amount of US dollars, written as a string in YAML and JSON.

use std::{borrow::Cow, fmt, str::FromStr};

use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The schema pattern for money strings: non-negative, at most 6 decimals, no exponent or sign.
pub const MONEY_PATTERN: &str = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$";

/// Most decimals a money string may carry (micro-dollars: a token can cost less than a cent).
pub const MONEY_MAX_SCALE: u32 = 6;

/// A non-negative amount of US dollars with at most six decimals. Never a float.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

/// Why a string is not money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMoney(String);

impl fmt::Display for InvalidMoney {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid amount {:?}: expected a non-negative decimal string with at most {MONEY_MAX_SCALE} decimals, e.g. \"10.00\"",
            self.0
        )
    }
}

impl std::error::Error for InvalidMoney {}

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Wraps a decimal that is already known to be valid money; `None` if negative or too precise.
    pub fn new(amount: Decimal) -> Option<Self> {
        (amount >= Decimal::ZERO && amount.scale() <= MONEY_MAX_SCALE).then_some(Money(amount))
    }

    pub fn amount(self) -> Decimal {
        self.0
    }

    /// The exact sum, or `None` past rust_decimal's range (about 7.9e28 dollars).
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).and_then(Money::new)
    }
}

impl FromStr for Money {
    type Err = InvalidMoney;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed = {
            let (int, frac) = s.split_once('.').unwrap_or((s, ""));
            !int.is_empty()
                && int.len() <= 12
                && int.bytes().all(|b| b.is_ascii_digit())
                && (int == "0" || !int.starts_with('0'))
                && (!s.contains('.') || (1..=6).contains(&frac.len()))
                && frac.bytes().all(|b| b.is_ascii_digit())
        };
        if !well_formed {
            return Err(InvalidMoney(s.to_owned()));
        }
        Decimal::from_str_exact(s)
            .ok()
            .and_then(Money::new)
            .ok_or_else(|| InvalidMoney(s.to_owned()))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Money {
    fn schema_name() -> Cow<'static, str> {
        "Money".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": MONEY_PATTERN,
            "maxLength": 19,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_amounts_exactly() {
        for (s, expect) in [
            ("10.00", "10.00"),
            ("0", "0"),
            ("200", "200"),
            ("0.000001", "0.000001"),
        ] {
            let m: Money = s.parse().unwrap();
            assert_eq!(m.to_string(), expect);
        }
        let sum =
            "0.1".parse::<Money>().unwrap().amount() + "0.2".parse::<Money>().unwrap().amount();
        assert_eq!(sum, Decimal::from_str_exact("0.3").unwrap());
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for s in [
            "-1",
            "1.0000001",
            "1e3",
            "abc",
            "",
            ".5",
            "5.",
            "01",
            "+1",
            " 1",
            "1,5",
            "NaN",
        ] {
            assert!(s.parse::<Money>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn round_trips_as_a_json_string() {
        let m: Money = serde_json::from_str(r#""12.345""#).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), r#""12.345""#);
        assert!(
            serde_json::from_str::<Money>("12.3").is_err(),
            "a JSON number is not money"
        );
    }
}
