//! Arithmetic on amounts: exact decimal multiply, divide and round, ISO 4217 minor units, and number parsing.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use iso_currency::Currency;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Number, Value};

use super::text::upper;
use super::{arg, constant, present, quoted, Arg, Category, Example, Function, Outcome, Param, Pii, Ty, Val};

const NUMERIC: Ty = Ty::NUMBER.union(Ty::STRING);

/// The largest number of decimal places `round` accepts: more would exceed what an f64 output can carry.
const MAX_DIGITS: u64 = 10;

pub(super) const MULTIPLY: Function = Function {
    name: "multiply",
    category: Category::Numeric,
    summary: "Multiplies a number by a factor, exactly: 129.99 × 100 is 12999, not 12998.999….",
    doc: r#"
        The input and the factor are each a number or a numeric string. Text is trimmed and may use a sign
        and an exponent (`"1e3"`), but not thousands separators, currency signs or `NaN`. The arithmetic is
        decimal, not binary floating point, and a JSON number is read as the shortest decimal that reads
        back as it (129.99 is exactly 129.99), so amounts come out as a person would compute them. A whole
        result is written as an integer.

        A missing, null or blank input or factor yields nothing. Text that is not a number gives up with a
        warning naming it (`expected a number or numeric string, got "abc"`, prefixed `factor:` when it is
        the factor), as does a product beyond the range of decimal arithmetic (about 7.9 × 10^28). A literal
        factor that is not a number is a compile error.
    "#,
    input: NUMERIC,
    params: &[Param {
        name: "factor",
        ty: NUMERIC,
        optional: false,
        constant: false,
        doc: "The number to multiply by; when it comes from a missing path the result is nothing.",
    }],
    variadic: false,
    output: Ty::NUMBER,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("129.99"), args: &["100"], output: Some("12999") },
        Example { input: Some("\"12.50\""), args: &["3"], output: Some("37.5") },
        Example { input: Some("0.1"), args: &["0.2"], output: Some("0.02") },
        Example { input: Some("\"abc\""), args: &["100"], output: None },
        Example { input: None, args: &["100"], output: None },
    ],
    check_constants: Some(check_number_constant),
    eval: multiply,
};

pub(super) const DIVIDE: Function = Function {
    name: "divide",
    category: Category::Numeric,
    summary: "Divides a number by a divisor, exactly; dividing by zero yields nothing with a warning.",
    doc: r#"
        Reads its input and divisor as `multiply` does and divides in decimal: `"7" | divide(2)` is 3.5. A
        quotient that does not end (1 ÷ 3) is cut to what a JSON number carries, 0.3333333333333333.

        A missing, null or blank input or divisor yields nothing. A divisor of zero gives up with the
        warning `division by zero`; a literal `0` (or `"0.00"`) is a compile error. Text that is not a
        number gives up with a warning naming it.
    "#,
    input: NUMERIC,
    params: &[Param {
        name: "divisor",
        ty: NUMERIC,
        optional: false,
        constant: false,
        doc: "The number to divide by; a literal 0 is rejected when the mapping is compiled.",
    }],
    variadic: false,
    output: Ty::NUMBER,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("12999"), args: &["100"], output: Some("129.99") },
        Example { input: Some("\"7\""), args: &["2"], output: Some("3.5") },
        Example { input: Some("\"n/a\""), args: &["2"], output: None },
        Example { input: Some("null"), args: &["2"], output: None },
    ],
    check_constants: Some(check_divisor),
    eval: divide,
};

