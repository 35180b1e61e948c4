//! YAML, read the one way everywhere (relay configuration, mapping test files, parameters, the schemas):
//! serde-saphyr with YAML 1.2's core schema, so `country: NO` stays the string Norway and `y` stays a letter.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A YAML document that could not be read as the type asked for, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based, when the reader knows where the problem is.
    pub line: Option<u64>,
    pub column: Option<u64>,
    /// What is wrong, without the location (callers print it as `file:line:column`).
    pub message: String,
}

impl YamlError {
    /// `name:line:column: message`, or `name: message` when the place is unknown.
    pub fn in_file(&self, name: &str) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => format!("{name}:{line}:{column}: {}", self.message),
            _ => format!("{name}: {}", self.message),
        }
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for YamlError {}

/// Reads `text` as a `T`. Booleans are only `true`/`false`, numbers with leading zeros or underscores stay text
/// (`"007"` is a postal code, not seven), a repeated key is an error, and merge keys (`<<: *template`) apply.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|error| {
        let location = error.location();
        let mut message = error.to_string();
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        YamlError { line: location.map(|l| l.line()), column: location.map(|l| l.column()), message }
    })
}

/// A YAML mapping's entries in the order they are written (serde_json's map would sort them, and a schema's
/// field order is the order `check` and the docs list them in). A repeated key is refused by the reader.
#[derive(Debug, Clone, PartialEq)]
pub struct Entries<T>(pub Vec<(String, T)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntriesVisitor<T> {
            type Value = Entries<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_any(EntriesVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn plain_scalars_follow_the_core_schema_not_yaml_1_1() {
        let value: Value =
            from_str("country: NO\nanswer: y\nswitch: on\nzip: 007\ncount: 1_000\nflag: true\nn: 12\nempty: ~\n")
                .unwrap();
        assert_eq!(
            value,
            json!({"country": "NO", "answer": "y", "switch": "on", "zip": "007", "count": "1_000",
                   "flag": true, "n": 12, "empty": null})
        );
    }

    #[test]
    fn merge_keys_apply_and_explicit_entries_win() {
        let value: Value =
            from_str("base: &base {type: track, event: A, properties: {a: 1}}\nuse:\n  <<: *base\n  event: B\n")
                .unwrap();
        assert_eq!(value["use"], json!({"type": "track", "event": "B", "properties": {"a": 1}}));
    }

    #[test]
    fn errors_say_where_without_repeating_it_in_the_message() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Strict {
            name: String,
        }
        let error = from_str::<Strict>("name: x\nnmae: y\n").unwrap_err();
        assert_eq!((error.line, error.column), (Some(2), Some(1)));
        assert!(error.message.contains("unknown field `nmae`"), "{}", error.message);
        assert!(!error.message.contains("line 2"), "{}", error.message);
        assert!(error.in_file("relay.yaml").starts_with("relay.yaml:2:1: unknown field `nmae`"));
        let repeated = from_str::<Value>("a: 1\na: 2\n").unwrap_err();
        assert_eq!(repeated.line, Some(2), "{repeated}");
        assert!(from_str::<Value>("a: [1, 2\n").is_err());
    }

    #[test]
    fn an_alias_bomb_is_refused_rather_than_expanded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let previous = format!("*a{}", level - 1);
            text.push_str(&format!("a{level}: &a{level} [{}]\n", vec![previous; 10].join(", ")));
        }
        let error = from_str::<Value>(&text).expect_err("10^12 strings must not be built");
        assert!(error.line.is_some(), "{error}");
    }

    #[test]
    fn entries_keep_the_written_order() {
        let entries: Entries<u32> = from_str("zeta: 1\nalpha: 2\nmid: 3\n").unwrap();
        let names: Vec<&str> = entries.0.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "mid"]);
        let empty: Entries<u32> = from_str("~").unwrap();
        assert!(empty.0.is_empty());
    }
}
