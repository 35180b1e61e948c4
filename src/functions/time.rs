//! Time functions: turning the timestamps sources send (ISO 8601 text, epoch seconds or milliseconds) into the
//! Unix milliseconds the Conversions API expects.

use std::str::FromStr;

use super::numeric::{decimal, text_decimal};
use super::{present, quoted, Arg, Category, Example, Function, Outcome, Pii, Ty, Val};
use jiff::civil::{Date, DateTime};
use jiff::tz::Offset;
use jiff::Timestamp;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

/// Epoch numbers below this are seconds, the rest milliseconds: 1e11 seconds is the year 5138, while 1e11
/// milliseconds is 1973, before any event a mapping will see.
const MILLISECOND_THRESHOLD: i64 = 100_000_000_000;

pub(super) const TO_UNIX_MS: Function = Function {
    name: "to_unix_ms",
    category: Category::Time,
    summary: "Converts an ISO 8601 timestamp or epoch seconds or milliseconds to Unix milliseconds.",
    doc: r#"
        Text is trimmed and read as the first of these that fits: a number (epoch seconds or milliseconds,
        as below); an RFC 3339 / ISO 8601 timestamp with an offset (`Z`, `+01:00`); a date and time without
        an offset, taken as UTC; a date alone, taken as midnight UTC; an RFC 2822 date as JavaScript's
        `toUTCString` and HTTP headers write it (`"Thu, 06 Jun 2024 08:00:00 GMT"`). Fractions of a
        millisecond are dropped.

        A number, or numeric text, below 10^11 in magnitude is epoch seconds, anything larger epoch
        milliseconds: 10^11 seconds is the year 5138, while 10^11 milliseconds is 1973, before any event a
        mapping will see. Fractions of a second are kept to the millisecond (1717660800.5 is 1717660800500).

        A missing, null or blank input yields nothing. Text that is not a timestamp gives up with a warning
        quoting it (`not a timestamp: "yesterday"`), as do impossible dates (`2024-02-30`), values out of
        range, booleans, arrays and objects. Whether the time lies in the accepted window is checked later,
        on the `timestamp_ms` field.
    "#,
    input: Ty::STRING.union(Ty::NUMBER),
    params: &[],
    variadic: false,
    output: Ty::INTEGER,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\"2024-06-06T08:00:00Z\""), args: &[], output: Some("1717660800000") },
        Example { input: Some("\"2026-11-18T18:56:07.748Z\""), args: &[], output: Some("1795028167748") },
        Example { input: Some("\"2024-06-06T09:00:00+01:00\""), args: &[], output: Some("1717660800000") },
        Example { input: Some("\"2024-06-06T08:00:00\""), args: &[], output: Some("1717660800000") },
        Example { input: Some("\"2024-06-06\""), args: &[], output: Some("1717632000000") },
        Example { input: Some("\"Thu, 06 Jun 2024 08:00:00 GMT\""), args: &[], output: Some("1717660800000") },
        Example { input: Some("1717660800"), args: &[], output: Some("1717660800000") },
        Example { input: Some("1717660800.5"), args: &[], output: Some("1717660800500") },
        Example { input: Some("1717660800000"), args: &[], output: Some("1717660800000") },
        Example { input: Some("\"1717660800\""), args: &[], output: Some("1717660800000") },
        Example { input: Some("\"yesterday\""), args: &[], output: None },
        Example { input: Some("\"2024-02-30\""), args: &[], output: None },
        Example { input: Some("\"\""), args: &[], output: None },
    ],
    check_constants: None,
    eval: to_unix_ms,
};

fn to_unix_ms<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    let ms = match present(input) {
        None => return Ok(None),
        Some(Val::Str(s)) => {
            let text = s.trim();
            if text.is_empty() {
                return Ok(None);
            }
            // Numeric text is epoch seconds or milliseconds, anything else a date.
            match text_decimal(text) {
                Some(epoch) => epoch_ms(epoch)?,
                None => text_ms(text).ok_or_else(|| format!("not a timestamp: {}", quoted(text)))?,
            }
        }
        Some(value @ Val::Number(_)) => match decimal(&value)? {
            Some(epoch) => epoch_ms(epoch)?,
            None => return Ok(None),
        },
        Some(other) => return Err(format!("expected a timestamp string or number, got {}", other.kind())),
    };
    Ok(Some(Val::from(ms)))
}

/// A JSON timestamp read exactly as `to_unix_ms` reads it (ISO 8601 text, epoch seconds or milliseconds), for
/// callers outside mappings such as the relay's clock-skew correction; `None` when it is not a time.
pub fn timestamp_ms(value: &serde_json::Value) -> Option<i64> {
    match to_unix_ms(Some(Val::from_json(value)), &[]) {
        Ok(Some(ms)) => ms.as_i64(),
        _ => None,
    }
}

