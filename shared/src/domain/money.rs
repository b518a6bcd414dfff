//! Exact decimals for quantities, prices and money. No float is ever involved: values are
//! `rust_decimal::Decimal` (96-bit integer mantissa and a decimal scale), JSON carries them as
//! strings, and request bodies are read from the literal text the caller sent.
//!
//! # Limits (enforced at the edge, `422` naming the field)
//!
//! | value    | rule                                                  |
//! |----------|-------------------------------------------------------|
//! | quantity | `> 0`, at most 8 decimal places, at most `1e6`        |
//! | price    | `> 0`, at most 8 decimal places, at most `1e6`        |
//!
//! So `quantity × price` (the notional, up to 16 decimal places) is at most `1e12` and exact
//! in 28 significant digits. A value outside these (`1e400`, `0.000000001`, `0`, `-5`) is
//! refused, never rounded. Each limit is one a JSON Schema can state, so `openapi.yaml`
//! admits exactly the values these types do (a property test holds them together): as a
//! string, a plain decimal (`"12.5"`, no sign or exponent); as a JSON number, any number
//! syntax, read from its literal text. Every later operation on money is checked with
//! [`exact_add`], [`exact_sub`] and [`exact_mul`]: an operation whose exact result would not
//! fit is an error, not a rounding.
//! Division is the one operation that rounds, and it rounds once, at the last step: money
//! kept in a position (its book cost) is exact at [`MONEY_SCALE`] places, the part of it a
//! sale removes is [`share`] (multiply before dividing, one rounding half-to-even), and the
//! average price shown is [`quotient`] of book cost and quantity, for display only.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places allowed in a quantity or price, and kept in an average price.
pub const PRICE_SCALE: u32 = 8;
/// Decimal places of money: `quantity × price` has at most twice [`PRICE_SCALE`], so book costs
/// and realized P&L are exact at this scale.
pub const MONEY_SCALE: u32 = 2 * PRICE_SCALE;
/// `1e6`: the largest quantity, and the largest price, of one trade (so a trade's notional is
/// at most `1e12`).
pub const MAX_QUANTITY: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
pub const MAX_PRICE: Decimal = MAX_QUANTITY;

/// Parses a decimal literal, JSON-number syntax (`-12.5`, `1e3`, `2.5E-2`), refusing more than
/// `max_scale` decimal places or a value above `max` before building anything, so that huge
/// exponents (`1e400`) or long digit strings are errors rather than overflows.
pub fn parse_bounded(text: &str, max_scale: u32, max: Decimal) -> Result<Decimal, String> {
    let syntax = || "must be a decimal number, as a string or a number (e.g. \"12.5\")".to_owned();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || (mantissa.contains('.') && !all_digits(frac)) {
        return Err(syntax());
    }
    // Exponents beyond ±10^6 saturate: either way the value is out of range or all-zero.
    let exp: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !all_digits(digits) {
                return Err(syntax());
            }
            let magnitude: i64 = digits[..digits.len().min(7)]
                .parse()
                .map_err(|_| syntax())?;
            let magnitude = if digits.len() > 7 {
                10_000_000
            } else {
                magnitude
            };
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // value = digits × 10^(exp - frac.len()), with insignificant zeros removed.
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    let mut exp = exp - frac.len() as i64 + (digits.len() - trimmed.len()) as i64;
    let digits = trimmed;
    if digits.is_empty() {
        return Ok(Decimal::ZERO);
    }
    if -exp > i64::from(max_scale) {
        return Err(format!("at most {max_scale} decimal places"));
    }
    // Integer digits beyond 20 exceed every limit here and would not fit the mantissa.
    if digits.len() as i64 + exp > 20 {
        return Err(format!("must be at most {max}"));
    }
    let mut units: i128 = digits.parse().map_err(|_| syntax())?;
    while exp > 0 {
        units *= 10;
        exp -= 1;
    }
    let scale = u32::try_from(-exp).map_err(|_| syntax())?;
    let value = Decimal::try_from_i128_with_scale(if negative { -units } else { units }, scale)
        .map_err(|_| format!("must be at most {max}"))?;
    if value.abs() > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(value)
}

/// Parses a positive bounded decimal (quantities and prices).
fn parse_positive(text: &str, max_scale: u32, max: Decimal) -> Result<Decimal, String> {
    let value = parse_bounded(text, max_scale, max)?;
    if value <= Decimal::ZERO {
        return Err("must be greater than 0".into());
    }
    Ok(value)
}

macro_rules! positive_decimal {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Decimal);

        impl $name {
            pub fn get(self) -> Decimal {
                self.0
            }
        }

        impl TryFrom<Decimal> for $name {
            type Error = String;
            fn try_from(d: Decimal) -> Result<Self, String> {
                d.normalize().to_string().parse()
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_positive(s, PRICE_SCALE, $max).map(|d| $name(d.normalize()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        /// Stored values and events carry strings; request bodies go through [`Literal`].
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(D::Error::custom)
            }
        }
    };
}

