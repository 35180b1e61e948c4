//! Text functions: case and whitespace, joining and rendering, and the identifier normalisation and hashing
//! that the Conversions API's matching keys need (email, E.164 phone, SHA-256).

use std::borrow::Cow;

use rlibphonenumber::{PhoneNumberFormat, Region, PHONE_NUMBER_UTIL};
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

use super::{arg, constant, kind, present, Arg, Category, Example, Function, Outcome, Param, Pii, Ty, Val};

const TEXTUAL: Ty = Ty::STRING.union(Ty::NUMBER);

pub(super) const LOWERCASE: Function = Function {
    name: "lowercase",
    category: Category::Text,
    summary: "Converts text to lower case.",
    doc: r#"
        Uses Unicode case mapping, so accented and non-Latin capitals are lowered too (`"ÉTÉ"` becomes
        `"été"`). An empty string stays empty.

        A missing or null input yields nothing. A number, boolean, array or object gives up with the warning
        `expected a string, got a number` (a compile error when the source is known to hold no text); render
        numbers with `to_string` first.
    "#,
    input: Ty::STRING,
    params: &[],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\"Purchase\""), args: &[], output: Some("\"purchase\"") },
        Example { input: Some("\"ÉTÉ\""), args: &[], output: Some("\"été\"") },
        Example { input: None, args: &[], output: None },
    ],
    check_constants: None,
    eval: lowercase,
};

pub(super) const UPPERCASE: Function = Function {
    name: "uppercase",
    category: Category::Text,
    summary: "Converts text to upper case.",
    doc: r#"
        Uses Unicode case mapping, so one letter may become two (`"straße"` becomes `"STRASSE"`). An empty
        string stays empty. `| uppercase` is how a lower-case currency code such as `"usd"` becomes the
        `"USD"` the API expects.

        A missing or null input yields nothing. A number, boolean, array or object gives up with the warning
        `expected a string, got a number` (a compile error when the source is known to hold no text).
    "#,
    input: Ty::STRING,
    params: &[],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\"usd\""), args: &[], output: Some("\"USD\"") },
        Example { input: Some("\"straße\""), args: &[], output: Some("\"STRASSE\"") },
        Example { input: Some("\"\""), args: &[], output: Some("\"\"") },
        Example { input: Some("null"), args: &[], output: None },
    ],
    check_constants: None,
    eval: uppercase,
};

pub(super) const TRIM: Function = Function {
    name: "trim",
    category: Category::Text,
    summary: "Removes whitespace from both ends of text.",
    doc: r#"
        Removes Unicode whitespace, including tabs, line breaks and non-breaking spaces, from the start and
        the end; whitespace inside the text stays. Whitespace-only text becomes `""`, which is still a
        value: in an optional output field a blank value is left out with a warning, in a required one it
        rejects the event.

        A missing or null input yields nothing. A value that is not a string gives up with the warning
        `expected a string, got …`.
    "#,
    input: Ty::STRING,
    params: &[],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\"  order-123\\n\""), args: &[], output: Some("\"order-123\"") },
        Example { input: Some("\"\\u00a0 a  b \\t\""), args: &[], output: Some("\"a  b\"") },
        Example { input: Some("\" \\n \""), args: &[], output: Some("\"\"") },
        Example { input: None, args: &[], output: None },
    ],
    check_constants: None,
    eval: trim,
};

pub(super) const CONCAT: Function = Function {
    name: "concat",
    category: Category::Text,
    summary: "Joins the input and the arguments into one text, skipping any that are missing or null.",
    doc: r#"
        Joins the input and each part in order, with no separator: strings as they are, numbers as
        `to_string` writes them (`2.5`, and `12` for 12.0), booleans as `true` and `false`. Called as a
        source, its first argument is the input: `concat("ORD-", order_id)` is `"ORD-" | concat(order_id)`.

        Missing and null parts are skipped, so a missing input still gives the other parts joined; only when
        every part is missing or null is the result nothing. An array or object part gives up with the
        warning `cannot join an array` (or `an object`).
    "#,
    input: TEXTUAL,
    params: &[Param {
        name: "parts",
        ty: TEXTUAL,
        optional: true,
        constant: false,
        doc: "Texts or numbers appended in order, without a separator.",
    }],
    variadic: true,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\"order-\""), args: &["123"], output: Some("\"order-123\"") },
        Example { input: Some("\"a\""), args: &["\"-\"", "2.5", "null", "\"b\""], output: Some("\"a-2.5b\"") },
        Example { input: None, args: &["\"x\""], output: Some("\"x\"") },
        Example { input: None, args: &["null"], output: None },
    ],
    check_constants: None,
    eval: concat,
};