pub(super) const ROUND: Function = Function {
    name: "round",
    category: Category::Numeric,
    summary: "Rounds a number to a number of decimal places, halves away from zero: 2.5 becomes 3, -2.5 becomes -3.",
    doc: r#"
        Rounds to `digits` decimal places, 0 when left out, with halves going away from zero: 2.5 to 3, -2.5
        to -3. It rounds the decimal the sender wrote, so 1.005 to two places is 1.01, not the 1.00 that the
        binary 1.00499… of floating point would give. Trailing zeros go: 19.999 to two places is 20, an
        integer.

        The input is read as `multiply` reads it: missing, null or blank yields nothing, text that is not a
        number gives up with a warning. `digits` must be an integer from 0 to 10 given as a literal or a
        `$parameter`; anything else is a compile error.
    "#,
    input: NUMERIC,
    params: &[Param {
        name: "digits",
        ty: Ty::INTEGER,
        optional: true,
        constant: true,
        doc: "Decimal places to keep, from 0 to 10; 0 when left out.",
    }],
    variadic: false,
    output: Ty::NUMBER,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("2.5"), args: &[], output: Some("3") },
        Example { input: Some("-2.5"), args: &[], output: Some("-3") },
        Example { input: Some("1.005"), args: &["2"], output: Some("1.01") },
        Example { input: Some("\"19.999\""), args: &["2"], output: Some("20") },
        Example { input: Some("42"), args: &["3"], output: Some("42") },
        Example { input: Some("\"n/a\""), args: &[], output: None },
    ],
    check_constants: Some(check_digits),
    eval: round,
};

pub(super) const MINOR_UNITS: Function = Function {
    name: "minor_units",
    category: Category::Numeric,
    summary:
        "Converts an amount to integer minor units of its ISO 4217 currency: cents for USD, yen for JPY, fils for KWD.",
    doc: r#"
        Multiplies the amount by 10 to the power of its currency's ISO 4217 exponent and rounds half away
        from zero to an integer: two decimal places for USD and EUR, none for JPY and KRW, three for KWD and
        BHD. The currency is usually a path into the event (`minor_units(properties.currency)`); its case
        and surrounding spaces do not matter.

        A missing, null or blank amount yields nothing, whatever the currency. An amount is never converted
        with a guessed currency, since a wrong exponent misstates it by a factor of 100 or more: a missing,
        null or blank currency gives up with the warning `no currency: amount omitted`, an unknown code with
        `unknown currency "ABC": amount omitted`, and a currency without a minor unit (gold, `XAU`) with
        `currency "XAU" has no minor unit: amount omitted`. An amount that is not a number, or one too large
        for a 64-bit integer of minor units, gives up with a warning too. A literal currency is checked when
        the mapping is compiled.
    "#,
    input: NUMERIC,
    params: &[Param {
        name: "currency",
        ty: Ty::STRING,
        optional: false,
        constant: false,
        doc: "The ISO 4217 code of the amount's currency, usually read from the event; case and surrounding \
              spaces do not matter. Without it the amount is omitted with a warning, since a guess would \
              misstate it by a factor of 100 or more.",
    }],
    variadic: false,
    output: Ty::INTEGER,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("129.99"), args: &["\"USD\""], output: Some("12999") },
        Example { input: Some("\"12.50\""), args: &["\"EUR\""], output: Some("1250") },
        Example { input: Some("1500"), args: &["\"JPY\""], output: Some("1500") },
        Example { input: Some("1.234"), args: &["\"KWD\""], output: Some("1234") },
        Example { input: Some("0.125"), args: &["\"usd\""], output: Some("13") },
        Example { input: Some("\"free\""), args: &["\"USD\""], output: None },
        Example { input: Some("10"), args: &["null"], output: None },
        Example { input: None, args: &["\"USD\""], output: None },
    ],
    check_constants: Some(check_currency),
    eval: minor_units,
};

pub(super) const TO_NUMBER: Function = Function {
    name: "to_number",
    category: Category::Numeric,
    summary: "Reads a number from a numeric string such as \"12.50\"; numbers pass through.",
    doc: r#"
        Text is trimmed and read as a decimal number with an optional sign and exponent (`"-3"`, `"+3"`,
        `"2.5E-3"`); numbers pass through, whole ones written as integers (12.0 becomes 12). Use it where a
        target field needs a number and the source sends text; the arithmetic functions read numeric text by
        themselves.

        A missing, null or blank input yields nothing. Anything else that is not a number gives up with a
        warning naming it: `"twelve"`, `"NaN"`, `"inf"`, `"1_000"`, `"12 50"`, `"$12"`, booleans, arrays and
        objects.
    "#,
    input: NUMERIC,
    params: &[],
    variadic: false,
    output: Ty::NUMBER,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\" 12.50 \""), args: &[], output: Some("12.5") },
        Example { input: Some("\"1e3\""), args: &[], output: Some("1000") },
        Example { input: Some("7"), args: &[], output: Some("7") },
        Example { input: Some("\"twelve\""), args: &[], output: None },
        Example { input: Some("\"  \""), args: &[], output: None },
    ],
    check_constants: None,
    eval: to_number,
};