positive_decimal!(
    /// The number of units of one trade: `> 0`, at most 8 decimal places, at most `1e6`.
    Quantity,
    MAX_QUANTITY
);
positive_decimal!(
    /// The price of one unit: `> 0`, at most 8 decimal places, at most `1e6`.
    Price,
    MAX_PRICE
);

/// Any exact decimal the system computes (positions, P&L, journal amounts, balances),
/// serialized as a normalized string (`"12.5"`, `"-300"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(Decimal);

impl Amount {
    pub const ZERO: Amount = Amount(Decimal::ZERO);

    pub fn new(d: Decimal) -> Self {
        Amount(d.normalize())
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

impl From<Decimal> for Amount {
    fn from(d: Decimal) -> Self {
        Amount::new(d)
    }
}

impl FromStr for Amount {
    type Err = String;
    /// Plain (`-12.5`) or scientific (`1.25E+3`, as DynamoDB or an emulator may return
    /// numbers) notation; anything not exactly representable is an error.
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = if s.contains(['e', 'E']) {
            Decimal::from_scientific(s)
        } else {
            Decimal::from_str_exact(s)
        };
        parsed
            .map(Amount::new)
            .map_err(|_| format!("{s:?} is not an exact decimal"))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// A request-body field holding a decimal as a JSON string **or number**, parsed from the
/// literal text the caller sent (serde_json's `RawValue`), so `0.1` is exactly one tenth and
/// `1e400` is a range error naming the field, never an `f64` or a parse failure of the body.
/// A string is a plain decimal (`[0-9]+(.[0-9]+)?`: no sign, no exponent), as the spec's
/// pattern says; a number may use any JSON number syntax. Only works when deserializing
/// straight from bytes ([`crate::http::parse_exact`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Literal<T>(pub T);

impl<'de, T> Deserialize<'de> for Literal<T>
where
    T: FromStr<Err = String>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get();
        let literal = match text.as_bytes().first() {
            Some(b'"') => {
                let s = serde_json::from_str::<String>(text).map_err(D::Error::custom)?;
                if !is_plain_decimal(&s) {
                    return Err(D::Error::custom(
                        "as a string, a plain decimal without sign or exponent (e.g. \"12.5\")",
                    ));
                }
                s
            }
            Some(b'-' | b'0'..=b'9') => text.to_owned(),
            _ => {
                return Err(D::Error::custom(
                    "must be a decimal number, as a string or a number (e.g. \"12.5\")",
                ));
            }
        };
        literal.parse().map(Literal).map_err(D::Error::custom)
    }
}

/// `[0-9]+(\.[0-9]+)?`: how a decimal is written as a string in a request.
fn is_plain_decimal(s: &str) -> bool {
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(s),
    }
}