pub(super) const TO_STRING: Function = Function {
    name: "to_string",
    category: Category::Text,
    summary: "Renders a number or boolean as text; integers have no \".0\".",
    doc: r#"
        Numbers are written as an analyst would write them: no `.0` on whole numbers, no exponent (`1e21`
        becomes `"1000000000000000000000"`), the shortest digits that read back as the same number, and `0`
        for negative zero. Booleans become `"true"` and `"false"`; strings pass through unchanged.

        A missing or null input yields nothing. An array or object gives up with the warning `expected a
        string, number or boolean, got an array` (or `an object`).
    "#,
    input: Ty::SCALAR,
    params: &[],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("42"), args: &[], output: Some("\"42\"") },
        Example { input: Some("42.0"), args: &[], output: Some("\"42\"") },
        Example { input: Some("129.99"), args: &[], output: Some("\"129.99\"") },
        Example { input: Some("true"), args: &[], output: Some("\"true\"") },
        Example { input: Some("1e21"), args: &[], output: Some("\"1000000000000000000000\"") },
        Example { input: Some("\"as is\""), args: &[], output: Some("\"as is\"") },
        Example { input: Some("null"), args: &[], output: None },
    ],
    check_constants: None,
    eval: to_string,
};

pub(super) const SHA256: Function = Function {
    name: "sha256",
    category: Category::Text,
    summary:
        "Hashes text with SHA-256 as lowercase hex; a value that already is a SHA-256 hex digest passes unchanged.",
    doc: r#"
        Hashes the UTF-8 bytes of the text exactly as they are. It does not trim or lower-case, so normalise
        first (`| normalize_email | sha256`, `| e164("US") | sha256`), or the same person hashes to
        different values. A number is hashed as its text: `123` and `"123"` give the same digest. Text that
        already is a SHA-256 digest (64 hex digits, in either case) is passed on lower-cased instead of
        being hashed again, so sources that hash identifiers themselves still match.

        A missing, null, empty or whitespace-only input yields nothing: a hash of blank text would be one
        identifier shared by every visitor who has none. A boolean, array or object gives up with a warning.
    "#,
    input: TEXTUAL,
    params: &[],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Hashes,
    source_input: None,
    examples: &[
        Example {
            input: Some("\"user@example.com\""),
            args: &[],
            output: Some("\"b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514\""),
        },
        Example {
            input: Some("\"B4C9A289323B21A01C3E940F150EB9B8C542587F1ABFD8F0E1CC1FFC5E475514\""),
            args: &[],
            output: Some("\"b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514\""),
        },
        Example {
            input: Some("123"),
            args: &[],
            output: Some("\"a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3\""),
        },
        Example { input: Some("\"  \""), args: &[], output: None },
    ],
    check_constants: None,
    eval: sha256,
};

pub(super) const NORMALIZE_EMAIL: Function = Function {
    name: "normalize_email",
    category: Category::Text,
    summary: "Trims and lower-cases an email address for matching; an already hashed value passes unchanged.",
    doc: r#"
        Removes whitespace and invisible characters (zero-width spaces, byte-order marks) from both ends of
        the address and lower-cases all of it, so `"  User@Example.COM\t"` and `"user@example.com"` hash
        alike. It changes nothing else: dots and `+tags` in the local part stay. The result must have text
        on both sides of an `@`; otherwise it gives up with the warning `not an email address (no @)` or
        `not an email address (nothing before or after the @)`. The warnings never quote the address. A
        value that already is a SHA-256 digest (64 hex digits) passes through lower-cased.

        A missing, null or blank input yields nothing. A value that is not a string gives up with a warning.
    "#,
    input: Ty::STRING,
    params: &[],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\"  User@Example.COM\\t\""), args: &[], output: Some("\"user@example.com\"") },
        Example {
            input: Some("\"b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514\""),
            args: &[],
            output: Some("\"b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514\""),
        },
        Example { input: Some("\"   \""), args: &[], output: None },
        Example { input: Some("\"not an email\""), args: &[], output: None },
    ],
    check_constants: None,
    eval: normalize_email,
};

