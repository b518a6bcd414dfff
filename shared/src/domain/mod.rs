//! Domain types and rules. Nothing here knows about AWS: these are plain values and pure
//! functions, unit-tested without any I/O.

pub mod agents;
pub mod conversations;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod positions;
pub mod trades;

use serde::{Deserialize, Deserializer, de};

/// A non-negative whole number read from a request: a JSON integer, or a JSON number without
/// a fraction (`2.0`), which JSON Schema's `integer` admits as well and some JSON writers
/// produce for integers. Whole floats beyond 2^53 are refused: past it a float no longer names
/// one integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Whole;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::custom("must not be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
                const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
                if v.fract() == 0.0 && (0.0..=EXACT).contains(&v) {
                    Ok(Whole(v as u64))
                } else {
                    Err(E::custom("must be a whole number"))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Whether `s` is only white space (Unicode `White_Space`, as `str::trim` strips it), or empty.
/// The spec's text patterns list the same characters explicitly, not as `\s`, whose meaning
/// differs between regex engines.
pub fn is_blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_integers_or_floats_without_a_fraction() {
        let w = |json: &str| serde_json::from_str::<Whole>(json).map(|w| w.0);
        assert_eq!(w("2").unwrap(), 2);
        assert_eq!(w("2.0").unwrap(), 2);
        assert_eq!(w("18446744073709551615").unwrap(), u64::MAX);
        for bad in ["2.5", "-1", "-1.0", "1e300", "\"2\"", "true"] {
            assert!(w(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blank_is_unicode_white_space() {
        assert!(is_blank(" \t\u{a0}\u{3000}\u{2028}"));
        assert!(!is_blank(" a "));
        assert!(!is_blank("\u{feff}"), "BOM is no white space");
    }
}