fn epoch_ms(epoch: Decimal) -> Result<i64, String> {
    let ms = if epoch.abs() < Decimal::from(MILLISECOND_THRESHOLD) {
        epoch.checked_mul(Decimal::ONE_THOUSAND)
    } else {
        Some(epoch)
    };
    ms.and_then(|ms| ms.trunc().to_i64()).ok_or_else(|| "timestamp out of range".to_string())
}

/// A timestamp written as text. Without an offset it is taken as UTC, as analytics libraries that drop the
/// offset almost always mean.
fn text_ms(text: &str) -> Option<i64> {
    if let Ok(ts) = Timestamp::from_str(text) {
        return Some(ts.as_millisecond());
    }
    let civil = DateTime::from_str(text)
        .ok()
        .or_else(|| Date::from_str(text).ok().map(|date| date.to_datetime(jiff::civil::Time::midnight())));
    if let Some(dt) = civil {
        return Offset::UTC.to_timestamp(dt).ok().map(|ts| ts.as_millisecond());
    }
    // JavaScript's `Date.prototype.toUTCString` and HTTP headers write RFC 2822 dates.
    jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(text).ok().map(|ts| ts.as_millisecond())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::eval_json;
    use super::*;

    fn ms(input: Value) -> Result<Option<Value>, String> {
        eval_json(&TO_UNIX_MS, Some(input), &[])
    }

    #[test]
    fn iso_8601_text() {
        let cases = [
            ("2024-06-06T08:00:00Z", 1_717_660_800_000i64),
            ("2024-06-06T08:00:00.123Z", 1_717_660_800_123),
            ("2024-06-06T08:00:00.123456789Z", 1_717_660_800_123),
            ("2024-06-06t08:00:00z", 1_717_660_800_000),
            ("2024-06-06 08:00:00Z", 1_717_660_800_000),
            ("2024-06-06T10:00:00+02:00", 1_717_660_800_000),
            ("2024-06-06T03:00:00-05:00", 1_717_660_800_000),
            ("2024-06-06T08:00:00", 1_717_660_800_000),
            ("2024-06-06T08:00", 1_717_660_800_000),
            (" 2024-06-06T08:00:00Z ", 1_717_660_800_000),
            ("2024-06-06", 1_717_632_000_000),
            ("1969-12-31T23:59:59Z", -1_000),
            ("Thu, 06 Jun 2024 08:00:00 GMT", 1_717_660_800_000),
        ];
        for (text, expected) in cases {
            assert_eq!(ms(json!(text)), Ok(Some(json!(expected))), "{text}");
        }
    }

    #[test]
    fn epoch_numbers() {
        assert_eq!(ms(json!(1_717_660_800)), Ok(Some(json!(1_717_660_800_000i64))));
        assert_eq!(ms(json!("1717660800")), Ok(Some(json!(1_717_660_800_000i64))));
        assert_eq!(ms(json!(1_717_660_800.123_9)), Ok(Some(json!(1_717_660_800_123i64))));
        assert_eq!(ms(json!(1_717_660_800_000i64)), Ok(Some(json!(1_717_660_800_000i64))));
        assert_eq!(ms(json!(1_717_660_800_000.9)), Ok(Some(json!(1_717_660_800_000i64))));
        assert_eq!(ms(json!(99_999_999_999i64)), Ok(Some(json!(99_999_999_999_000i64))));
        assert_eq!(ms(json!(100_000_000_000i64)), Ok(Some(json!(100_000_000_000i64))));
        assert_eq!(ms(json!(0)), Ok(Some(json!(0))));
        assert_eq!(ms(json!(-1)), Ok(Some(json!(-1000))));
    }

    #[test]
    fn refusals_name_the_text() {
        assert_eq!(ms(json!("yesterday")), Err("not a timestamp: \"yesterday\"".to_string()));
        for bad in ["2024-13-01", "2024-02-30T00:00:00Z", "NaN", "1e300", "T", "2024-06-06T25:00:00Z"] {
            assert!(ms(json!(bad)).is_err(), "{bad}");
        }
        assert!(ms(json!(1e300)).is_err());
        assert_eq!(ms(json!(u64::MAX)), Err("timestamp out of range".to_string()));
        assert!(ms(json!("79228162514264337593543950335")).is_err());
        assert!(ms(json!("-79228162514264337593543950")).is_err());
        assert!(ms(json!(true)).is_err());
        assert!(ms(json!([])).is_err());
        assert!(ms(json!({})).is_err());
        assert_eq!(ms(json!(null)), Ok(None));
        assert_eq!(ms(json!("  ")), Ok(None));
        assert_eq!(eval_json(&TO_UNIX_MS, None, &[]), Ok(None));
    }
}