pub(super) const E164: Function = Function {
    name: "e164",
    category: Category::Text,
    summary: "Normalises a phone number to E.164 (+447700900123); an already hashed value passes unchanged.",
    doc: r#"
        Parses the number with libphonenumber's metadata (the `rlibphonenumber` crate) and writes it as `+`, the
        country code and the national number, without spaces, dashes, dots or brackets. A number written
        with its country code (`+44 7700 900123`, or after the default region's international prefix, `0044
        7700 900123` in GB) keeps that country; any other is read as a national number of `default_region`.
        A JSON number is read as its digits. The number must have a length its country's numbers have; it
        is not checked against the numbering plan, so reserved numbers such as 555-0100 pass.

        A missing, null or blank input yields nothing. Text that is not a phone number gives up with the
        warning `not a phone number`, which never quotes it. A value that already is a SHA-256 digest (64
        hex digits) passes through lower-cased.
    "#,
    input: TEXTUAL,
    params: &[Param {
        name: "default_region",
        ty: Ty::STRING,
        optional: false,
        constant: true,
        doc: "The two-letter region (\"US\", \"GB\") assumed for numbers written without a country code.",
    }],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("\"+44 7700 900123\""), args: &["\"US\""], output: Some("\"+447700900123\"") },
        Example { input: Some("\"(415) 555-0132\""), args: &["\"US\""], output: Some("\"+14155550132\"") },
        Example { input: Some("\"07700 900123\""), args: &["\"GB\""], output: Some("\"+447700900123\"") },
        Example { input: Some("\"call me\""), args: &["\"US\""], output: None },
        Example { input: Some("\"\""), args: &["\"US\""], output: None },
        Example { input: Some("14155550132"), args: &["\"US\""], output: Some("\"+14155550132\"") },
    ],
    check_constants: Some(check_region),
    eval: e164,
};

/// The input as text, or the note for a present non-text input.
fn text_input(input: Option<Val<'_>>) -> Result<Option<Cow<'_, str>>, String> {
    match present(input) {
        None => Ok(None),
        Some(Val::Str(s)) => Ok(Some(s)),
        Some(other) => Err(format!("expected a string, got {}", other.kind())),
    }
}

/// A part of `text` (`part` returns a subslice of its argument), borrowed when `text` is.
fn sub<'a>(text: Cow<'a, str>, part: impl FnOnce(&str) -> &str) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(part(text)),
        Cow::Owned(text) => {
            let kept = part(&text);
            if kept.len() == text.len() {
                Cow::Owned(text)
            } else {
                Cow::Owned(kept.to_string())
            }
        }
    }
}

/// `str::to_lowercase`, keeping text that has nothing to lower (ASCII without capitals) as it is.
fn lower(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        text
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

/// `str::to_uppercase`, keeping text that has nothing to raise (ASCII without small letters) as it is.
pub(crate) fn upper(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.bytes().all(|b| b.is_ascii() && !b.is_ascii_lowercase()) {
        text
    } else {
        Cow::Owned(text.to_uppercase())
    }
}

/// A number as an analyst would write it: no ".0" on whole numbers, no exponent, the shortest digits that
/// read back as the same number.
pub(crate) fn render_number(n: &Number) -> String {
    match n.as_f64() {
        Some(f) if !n.is_i64() && !n.is_u64() => {
            if f == 0.0 {
                // Avoids "-0", which no source means.
                "0".to_string()
            } else {
                f.to_string()
            }
        }
        _ => n.to_string(),
    }
}

/// A scalar as text; `None` for arrays and objects, which have no single text form.
pub(crate) fn render<'a>(value: &Val<'a>) -> Option<Cow<'a, str>> {
    match value {
        Val::Str(s) => Some(s.clone()),
        Val::Number(n) => Some(Cow::Owned(render_number(n))),
        Val::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Val::Null | Val::Array(_) | Val::Object(_) => None,
    }
}

/// Whether text already is a SHA-256 hex digest, as when a source hashes identifiers itself: hashing it again
/// would break matching.
pub(crate) fn is_hashed(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn lowercase<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    Ok(text_input(input)?.map(|s| Val::Str(lower(s))))
}

fn uppercase<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    Ok(text_input(input)?.map(|s| Val::Str(upper(s))))
}

fn trim<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    Ok(text_input(input)?.map(|s| Val::Str(sub(s, str::trim))))
}

fn concat<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let input = present(input);
    let parts = input.iter().chain((0..args.len()).filter_map(|i| arg(args, i)));
    let mut joined: Option<String> = None;
    for part in parts {
        let text = render(part).ok_or_else(|| format!("cannot join {}", part.kind()))?;
        joined.get_or_insert_with(String::new).push_str(&text);
    }
    Ok(joined.map(Val::from))
}

fn to_string<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    match present(input) {
        None => Ok(None),
        Some(Val::Str(s)) => Ok(Some(Val::Str(s))),
        Some(value) => render(&value)
            .map(|s| Some(Val::Str(s)))
            .ok_or_else(|| format!("expected a string, number or boolean, got {}", value.kind())),
    }
}

/// The text of a string or number input, or the note for any other present input.
fn textual(input: Option<Val<'_>>) -> Result<Option<Cow<'_, str>>, String> {
    match present(input) {
        None => Ok(None),
        Some(Val::Str(s)) => Ok(Some(s)),
        Some(Val::Number(n)) => Ok(Some(Cow::Owned(render_number(&n)))),
        Some(other) => Err(format!("expected a string or number, got {}", other.kind())),
    }
}

fn sha256<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(text) = textual(input)? else {
        return Ok(None);
    };
    // A hash of blank text would be a junk identifier shared by every visitor without one.
    if text.trim().is_empty() {
        return Ok(None);
    }
    if is_hashed(&text) {
        return Ok(Some(Val::Str(lower(text))));
    }
    Ok(Some(Val::from(hex(&Sha256::digest(text.as_bytes())))))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        digits.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]);
    }
    String::from_utf8(digits).expect("hex digits are ASCII")
}

/// Characters pasted around identifiers that are not Unicode whitespace yet never belong to one.
fn is_padding(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

fn normalize_email<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(text) = text_input(input)? else {
        return Ok(None);
    };
    let email = lower(sub(text, |t| t.trim_matches(is_padding)));
    if email.is_empty() {
        return Ok(None);
    }
    if is_hashed(&email) {
        return Ok(Some(Val::Str(email)));
    }
    // The notes never quote the address: it is personal data.
    match email.split_once('@') {
        None => Err("not an email address (no @)".to_string()),
        Some((local, domain)) if local.is_empty() || domain.is_empty() => {
            Err("not an email address (nothing before or after the @)".to_string())
        }
        Some(_) => Ok(Some(Val::Str(email))),
    }
}

/// The region a code names, if the phone metadata knows it: a region without metadata would parse nothing.
/// Checked against [`REGIONS_WITH_METADATA`] rather than the metadata itself, so that compiling a mapping does not
/// load the metadata: only running `e164` does.
fn region(code: &str) -> Option<Region> {
    let code = code.trim().to_ascii_uppercase();
    REGIONS_WITH_METADATA.binary_search(&code.as_str()).ok()?;
    code.parse().ok()
}

/// The regions the phone metadata covers, sorted (a test keeps this in step with the crate).
const REGIONS_WITH_METADATA: &[&str] = &[
    "AC", "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB", "BD",
    "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BW", "BY", "BZ", "CA", "CC",
    "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ",
    "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB",
    "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GT", "GU", "GW", "GY", "HK", "HN", "HR",
    "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH",
    "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY",
    "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV",
    "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE",
    "PF", "PG", "PH", "PK", "PL", "PM", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", "SA", "SB",
    "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ",
    "TA", "TC", "TD", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "US",
    "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

fn e164<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(text) = textual(input)? else {
        return Ok(None);
    };
    let text = text.trim_matches(is_padding);
    if text.is_empty() {
        return Ok(None);
    }
    if is_hashed(text) {
        return Ok(Some(Val::from(text.to_ascii_lowercase())));
    }
    let region = match arg(args, 0) {
        None => None,
        Some(Val::Str(code)) => Some(region(code).ok_or_else(|| unknown_region(code))?),
        Some(other) => return Err(format!("expected a region code, got {}", other.kind())),
    };
    // A number written with its country code needs no region: only numbers without `+` use it.
    let region = if text.starts_with('+') { None } else { region };
    // The note never quotes the number: it is personal data.
    let normalised = E164_MEMO.with(|memo| memo.borrow_mut().normalised(region, text));
    Ok(Some(Val::from(normalised.ok_or_else(|| "not a phone number".to_string())?)))
}

/// How many numbers [`E164_MEMO`] has room for per thread.
const E164_MEMO_SLOTS: usize = 64 * 1024;

thread_local! {
    /// Recent numbers and their E.164 form. Parsing a number costs regex matches (microseconds), while a visitor's
    /// number comes back on every identify and with every event that carries its traits. Kept in memory only,
    /// bounded, per thread.
    static E164_MEMO: std::cell::RefCell<E164Memo> = std::cell::RefCell::new(E164Memo::default());
}

/// A direct-mapped cache: each number has one slot, chosen by its hash, and takes it over from whatever number was
/// there. A look-up reads one slot and the number's text; an LRU list would also read and relink two neighbours
/// per hit, cache misses that cost more than the rare number pushed out early.
#[derive(Default)]
struct E164Memo {
    hasher: hashbrown::DefaultHashBuilder,
    /// Filled on first use.
    slots: Vec<Option<MemoEntry>>,
}

/// A memo slot holds the number as written and its E.164 form in itself, one cache line: a look-up reads that line
/// only, where text kept elsewhere was another cache miss on every event.
#[repr(align(64))]
struct MemoEntry {
    /// The number as written, its first `text_len` bytes; a number longer than these is parsed every time.
    text: [u8; MEMO_TEXT],
    text_len: u8,
    /// `None` for a number written with its country code.
    region: Option<Region>,
    /// The E.164 form, its first `form_len` bytes (`+` and at most 15 digits, which E.164 allows); none: not a
    /// phone number.
    form: [u8; 16],
    form_len: u8,
}

/// The longest number, as written, that [`E164_MEMO`] keeps.
const MEMO_TEXT: usize = 32;

const _: () = assert!(std::mem::size_of::<Option<MemoEntry>>() == 64);

impl E164Memo {
    /// The E.164 form of `text`, parsed unless it was recently.
    fn normalised(&mut self, region: Option<Region>, text: &str) -> Option<String> {
        use std::hash::BuildHasher;
        if self.slots.is_empty() {
            self.slots.resize_with(E164_MEMO_SLOTS, || None);
        }
        if text.len() > MEMO_TEXT {
            return parse_e164(region, text);
        }
        let slot = &mut self.slots[self.hasher.hash_one(text) as usize % E164_MEMO_SLOTS];
        match slot {
            Some(entry) if entry.region == region && entry.text[..usize::from(entry.text_len)] == *text.as_bytes() => {
                // Only text from `parse_e164` is kept, so it is UTF-8.
                let form = std::str::from_utf8(&entry.form[..usize::from(entry.form_len)]).ok();
                form.filter(|form| !form.is_empty()).map(str::to_string)
            }
            _ => {
                let normalised = parse_e164(region, text);
                let form = normalised.as_deref().unwrap_or_default().as_bytes();
                if form.len() <= 16 {
                    let mut entry = MemoEntry {
                        text: [0; MEMO_TEXT],
                        text_len: text.len() as u8,
                        region,
                        form: [0; 16],
                        form_len: form.len() as u8,
                    };
                    entry.text[..text.len()].copy_from_slice(text.as_bytes());
                    entry.form[..form.len()].copy_from_slice(form);
                    *slot = Some(entry);
                }
                normalised
            }
        }
    }
}

fn parse_e164(region: Option<Region>, text: &str) -> Option<String> {
    // Event data is untrusted and phone libraries have panicked on malformed input before; a phone number is never
    // worth taking the pipeline down.
    std::panic::catch_unwind(|| {
        let parsed = PHONE_NUMBER_UTIL.parse(text, region).ok()?;
        // A length no number of its country has (`12`, a local number without its area code) would hash to an
        // identifier that matches nobody.
        let possible = PHONE_NUMBER_UTIL.is_possible_number_with_reason(&parsed);
        if possible != Ok(rlibphonenumber::NumberLengthType::IsPossible) {
            return None;
        }
        Some(PHONE_NUMBER_UTIL.format(&parsed, PhoneNumberFormat::E164).into_owned())
    })
    .ok()
    .flatten()
}

fn unknown_region(code: &str) -> String {
    format!("unknown region {}: expected a two-letter code such as \"US\"", super::quoted(code))
}

fn check_region(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    match constant(args, 0) {
        None => Ok(()),
        Some(Value::String(code)) => region(code).map(|_| ()).ok_or_else(|| (0, unknown_region(code))),
        Some(other) => Err((0, format!("expected a region code, got {}", kind(other)))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::eval_json;
    use super::*;

    fn call(f: &Function, input: Value, args: &[Value]) -> Result<Option<Value>, String> {
        let args: Vec<Option<Value>> = args.iter().cloned().map(Some).collect();
        eval_json(f, Some(input), &args)
    }

    fn text(f: &Function, input: Value, args: &[Value]) -> String {
        match call(f, input.clone(), args) {
            Ok(Some(Value::String(s))) => s,
            other => panic!("{}({input}, {args:?}) gave {other:?}", f.name),
        }
    }

    #[test]
    fn sha256_vectors() {
        let digest = "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514";
        assert_eq!(text(&SHA256, json!("user@example.com"), &[]), digest);
        assert_eq!(text(&SHA256, json!(digest.to_uppercase()), &[]), digest);
        assert_eq!(
            text(&SHA256, json!("abc"), &[]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(text(&SHA256, json!(123), &[]), text(&SHA256, json!("123"), &[]));
        assert_eq!(text(&SHA256, json!(1.0), &[]), text(&SHA256, json!("1"), &[]));
        // 63 hex characters are not a digest, so they are hashed.
        assert_ne!(text(&SHA256, json!(&digest[1..]), &[]), &digest[1..]);
        assert_eq!(call(&SHA256, json!(""), &[]), Ok(None));
        assert_eq!(eval_json(&SHA256, None, &[]), Ok(None));
        assert!(call(&SHA256, json!(true), &[]).is_err());
        assert!(call(&SHA256, json!({"a": 1}), &[]).is_err());
    }

    #[test]
    fn email_normalisation() {
        assert_eq!(text(&NORMALIZE_EMAIL, json!("\u{feff}\n User@Example.com \u{3000}\r\n"), &[]), "user@example.com");
        assert_eq!(call(&NORMALIZE_EMAIL, json!(" \t\n"), &[]), Ok(None));
        let note = call(&NORMALIZE_EMAIL, json!("jane.doe.example.com"), &[]).unwrap_err();
        assert_eq!(note, "not an email address (no @)");
        assert!(!note.contains("jane"));
        assert!(call(&NORMALIZE_EMAIL, json!("@example.com"), &[]).is_err());
        assert!(call(&NORMALIZE_EMAIL, json!("jane@"), &[]).is_err());
        assert_eq!(call(&NORMALIZE_EMAIL, json!(42), &[]), Err("expected a string, got a number".to_string()));
        let hashed = "B4C9A289323B21A01C3E940F150EB9B8C542587F1ABFD8F0E1CC1FFC5E475514";
        assert_eq!(text(&NORMALIZE_EMAIL, json!(hashed), &[]), hashed.to_lowercase());
    }

    #[test]
    fn remembered_numbers_give_what_a_fresh_parse_gives() {
        let cases = [("07700 900123", "GB"), ("(415) 555-0132", "US"), ("+44 7700 900123", "US"), ("12", "GB")];
        for (raw, region_code) in cases {
            let fresh = parse_e164(if raw.starts_with('+') { None } else { region(region_code) }, raw);
            for _ in 0..3 {
                let memo = call(&E164, json!(raw), &[json!(region_code)]).ok().flatten();
                assert_eq!(memo.as_ref().and_then(Value::as_str), fresh.as_deref(), "{raw} {region_code}");
            }
        }
        // The same text under another region is parsed again, not answered from memory.
        assert_eq!(text(&E164, json!("0612345678"), &[json!("FR")]), "+33612345678");
        assert_eq!(text(&E164, json!("0612345678"), &[json!("DE")]), "+49612345678");
        assert_eq!(text(&E164, json!("0612345678"), &[json!("FR")]), "+33612345678");
    }

    #[test]
    fn more_numbers_than_the_memo_has_room_for_are_each_answered_as_a_fresh_parse_would() {
        let mut memo = E164Memo::default();
        let us = region("US");
        let number = |n: usize| format!("(415) 555-{:04}", n % 10_000) + &" ".repeat(n / 10_000);
        for n in 0..E164_MEMO_SLOTS + 500 {
            let text = number(n);
            assert_eq!(memo.normalised(us, &text), parse_e164(us, &text), "{text}");
        }
        // Numbers pushed out of their slot by later ones, and numbers still held, are answered alike.
        for n in (0..E164_MEMO_SLOTS + 500).step_by(97) {
            let text = number(n);
            assert_eq!(memo.normalised(us, &text), parse_e164(us, &text), "{text}");
        }
        // Text too long for a slot, text that is no number, and one text read in two regions: asked twice each.
        let long = format!("(415) 555-0132{}", " ".repeat(MEMO_TEXT));
        let cases = [(us, long.as_str()), (us, "12"), (us, "0612345678"), (region("FR"), "0612345678")];
        for (region, text) in cases.into_iter().chain(cases) {
            assert_eq!(memo.normalised(region, text), parse_e164(region, text), "{text} in {region:?}");
        }
        assert_eq!(memo.normalised(us, &long).as_deref(), Some("+14155550132"));
        assert_eq!(memo.normalised(region("FR"), "0612345678").as_deref(), Some("+33612345678"));
    }

    #[test]
    fn the_region_table_is_the_metadatas() {
        assert!(REGIONS_WITH_METADATA.windows(2).all(|pair| pair[0] < pair[1]), "sorted, for binary search");
        let supported: Vec<Region> = PHONE_NUMBER_UTIL.get_supported_regions().collect();
        for a in 'A'..='Z' {
            for b in 'A'..='Z' {
                let code = format!("{a}{b}");
                let known = code.parse::<Region>().is_ok_and(|region| supported.contains(&region));
                assert_eq!(region(&code).is_some(), known, "{code}");
            }
        }
    }

    #[test]
    fn e164_vectors() {
        let international = [
            ("+44 7700 900123", "+447700900123"),
            ("+1 (415) 555-0132", "+14155550132"),
            ("+1-415-555-0132", "+14155550132"),
            ("+1.415.555.0132", "+14155550132"),
            ("+49 30 1234567", "+49301234567"),
            ("+33 6-12-34-56-78", "+33612345678"),
            ("+81 (3) 1234-5678", "+81312345678"),
        ];
        for (raw, expected) in international {
            for region in ["US", "GB", "de"] {
                assert_eq!(text(&E164, json!(raw), &[json!(region)]), expected, "{raw} {region}");
            }
        }
        assert_eq!(text(&E164, json!("(415) 555-0132"), &[json!("US")]), "+14155550132");
        assert_eq!(text(&E164, json!("07700 900123"), &[json!("GB")]), "+447700900123");
        assert_eq!(text(&E164, json!(" 0044 7700 900123 "), &[json!("GB")]), "+447700900123");
        assert_eq!(text(&E164, json!(14155550132u64), &[json!("US")]), "+14155550132");
        assert_eq!(text(&E164, json!("+14155550132"), &[]), "+14155550132");
        // Country codes whose numbers start with the default region's national prefix (libphonenumber's answers).
        let other_countries = [
            ("+86 138 0013 8000", "+8613800138000"),
            ("+86 10 1234 5678", "+861012345678"),
            ("+55 11 91234-5678", "+5511912345678"),
            ("+1 123 456 7890", "+11234567890"),
        ];
        for (raw, expected) in other_countries {
            for region in ["US", "GB", "BR", "CN"] {
                assert_eq!(text(&E164, json!(raw), &[json!(region)]), expected, "{raw} {region}");
            }
        }
        assert_eq!(text(&E164, json!("0086 138 0013 8000"), &[json!("GB")]), "+8613800138000");
    }

    #[test]
    fn e164_keeps_parseable_but_unassigned_numbers() {
        // 555-0100 numbers are reserved for fiction, so they are not valid, yet they are still numbers.
        assert_eq!(text(&E164, json!("+1 202 555 0100"), &[json!("US")]), "+12025550100");
    }

    #[test]
    fn e164_refusals_do_not_quote_the_number() {
        for raw in ["call me", "12", "+", "++--", "tel:", "#:2 22#:", "  2 22#:"] {
            match call(&E164, json!(raw), &[json!("US")]) {
                Err(note) => assert_eq!(note, "not a phone number", "{raw}"),
                other => panic!("{raw} gave {other:?}"),
            }
        }
        assert_eq!(call(&E164, json!(""), &[json!("US")]), Ok(None));
        assert_eq!(call(&E164, json!("\u{200b} "), &[json!("US")]), Ok(None));
        assert!(call(&E164, json!(true), &[json!("US")]).is_err());
        assert!(call(&E164, json!("+14155550132"), &[json!("ZZ")]).is_err());
        let hashed = "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514";
        assert_eq!(text(&E164, json!(hashed), &[json!("US")]), hashed);
    }

    #[test]
    fn e164_regions() {
        assert!(check_region(&[Some(&json!("US"))]).is_ok());
        assert!(check_region(&[Some(&json!("gb"))]).is_ok());
        assert!(check_region(&[Some(&json!("USA"))]).is_err());
        assert!(check_region(&[Some(&json!("ZZ"))]).is_err());
        assert!(check_region(&[Some(&json!(1))]).is_err());
        assert!(check_region(&[None]).is_ok());
    }

    #[test]
    fn e164_reads_numbers_as_libphonenumber_does() {
        // Google's libphonenumber drops a national prefix written after the country code, and reads digits of
        // other scripts and full-width forms.
        assert_eq!(text(&E164, json!("+44 (0) 7700 900123"), &[json!("US")]), "+447700900123");
        assert_eq!(text(&E164, json!("＋４４ ７７００ ９００１２３"), &[json!("US")]), "+447700900123");
        assert_eq!(text(&E164, json!("(४१५) ५५५-०१३२"), &[json!("US")]), "+14155550132");
        assert_eq!(text(&E164, json!("+1-415-555-0132 ext. 12"), &[json!("US")]), "+14155550132");
        assert_eq!(text(&E164, json!("1-800-FLOWERS"), &[json!("US")]), "+18003569377");
    }

    #[test]
    fn e164_never_panics() {
        let mut inputs: Vec<String> = vec![
            "0".into(),
            "+0".into(),
            "+999 1234567".into(),
            "+1".into(),
            "+80012345678".into(),
            "+882 1234 5678".into(),
            "+7 (999) 123-45-67 ext. 12".into(),
            "tel:+1-415-555-0132;ext=12".into(),
            "1-800-FLOWERS".into(),
            "０３－１２３４－５６７８".into(),
            "٠١٢٣٤٥٦٧٨٩".into(),
            "+".repeat(100),
            "9".repeat(1000),
            "(((((".into(),
            "x".into(),
            "\u{0}".into(),
        ];
        for d in 0..10 {
            inputs.push(format!("+{d}{d}{d} {d}"));
            inputs.push(format!("{d}{d}#:{d}"));
            inputs.push(format!("00{d}1234567890"));
        }
        for raw in &inputs {
            for region in ["US", "GB", "CH", "AC", "001"] {
                let _ = call(&E164, json!(raw), &[json!(region)]);
            }
        }
    }

    #[test]
    fn rendering() {
        assert_eq!(text(&TO_STRING, json!(12.0), &[]), "12");
        assert_eq!(text(&TO_STRING, json!(-0.0), &[]), "0");
        assert_eq!(text(&TO_STRING, json!(0.1), &[]), "0.1");
        assert_eq!(text(&TO_STRING, json!(i64::MIN), &[]), i64::MIN.to_string());
        assert_eq!(text(&TO_STRING, json!(u64::MAX), &[]), u64::MAX.to_string());
        assert_eq!(text(&TO_STRING, json!(1e21), &[]), format!("1{}", "0".repeat(21)));
        assert_eq!(text(&TO_STRING, json!(false), &[]), "false");
        assert!(call(&TO_STRING, json!([]), &[]).is_err());
        assert_eq!(call(&TO_STRING, json!(null), &[]), Ok(None));
    }

    #[test]
    fn case_and_trim() {
        assert_eq!(text(&LOWERCASE, json!("ÀB"), &[]), "àb");
        assert_eq!(text(&UPPERCASE, json!("straße"), &[]), "STRASSE");
        assert_eq!(text(&TRIM, json!("\u{a0} a b \t"), &[]), "a b");
        for f in [&LOWERCASE, &UPPERCASE, &TRIM] {
            assert_eq!(call(f, json!(1), &[]), Err("expected a string, got a number".to_string()));
            assert!(call(f, json!([]), &[]).is_err());
            assert_eq!(eval_json(f, None, &[]), Ok(None));
        }
    }

    #[test]
    fn concat_skips_missing_parts() {
        let args = [None, Some(json!("b")), Some(json!(null)), Some(json!(3))];
        assert_eq!(eval_json(&CONCAT, Some(json!("a")), &args), Ok(Some(json!("ab3"))));
        assert_eq!(eval_json(&CONCAT, None, &[None]), Ok(None));
        assert_eq!(eval_json(&CONCAT, None, &[]), Ok(None));
        assert_eq!(call(&CONCAT, json!(""), &[]), Ok(Some(json!(""))));
        assert_eq!(call(&CONCAT, json!(1), &[json!(true)]), Ok(Some(json!("1true"))));
        assert_eq!(call(&CONCAT, json!("a"), &[json!([1])]), Err("cannot join an array".to_string()));
    }

    #[test]
    fn weird_inputs_never_panic() {
        let weird = [
            json!(null),
            json!(true),
            json!([]),
            json!({"a": [1]}),
            json!(1e300),
            json!(-5e-324),
            json!(u64::MAX),
            json!("NaN"),
            json!(""),
            json!("\u{0}\u{10FFFF}"),
        ];
        for f in [&LOWERCASE, &UPPERCASE, &TRIM, &CONCAT, &TO_STRING, &SHA256, &NORMALIZE_EMAIL, &E164] {
            for input in &weird {
                for a in &weird {
                    let _ = call(f, input.clone(), std::slice::from_ref(a));
                }
                let _ = call(f, input.clone(), &[]);
            }
        }
    }
}