/// Why an exact operation could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not fit an exact decimal (28 significant digits)")]
pub struct Inexact(pub &'static str);

/// `a + b`, or an error when the exact sum does not fit (never a rounded sum). Conservative:
/// `rust_decimal` rescales (rounds) only when the exact result overflows, and then the
/// result's scale drops below the operands'.
pub fn exact_add(a: Decimal, b: Decimal) -> Result<Decimal, Inexact> {
    let sum = a.checked_add(b).ok_or(Inexact("sum"))?;
    if sum.scale() < a.scale().max(b.scale()) {
        return Err(Inexact("sum"));
    }
    Ok(sum.normalize())
}

pub fn exact_sub(a: Decimal, b: Decimal) -> Result<Decimal, Inexact> {
    exact_add(a, -b)
}

/// `a × b`, or an error when the exact product does not fit (see [`exact_add`]).
pub fn exact_mul(a: Decimal, b: Decimal) -> Result<Decimal, Inexact> {
    let (a, b) = (a.normalize(), b.normalize());
    let product = a.checked_mul(b).ok_or(Inexact("product"))?;
    if product.scale() < a.scale() + b.scale() {
        return Err(Inexact("product"));
    }
    Ok(product.normalize())
}

/// `d` as an integer number of `10^-scale` units, when exact.
fn units(d: Decimal, scale: u32, what: &'static str) -> Result<i128, Inexact> {
    let d = d.normalize();
    let shift = scale.checked_sub(d.scale()).ok_or(Inexact(what))?;
    d.mantissa()
        .checked_mul(10i128.checked_pow(shift).ok_or(Inexact(what))?)
        .ok_or(Inexact(what))
}

/// `amount / quantity` (money at [`MONEY_SCALE`] over a quantity at [`PRICE_SCALE`]) rounded
/// half-to-even to [`PRICE_SCALE`] places: a price such as an average cost. One exact integer
/// division.
pub fn quotient(amount: Decimal, quantity: Decimal) -> Result<Decimal, Inexact> {
    let amount = units(amount, MONEY_SCALE, "quotient")?;
    let quantity = units(quantity, PRICE_SCALE, "quotient")?;
    // 10^-16 units over 10^-8 units: the quotient is in 10^-8 units.
    round_half_even(amount, quantity, PRICE_SCALE)
}

/// The share `part / whole` of `amount`: `amount × part / whole` rounded half-to-even to
/// [`MONEY_SCALE`] places, multiplying before dividing so that the only rounding is the last
/// step; the whole of it (`part == whole`) is `amount` exactly. `part` and `whole` are
/// quantities (at most [`PRICE_SCALE`] places) with `0 <= part <= whole`, `whole > 0`.
///
/// Exact on 128-bit integers without a wider type: with `amount = hi·whole + lo` (`lo <
/// whole`), the share is `hi·part + lo·part/whole`, where `hi·part <= amount` and `lo·part <
/// whole²` both fit.
pub fn share(amount: Decimal, part: Decimal, whole: Decimal) -> Result<Decimal, Inexact> {
    let amount = units(amount, MONEY_SCALE, "share")?;
    let (part, whole) = (
        units(part, PRICE_SCALE, "share")?,
        units(whole, PRICE_SCALE, "share")?,
    );
    if whole <= 0 || part < 0 || part > whole {
        return Err(Inexact("share"));
    }
    let (hi, lo) = (amount.div_euclid(whole), amount.rem_euclid(whole));
    let whole_units = hi.checked_mul(part).ok_or(Inexact("share"))?;
    let rest = lo.checked_mul(part).ok_or(Inexact("share"))?;
    let rest = round_half_even(rest, whole, 0)?.mantissa();
    Decimal::try_from_i128_with_scale(whole_units + rest, MONEY_SCALE)
        .map(|v| v.normalize())
        .map_err(|_| Inexact("share"))
}

/// `n / d` (integers, `d > 0`) rounded half-to-even to an integer, read as a decimal with
/// `scale` places. One exact integer division: no double rounding.
fn round_half_even(n: i128, d: i128, scale: u32) -> Result<Decimal, Inexact> {
    if d <= 0 {
        return Err(Inexact("quotient"));
    }
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    let twice = r.checked_mul(2).ok_or(Inexact("quotient"))?;
    let units = if twice > d || (twice == d && q % 2 != 0) {
        q + 1
    } else {
        q
    };
    Decimal::try_from_i128_with_scale(units, scale)
        .map(|v| v.normalize())
        .map_err(|_| Inexact("quotient"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn limits_are_the_documented_numbers() {
        assert_eq!(MAX_QUANTITY.to_string(), "1000000");
        assert_eq!(MAX_PRICE.to_string(), "1000000");
        let notional = exact_mul(MAX_QUANTITY, MAX_PRICE).unwrap();
        assert_eq!(
            notional.to_string(),
            "1000000000000",
            "the largest notional"
        );
        let finest = exact_mul(d("999999.99999999"), d("999999.99999999")).unwrap();
        assert_eq!(finest.scale(), 16, "exact at 16 places");
    }

    #[test]
    fn quantities_parse_exactly_or_name_the_rule() {
        let q = |s: &str| s.parse::<Quantity>().map(|q| q.to_string());
        assert_eq!(q("10").unwrap(), "10");
        assert_eq!(q("0.10000000").unwrap(), "0.1");
        assert_eq!(q("1e3").unwrap(), "1000");
        assert_eq!(q("2.5E-2").unwrap(), "0.025");
        assert_eq!(q("0.00000001").unwrap(), "0.00000001");
        assert_eq!(q("1000000").unwrap(), "1000000");
        assert!(q("0.000000001").unwrap_err().contains("8 decimal places"));
        assert!(q("1e400").unwrap_err().contains("at most"));
        assert!(q("1e99999999999999999999").unwrap_err().contains("at most"));
        assert!(q("1e-400").unwrap_err().contains("decimal places"));
        assert!(q("1000000.00000001").unwrap_err().contains("at most"));
        assert!(q(&"9".repeat(40)).unwrap_err().contains("at most"));
        assert!(q("0").unwrap_err().contains("greater than 0"));
        assert!(q("0e5").unwrap_err().contains("greater than 0"));
        assert!(q("-5").unwrap_err().contains("greater than 0"));
        for bad in [
            "", "abc", "1.", ".5", "1e", "1e+", "+1", " 1", "1,5", "NaN", "0x10", "1..2",
        ] {
            assert!(q(bad).unwrap_err().contains("decimal number"), "{bad:?}");
        }
    }

    #[derive(Deserialize)]
    struct Body {
        quantity: Literal<Quantity>,
    }

    fn body(json: &str) -> Result<Quantity, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize::<_, Body>(&mut de)
            .map(|b| b.quantity.0)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    #[test]
    fn request_literals_keep_their_exact_text() {
        assert_eq!(body(r#"{"quantity": 0.1}"#).unwrap().to_string(), "0.1");
        assert_eq!(body(r#"{"quantity": "0.1"}"#).unwrap().to_string(), "0.1");
        assert_eq!(
            body(r#"{"quantity": 123456.12345678}"#)
                .unwrap()
                .to_string(),
            "123456.12345678"
        );
        assert_eq!(body(r#"{"quantity": 1.5e2}"#).unwrap().to_string(), "150");
        assert_eq!(
            body(r#"{"quantity": "007.50"}"#).unwrap().to_string(),
            "7.5"
        );
        for bad in [
            r#"{"quantity": "1e2"}"#,
            r#"{"quantity": "-1"}"#,
            r#"{"quantity": "+1"}"#,
            r#"{"quantity": ".5"}"#,
            r#"{"quantity": "0"}"#,
            r#"{"quantity": 1e400}"#,
            r#"{"quantity": true}"#,
            r#"{"quantity": null}"#,
            r#"{"quantity": [1]}"#,
            r#"{"quantity": {"a": 1}}"#,
            r#"{"quantity": -1}"#,
            r#"{"quantity": 0.123456789}"#,
        ] {
            let e = body(bad).unwrap_err();
            assert!(e.starts_with("quantity: "), "{bad}: {e}");
        }
    }

    #[test]
    fn stored_values_round_trip_as_strings() {
        let q: Quantity = "12.50".parse().unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), r#""12.5""#);
        assert_eq!(serde_json::from_str::<Quantity>(r#""12.5""#).unwrap(), q);
        assert!(serde_json::from_str::<Quantity>("12.5").is_err());
        let a: Amount = "1.25E+3".parse().unwrap();
        assert_eq!(a.to_string(), "1250");
        assert_eq!("-0.50".parse::<Amount>().unwrap().to_string(), "-0.5");
        assert!("1e400".parse::<Amount>().is_err());
    }

    #[test]
    fn exact_operations_fail_rather_than_round() {
        assert_eq!(exact_mul(d("1.5"), d("2")).unwrap(), d("3"));
        assert_eq!(
            exact_mul(MAX_QUANTITY, d("1000000")).unwrap().to_string(),
            "1000000000000"
        );
        let tiny = d("0.00000001");
        let big = d("999999999999.99999999");
        assert!(exact_mul(big, big).is_err(), "needs 40 digits");
        assert!(exact_add(d("79228162514264337593543950335"), d("0.1")).is_err());
        assert_eq!(exact_sub(tiny, tiny).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn quotients_round_half_to_even_once() {
        let q = |a: &str, b: &str| quotient(d(a), d(b)).unwrap().to_string();
        assert_eq!(q("5", "3"), "1.66666667");
        assert_eq!(q("22.5", "3"), "7.5");
        assert_eq!(q("0.00000003", "2"), "0.00000002", "1.5e-8 -> even");
        assert_eq!(q("0.00000005", "2"), "0.00000002", "2.5e-8 -> even");
        assert_eq!(q("1555", "15"), "103.66666667");
        // the largest book the scale allows still divides
        assert_eq!(q("1000000000000", "1000"), "1000000000");
        assert!(quotient(d("1"), Decimal::ZERO).is_err());
        assert_eq!(round_half_even(-25, 2, 2).unwrap().to_string(), "-0.12");
    }

    #[test]
    fn shares_multiply_before_dividing_and_round_once() {
        let s = |a: &str, p: &str, w: &str| share(d(a), d(p), d(w)).unwrap().to_string();
        // 1555 × 3 / 15 = 311 exactly; dividing first would give 103.66666667 × 3.
        assert_eq!(s("1555", "3", "15"), "311");
        assert_eq!(
            s("1555", "15", "15"),
            "1555",
            "the whole is the amount, exactly"
        );
        assert_eq!(s("1555", "0", "15"), "0");
        assert_eq!(s("1", "1", "3"), "0.3333333333333333");
        assert_eq!(s("2", "1", "3"), "0.6666666666666667");
        // half a unit of 10^-16 rounds to even
        assert_eq!(s("0.0000000000000001", "1", "2"), "0");
        assert_eq!(s("0.0000000000000003", "1", "2"), "0.0000000000000002");
        // large books: 7e12 of money, a 1e-8 sale of 1e9 held
        assert_eq!(s("7000000000000", "0.00000001", "1000000000"), "0.00007");
        for bad in [("1", "2", "1"), ("1", "-1", "1"), ("1", "1", "0")] {
            assert!(share(d(bad.0), d(bad.1), d(bad.2)).is_err(), "{bad:?}");
        }
    }
}