/// The exact decimal a value stands for: `Ok(None)` for a blank string, which analytics sources send for "no
/// amount" far more often than by mistake.
pub(crate) fn decimal(value: &Val<'_>) -> Result<Option<Decimal>, String> {
    match value {
        Val::Number(n) => number_decimal(n).map(Some),
        Val::Str(s) => {
            let text = s.trim();
            if text.is_empty() {
                return Ok(None);
            }
            text_decimal(text)
                .map(Some)
                .ok_or_else(|| format!("expected a number or numeric string, got {}", quoted(text)))
        }
        other => Err(format!("expected a number or numeric string, got {}", other.kind())),
    }
}

fn number_decimal(n: &Number) -> Result<Decimal, String> {
    if let Some(i) = n.as_i64() {
        return Ok(Decimal::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Ok(Decimal::from(u));
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    float_decimal(f).map_err(|_| format!("number out of range: {f:e}"))
}

/// The decimal a float was written as: its shortest round-trip text, the number the sender wrote (the binary
/// value behind it is not). zmij writes the digits `Display` writes, at a fraction of the cost; `Display` still
/// writes what zmij would give an exponent, since `Decimal` reads plain text.
fn float_decimal(f: f64) -> Result<Decimal, rust_decimal::Error> {
    let mut buffer = zmij::Buffer::new();
    let shortest = buffer.format(f);
    if f.is_finite() && !shortest.contains('e') {
        Decimal::from_str(shortest.strip_suffix(".0").unwrap_or(shortest))
    } else {
        Decimal::from_str(&f.to_string())
    }
}

pub(crate) fn text_decimal(text: &str) -> Option<Decimal> {
    // rust_decimal also accepts `_` separators; a stray underscore in an amount is more likely a mistake.
    let plausible = text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    if !plausible {
        return None;
    }
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str(text).ok()
    }
}

/// A decimal as JSON: an integer when it is whole, so an integer-only target accepts it.
pub(crate) fn number_value(d: Decimal) -> Val<'static> {
    let d = d.normalize();
    if d.is_integer() {
        if let Some(i) = d.to_i64() {
            return Val::from(i);
        }
        if let Some(u) = d.to_u64() {
            return Val::from(u);
        }
    }
    Val::from(d.to_string().parse::<f64>().unwrap_or(f64::NAN))
}

/// The input as a decimal, or `Ok(None)` when it is missing, null or blank.
fn input_decimal(input: Option<Val<'_>>) -> Result<Option<Decimal>, String> {
    match present(input) {
        Some(value) => decimal(&value),
        None => Ok(None),
    }
}

/// Argument `index` as a decimal, or `Ok(None)` when it is missing, null or blank.
fn arg_decimal(args: &[Arg<'_>], index: usize, name: &str) -> Result<Option<Decimal>, String> {
    match arg(args, index) {
        Some(value) => decimal(value).map_err(|note| format!("{name}: {note}")),
        None => Ok(None),
    }
}

fn multiply<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(x) = input_decimal(input)? else {
        return Ok(None);
    };
    let Some(factor) = arg_decimal(args, 0, "factor")? else {
        return Ok(None);
    };
    x.checked_mul(factor).map(|d| Some(number_value(d))).ok_or_else(|| "product out of range".to_string())
}

fn divide<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(x) = input_decimal(input)? else {
        return Ok(None);
    };
    let Some(divisor) = arg_decimal(args, 0, "divisor")? else {
        return Ok(None);
    };
    if divisor.is_zero() {
        return Err("division by zero".to_string());
    }
    x.checked_div(divisor).map(|d| Some(number_value(d))).ok_or_else(|| "quotient out of range".to_string())
}

