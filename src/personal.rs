//! How personal data (email, phone, names, street address, as `mappings/schema/signal.yaml` declares them) is shown
//! when something must be shown at all: its kind and size, never its content. `engine explain`, `engine test` and
//! the relay's debugger all mask with these, so a value looks the same wherever it is withheld.

use serde_json::Value;

use crate::schema;

/// A personal value as reports show it: `<personal: 16 characters>`, or `<personal>` for a value that is not
/// text. Null stays null: there is nothing to withhold.
pub fn mask(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(masked_text(s)),
        Value::Null => Value::Null,
        _ => Value::String(MASKED.to_string()),
    }
}

/// A personal value that is not text, masked.
pub(crate) const MASKED: &str = "<personal>";

/// Personal text, masked: its length only.
pub(crate) fn masked_text(text: &str) -> String {
    format!("<personal: {} characters>", text.chars().count())
}

/// Masks, wherever it is in `value`, every value under a key that names personal data (`email`, `phone`,
/// `Email_Address`, `first_name` …).
pub fn mask_personal_keys(value: &mut Value) {
    let input = schema::input();
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if input.is_pii_key(key) && !child.is_null() {
                    *child = mask(child);
                } else {
                    mask_personal_keys(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_personal_keys),
        _ => {}
    }
}

/// Whether text found where no key tells looks like an email address or a phone number, e.g. a value a mapping
/// test expects: such a value is masked too.
pub fn looks_personal(text: &str) -> bool {
    let email = text.split_once('@').is_some_and(|(user, domain)| !user.trim().is_empty() && domain.contains('.'));
    let digits = text.chars().filter(char::is_ascii_digit).count();
    let phone = digits >= 7
        && text.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c))
        && (text.starts_with('+') || text.contains([' ', '(']));
    email || phone
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn personal_values_are_masked_wherever_they_are() {
        let mut event = json!({
            "traits": {"email": "jane@example.com", "plan": "pro"},
            "context": {"traits": {"phone": "+44 7700 900123"}},
            "properties": {"items": [{"Email_Address": "x@y.z"}]}
        });
        mask_personal_keys(&mut event);
        let text = event.to_string();
        assert!(!text.contains("jane@example.com") && !text.contains("7700") && !text.contains("x@y.z"), "{text}");
        assert_eq!(event["traits"]["plan"], "pro");
        assert_eq!(event["traits"]["email"], "<personal: 16 characters>");
        assert_eq!(mask(&json!(42)), "<personal>");
        assert!(looks_personal("jane@example.com") && looks_personal("+44 7700 900123"));
        assert!(!looks_personal("ORD-1234") && !looks_personal("2026-11-20"));
    }
}
