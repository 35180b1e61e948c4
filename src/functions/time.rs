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

/// [`timestamp_ms`] of a JSON string's contents, without a tree around it.
pub fn text_timestamp_ms(text: &str) -> Option<i64> {
    match to_unix_ms(Some(Val::from(text)), &[]) {
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
    if let Some(ms) = canonical_utc_ms(text) {
        return Some(ms);
    }
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

/// The form nearly every timestamp comes in, JavaScript's `toISOString` (`2026-11-19T12:53:24.316Z`), read in one
/// pass: jiff's parser, which reads every form, cost more than the rest of the rule. Only that exact form from
/// 1970 to 9998 is read here; anything else is jiff's to read (a leap second, another separator or offset, a time
/// before 1970, where truncating to the millisecond rounds the other way), so both give the same answer.
fn canonical_utc_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let (date_time, fraction) = bytes.strip_suffix(b"Z")?.split_at_checked(19)?;
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, byte)| date_time[at] != byte) {
        return None;
    }
    let number = |from: usize, to: usize| {
        date_time[from..to]
            .iter()
            .try_fold(0i64, |n, &digit| digit.is_ascii_digit().then(|| n * 10 + i64::from(digit - b'0')))
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let millis = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) => {
            digits.iter().chain(b"00").take(3).fold(0, |n, &digit| n * 10 + i64::from(digit - b'0'))
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let valid = (1970..=9998).contains(&year)
        && (1..=12).contains(&month)
        && (1..=month_days).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    valid.then(|| ((days_since_epoch(year, month, day) * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar, counted in 400-year eras of 146,097 days
/// with years starting in March, so that the leap day ends a year.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    proptest::proptest! {
        /// Text of the canonical form's shape, valid or not (month 13, day 31 of a short month, hour 24, a leap
        /// second, a year before 1970, fractions of any length): the direct reading agrees with jiff's wherever it
        /// answers, and answers wherever jiff does within its years.
        #[test]
        fn the_canonical_form_is_read_as_jiff_reads_it(
            year in 1960i64..10_000,
            month in 0i64..14,
            day in 0i64..33,
            hour in 0i64..25,
            minute in 0i64..61,
            second in 0i64..62,
            fraction in proptest::option::of("[0-9]{0,10}"),
        ) {
            let fraction = fraction.map(|digits| format!(".{digits}")).unwrap_or_default();
            let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z");
            let jiff = Timestamp::from_str(&text).ok().map(|ts| ts.as_millisecond());
            let fast = canonical_utc_ms(&text);
            if fast.is_some() {
                proptest::prop_assert_eq!(fast, jiff, "{}", text);
            } else if (1970..=9998).contains(&year) && second < 60 {
                proptest::prop_assert_eq!(jiff, None, "{}", text);
            }
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
