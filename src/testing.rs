//! Strategies the crate's property tests share: arbitrary JSON for the readers and writers that must agree with
//! serde_json on every value.

use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value up to four levels deep: objects with keys from `key`, strings from the regex `text`, numbers of
/// every kind serde_json keeps (negative, beyond `i64`, floats).
pub(crate) fn json_value(key: BoxedStrategy<String>, text: &'static str) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text.prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}