fn round<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(x) = input_decimal(input)? else {
        return Ok(None);
    };
    let digits = match arg(args, 0) {
        None => 0,
        Some(value) => digits(value).ok_or_else(digits_note)?,
    };
    Ok(Some(number_value(x.round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero))))
}

fn digits(value: &Val<'_>) -> Option<u32> {
    let n = value.as_u64().or_else(|| {
        value.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_DIGITS as f64).map(|f| f as u64)
    })?;
    (n <= MAX_DIGITS).then_some(n as u32)
}

fn digits_note() -> String {
    format!("digits must be an integer from 0 to {MAX_DIGITS}")
}

fn minor_units<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(amount) = input_decimal(input)? else {
        return Ok(None);
    };
    let exponent = currency_exponent(arg(args, 0))?;
    let scale = 10i64.checked_pow(exponent).map(Decimal::from).ok_or_else(|| "amount out of range".to_string())?;
    amount
        .checked_mul(scale)
        .and_then(|d| d.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero).to_i64())
        .map(|units| Some(Val::from(units)))
        .ok_or_else(|| "amount out of range".to_string())
}

/// The number of minor-unit digits of the currency a value names, or the note explaining why the amount
/// cannot be converted.
fn currency_exponent(value: Option<&Val<'_>>) -> Result<u32, String> {
    let code = match value {
        None => return Err("no currency: amount omitted".to_string()),
        Some(Val::Str(s)) => upper(Cow::Borrowed(s.trim())),
        Some(other) => return Err(format!("expected a currency code, got {}: amount omitted", other.kind())),
    };
    if code.is_empty() {
        return Err("no currency: amount omitted".to_string());
    }
    currency(&code)
        .ok_or_else(|| format!("unknown currency {}: amount omitted", quoted(&code)))?
        .ok_or_else(|| format!("currency {} has no minor unit: amount omitted", quoted(&code)))
}

/// What `Currency::from_code` says about `code`: `None` when it names no currency, else the currency's number
/// of decimal places, `None` for one without a minor unit (gold). Codes of three capital letters, the form of
/// every ISO 4217 code, are answered from a table of the library's answers for all of them, built on first
/// use: the library's own lookup compares the code with each known one in turn.
pub(crate) fn currency(code: &str) -> Option<Option<u32>> {
    fn ask(code: &str) -> Option<Option<u32>> {
        Currency::from_code(code).map(|c| c.exponent().map(u32::from))
    }
    const NOT_ASKED: u8 = 0;
    const UNKNOWN: u8 = 1;
    const NO_MINOR_UNIT: u8 = 2;
    const ASK: u8 = u8::MAX;
    // Each code's answer, asked of the library the first time the code is seen: a stream uses a handful of codes.
    static TABLE: [AtomicU8; 26 * 26 * 26] = [const { AtomicU8::new(NOT_ASKED) }; 26 * 26 * 26];
    let index = match code.as_bytes() {
        &[a, b, c] if code.bytes().all(|b| b.is_ascii_uppercase()) => {
            [a, b, c].iter().fold(0, |index, letter| index * 26 + usize::from(letter - b'A'))
        }
        _ => return ask(code),
    };
    let known = match TABLE[index].load(Ordering::Relaxed) {
        NOT_ASKED => {
            let answer = match ask(code) {
                None => UNKNOWN,
                Some(None) => NO_MINOR_UNIT,
                Some(Some(places)) => u8::try_from(places).ok().filter(|p| *p < ASK - 3).map_or(ASK, |p| p + 3),
            };
            TABLE[index].store(answer, Ordering::Relaxed);
            answer
        }
        known => known,
    };
    match known {
        UNKNOWN => None,
        NO_MINOR_UNIT => Some(None),
        ASK => ask(code),
        places => Some(Some(u32::from(places - 3))),
    }
}

fn to_number<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    Ok(input_decimal(input)?.map(number_value))
}

/// A literal number argument: a blank one is a mistake when written into a mapping, though a blank value read
/// from an event is merely absent.
fn literal_decimal(args: &[Option<&Value>]) -> Result<Option<Decimal>, (usize, String)> {
    match constant(args, 0) {
        None => Ok(None),
        Some(value) => match decimal(&Val::from_json(value)) {
            Ok(Some(d)) => Ok(Some(d)),
            Ok(None) => Err((0, "expected a number, got a blank string".to_string())),
            Err(note) => Err((0, note)),
        },
    }
}

fn check_number_constant(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    literal_decimal(args).map(|_| ())
}

fn check_divisor(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    match literal_decimal(args)? {
        Some(d) if d.is_zero() => Err((0, "cannot divide by zero".to_string())),
        _ => Ok(()),
    }
}

fn check_digits(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    match constant(args, 0) {
        Some(value) if digits(&Val::from_json(value)).is_none() => Err((0, digits_note())),
        _ => Ok(()),
    }
}

fn check_currency(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    match constant(args, 0) {
        Some(value) => currency_exponent(Some(&Val::from_json(value))).map(|_| ()).map_err(|note| (0, note)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::eval_json;
    use super::*;

    proptest::proptest! {
        /// The fast shortest text gives every float the decimal that its `Display` text gives, or the same refusal:
        /// money written as `129.99`, whole floats, and any bit pattern at all (huge, tiny, negative zero).
        #[test]
        fn a_float_reads_as_the_decimal_its_display_text_is(
            bits in proptest::prelude::any::<u64>(),
            cents in 0u64..100_000_000,
            scale in 0u32..6,
        ) {
            for f in [f64::from_bits(bits), cents as f64 / 10f64.powi(scale as i32), -(cents as f64) / 100.0] {
                let expected = Decimal::from_str(&f.to_string());
                proptest::prop_assert_eq!(float_decimal(f).ok(), expected.ok(), "{}", f);
            }
        }
    }

    fn call(f: &Function, input: Value, args: &[Value]) -> Result<Option<Value>, String> {
        let args: Vec<Option<Value>> = args.iter().cloned().map(Some).collect();
        eval_json(f, Some(input), &args)
    }

    fn weird() -> Vec<Value> {
        vec![
            json!(null),
            json!(true),
            json!([]),
            json!([1, 2]),
            json!({}),
            json!({"a": 1}),
            json!(1e300),
            json!(-1e300),
            json!(5e-324),
            json!(f64::MAX),
            json!(u64::MAX),
            json!(i64::MIN),
            json!("NaN"),
            json!("inf"),
            json!("-"),
            json!("."),
            json!("1e99999999999"),
            json!("1e-99999999999"),
            json!("9e28"),
            json!("1e28"),
            json!("99999999999999999999999999999999"),
            json!("0.00000000000000000000000000000000001"),
            json!("1_000"),
            json!("١٢"),
            json!(""),
            json!("   "),
            json!("e"),
            json!("--1"),
            json!("1.2.3"),
        ]
    }

    #[test]
    fn minor_units_vectors() {
        let cases = [
            (json!(129.99), "USD", 12999),
            (json!("12.50"), "EUR", 1250),
            (json!(1500), "JPY", 1500),
            (json!(1.234), "KWD", 1234),
            (json!(1500.5), "JPY", 1501),
            (json!(0.125), "USD", 13),
            (json!(-0.125), "USD", -13),
            (json!(10), "usd", 1000),
            (json!(19.999), "USD", 2000),
            (json!(1.5), " bhd ", 1500),
            (json!(1000), "KRW", 1000),
            (json!("0.005"), "USD", 1),
        ];
        for (amount, currency, expected) in cases {
            assert_eq!(
                call(&MINOR_UNITS, amount.clone(), &[json!(currency)]),
                Ok(Some(json!(expected))),
                "{amount} {currency}"
            );
        }
    }

    #[test]
    fn minor_units_refuses_without_a_usable_currency() {
        let missing = eval_json(&MINOR_UNITS, Some(json!(10)), &[None]);
        assert_eq!(missing, Err("no currency: amount omitted".to_string()));
        assert_eq!(eval_json(&MINOR_UNITS, Some(json!(10)), &[]), missing);
        assert_eq!(call(&MINOR_UNITS, json!(10), &[json!(null)]), missing);
        assert_eq!(call(&MINOR_UNITS, json!(10), &[json!(" ")]), missing);
        let unknown = call(&MINOR_UNITS, json!(10), &[json!("ABC")]).unwrap_err();
        assert!(unknown.contains("\"ABC\""), "{unknown}");
        let gold = call(&MINOR_UNITS, json!(10), &[json!("XAU")]).unwrap_err();
        assert!(gold.contains("no minor unit"), "{gold}");
        assert!(call(&MINOR_UNITS, json!(10), &[json!(840)]).is_err());
        assert!(call(&MINOR_UNITS, json!(1e20), &[json!("USD")]).is_err());
        assert!(call(&MINOR_UNITS, json!("79228162514264337593543950335"), &[json!("KWD")]).is_err());
        // A missing amount is silent even without a currency: there is nothing to misstate.
        assert_eq!(eval_json(&MINOR_UNITS, None, &[None]), Ok(None));
        assert_eq!(call(&MINOR_UNITS, json!(""), &[json!("USD")]), Ok(None));
    }

    #[test]
    fn currency_table_agrees_with_the_library() {
        let library = |code: &str| Currency::from_code(code).map(|c| c.exponent().map(u32::from));
        let mut codes: Vec<String> = Vec::new();
        for a in 'A'..='Z' {
            for b in 'A'..='Z' {
                for c in 'A'..='Z' {
                    codes.push([a, b, c].iter().collect());
                }
            }
        }
        codes.extend(["usd", "Usd", "US", "USDD", "", "U$D", "ÄUD", "USD "].map(String::from));
        for code in &codes {
            assert_eq!(currency(code), library(code), "{code}");
        }
        assert_eq!(currency("USD"), Some(Some(2)));
        assert_eq!(currency("JPY"), Some(Some(0)));
        assert_eq!(currency("KWD"), Some(Some(3)));
        assert_eq!(currency("XAU"), Some(None));
        assert_eq!(currency("ABC"), None);
    }

    #[test]
    fn amounts_read_as_written() {
        for (number, text) in
            [(json!(129.99), "129.99"), (json!(0.1), "0.1"), (json!(1e-7), "0.0000001"), (json!(-2.5), "-2.5")]
        {
            let Value::Number(n) = number else { unreachable!() };
            assert_eq!(number_decimal(&n), Ok(Decimal::from_str(text).unwrap()), "{text}");
        }
        let Value::Number(huge) = json!(1e300) else { unreachable!() };
        assert!(number_decimal(&huge).is_err());
    }

    #[test]
    fn minor_units_constants() {
        assert!(check_currency(&[Some(&json!("USD"))]).is_ok());
        assert!(check_currency(&[None]).is_ok());
        assert!(check_currency(&[Some(&json!("XAU"))]).is_err());
        assert!(check_currency(&[Some(&json!("dollars"))]).is_err());
    }

    #[test]
    fn multiply_is_exact() {
        assert_eq!(call(&MULTIPLY, json!(129.99), &[json!(100)]), Ok(Some(json!(12999))));
        assert_eq!(call(&MULTIPLY, json!(" 12.50 "), &[json!("2")]), Ok(Some(json!(25))));
        assert_eq!(call(&MULTIPLY, json!(1.1), &[json!(1.1)]), Ok(Some(json!(1.21))));
        assert_eq!(call(&MULTIPLY, json!("1e3"), &[json!(2)]), Ok(Some(json!(2000))));
        assert_eq!(eval_json(&MULTIPLY, Some(json!(2)), &[None]), Ok(None));
        let note = call(&MULTIPLY, json!("abc"), &[json!(2)]).unwrap_err();
        assert_eq!(note, "expected a number or numeric string, got \"abc\"");
        let note = call(&MULTIPLY, json!(2), &[json!("x")]).unwrap_err();
        assert!(note.starts_with("factor: "), "{note}");
        assert!(call(&MULTIPLY, json!("79228162514264337593543950335"), &[json!(10)]).is_err());
        assert!(check_number_constant(&[Some(&json!("x"))]).is_err());
        assert!(check_number_constant(&[Some(&json!(100))]).is_ok());
        assert!(check_number_constant(&[Some(&json!(" "))]).is_err());
        assert!(check_number_constant(&[None]).is_ok());
    }

    #[test]
    fn divide_refuses_zero() {
        assert_eq!(call(&DIVIDE, json!(1), &[json!(0)]), Err("division by zero".to_string()));
        assert_eq!(call(&DIVIDE, json!(1), &[json!(-0.0)]), Err("division by zero".to_string()));
        assert_eq!(call(&DIVIDE, json!(1), &[json!(3)]), Ok(Some(json!(0.3333333333333333))));
        assert_eq!(call(&DIVIDE, json!(-7), &[json!("2")]), Ok(Some(json!(-3.5))));
        assert!(check_divisor(&[Some(&json!(0))]).is_err());
        assert!(check_divisor(&[Some(&json!("0.00"))]).is_err());
        assert!(check_divisor(&[Some(&json!("x"))]).is_err());
        assert!(check_divisor(&[Some(&json!(100))]).is_ok());
        assert!(check_divisor(&[None]).is_ok());
    }

    #[test]
    fn round_halves_away_from_zero() {
        assert_eq!(call(&ROUND, json!(0.5), &[]), Ok(Some(json!(1))));
        assert_eq!(call(&ROUND, json!(-0.5), &[]), Ok(Some(json!(-1))));
        assert_eq!(call(&ROUND, json!(2.675), &[json!(2)]), Ok(Some(json!(2.68))));
        assert_eq!(call(&ROUND, json!(1.23456), &[json!(10)]), Ok(Some(json!(1.23456))));
        assert_eq!(call(&ROUND, json!(1.5), &[json!(0.0)]), Ok(Some(json!(2))));
        assert!(call(&ROUND, json!(1.5), &[json!(11)]).is_err());
        assert!(call(&ROUND, json!(1.5), &[json!(-1)]).is_err());
        assert!(call(&ROUND, json!(1.5), &[json!("2")]).is_err());
        assert!(check_digits(&[Some(&json!(11))]).is_err());
        assert!(check_digits(&[Some(&json!(1.5))]).is_err());
        assert!(check_digits(&[Some(&json!(10))]).is_ok());
        assert!(check_digits(&[]).is_ok());
    }

    #[test]
    fn to_number_reads_numeric_text() {
        assert_eq!(call(&TO_NUMBER, json!("12.50"), &[]), Ok(Some(json!(12.5))));
        assert_eq!(call(&TO_NUMBER, json!("-3"), &[]), Ok(Some(json!(-3))));
        assert_eq!(call(&TO_NUMBER, json!("+3"), &[]), Ok(Some(json!(3))));
        assert_eq!(call(&TO_NUMBER, json!("2.5E-3"), &[]), Ok(Some(json!(0.0025))));
        assert_eq!(call(&TO_NUMBER, json!(12.0), &[]), Ok(Some(json!(12))));
        assert_eq!(call(&TO_NUMBER, json!(u64::MAX), &[]), Ok(Some(json!(u64::MAX))));
        assert_eq!(call(&TO_NUMBER, json!("  "), &[]), Ok(None));
        assert_eq!(eval_json(&TO_NUMBER, None, &[]), Ok(None));
        for bad in ["NaN", "inf", "1_000", "12 50", "$12"] {
            assert!(call(&TO_NUMBER, json!(bad), &[]).is_err(), "{bad}");
        }
        assert_eq!(
            call(&TO_NUMBER, json!([1]), &[]),
            Err("expected a number or numeric string, got an array".to_string())
        );
        let long = call(&TO_NUMBER, json!("x".repeat(1000)), &[]).unwrap_err();
        assert!(long.len() < 120, "{long}");
    }

    #[test]
    fn never_panics() {
        let functions = [&MULTIPLY, &DIVIDE, &ROUND, &MINOR_UNITS, &TO_NUMBER];
        for f in functions {
            for input in weird() {
                for a in weird().into_iter().chain([json!(2), json!("USD"), json!(0)]) {
                    let _ = call(f, input.clone(), std::slice::from_ref(&a));
                    let _ = call(f, input.clone(), &[]);
                    let _ = call(f, a.clone(), std::slice::from_ref(&input));
                }
                let _ = (f.check_constants.unwrap_or(|_| Ok(())))(&[Some(&input)]);
            }
        }
    }
}
