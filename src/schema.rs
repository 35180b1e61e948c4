//! The two schemas a mapping is checked against, loaded from the data files under `mappings/schema/`: the
//! OpenAI target schema (event types, data shapes, fields and their constraints) and the Signal input schema
//! (envelope fields, their types, and which hold personal data). Knowledge of either API lives in those files,
//! not in code.

use std::sync::OnceLock;

use serde_norway::Value as Yaml;

use crate::functions::Ty;

const TARGET_SCHEMA_TEXT: &str = include_str!("../mappings/schema/openai_ads.yaml");
const INPUT_SCHEMA_TEXT: &str = include_str!("../mappings/schema/signal.yaml");

/// The schema a mapping writes when it declares no `target`.
pub const DEFAULT_TARGET: &str = "openai_ads";

/// A value constraint beyond the type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 64 lowercase hex characters.
    Sha256,
    /// A known ISO 4217 code in upper case.
    Iso4217,
    /// Two upper-case letters.
    Iso3166Alpha2,
    /// An absolute http(s) URL.
    Url,
    /// Epoch milliseconds within the accepted window around `now`.
    TimestampWindow,
    /// OpenAI's rules for `custom_event_name`.
    CustomEventName,
}

/// One field of the target schema.
#[derive(Clone, Debug)]
pub struct FieldDef {
    pub name: String,
    /// The field's type, as a set of JSON kinds (integer fields accept only integers).
    pub ty: Ty,
    pub type_name: String,
    pub doc: String,
    pub required: bool,
    pub required_when: Option<(String, String)>,
    pub non_empty: bool,
    pub enum_values: Option<Vec<String>>,
    pub format: Option<Format>,
    pub requires: Option<String>,
    pub set_by_route: bool,
    pub max_items: Option<usize>,
    pub max_length: Option<usize>,
    /// Members, for objects.
    pub fields: Vec<FieldDef>,
    /// Element members, for arrays of objects.
    pub items: Option<Vec<FieldDef>>,
}

impl FieldDef {
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// One OpenAI target schema variant.
#[derive(Clone, Debug)]
pub struct TargetSchema {
    pub name: String,
    pub doc: String,
    /// Event-level fields in output order; `data` lists only its `type` here, shapes add the rest.
    pub fields: Vec<FieldDef>,
    /// Data shapes and the fields each adds under `data`, in file order.
    pub shapes: Vec<(String, Vec<FieldDef>)>,
    /// Event types and their shape, in file order.
    pub event_types: Vec<(String, String)>,
}

impl TargetSchema {
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn shape(&self, name: &str) -> Option<&[FieldDef]> {
        self.shapes.iter().find(|(n, _)| n == name).map(|(_, f)| f.as_slice())
    }

    pub fn shape_of(&self, event_type: &str) -> Option<&str> {
        self.event_types.iter().find(|(t, _)| t == event_type).map(|(_, s)| s.as_str())
    }

    pub fn event_type_names(&self) -> Vec<&str> {
        self.event_types.iter().map(|(t, _)| t.as_str()).collect()
    }

    pub fn shape_names(&self) -> Vec<&str> {
        self.shapes.iter().map(|(s, _)| s.as_str()).collect()
    }

    /// The data shapes whose `data` has a field `name`.
    pub fn shapes_with(&self, name: &str) -> Vec<&str> {
        self.shapes
            .iter()
            .filter(|(_, fields)| fields.iter().any(|f| f.name == name))
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// The field at `keys` (`["user", "email"]`, `["data", "amount"]`) and, for a field of `data`, the shapes that
    /// have it. `data.<name>` is found in the first shape that has it (the shapes agree on a field's definition);
    /// below a field, its object fields, and with `through_items` also the fields of its array's elements (an
    /// element block names them relative to the array).
    pub fn resolve<K: AsRef<str>>(&self, keys: &[K], through_items: bool) -> Option<(&FieldDef, Vec<&str>)> {
        let (first, rest) = keys.split_first()?;
        let (mut def, shapes, rest) = match rest.split_first() {
            Some((name, deeper)) if first.as_ref() == "data" && name.as_ref() != "type" => {
                let name = name.as_ref();
                let def = self.shapes.iter().find_map(|(_, fields)| fields.iter().find(|f| f.name == name))?;
                (def, self.shapes_with(name), deeper)
            }
            _ => (self.field(first.as_ref())?, Vec::new(), rest),
        };
        for key in rest {
            let key = key.as_ref();
            def = def
                .field(key)
                .or_else(|| through_items.then(|| def.items.as_ref()?.iter().find(|f| f.name == key)).flatten())?;
        }
        Some((def, shapes))
    }

    /// Visits every field with its path, depth first, parents after their children: the event's fields, then each
    /// shape's `data` fields (a field several shapes share is visited for each), the fields of array elements
    /// under the array's path.
    pub fn walk(&self, visit: &mut dyn FnMut(&[String], &FieldDef)) {
        fn fields(keys: &mut Vec<String>, defs: &[FieldDef], visit: &mut dyn FnMut(&[String], &FieldDef)) {
            for def in defs {
                keys.push(def.name.clone());
                fields(keys, &def.fields, visit);
                fields(keys, def.items.as_deref().unwrap_or_default(), visit);
                visit(keys, def);
                keys.pop();
            }
        }
        let mut keys = Vec::new();
        fields(&mut keys, &self.fields, visit);
        for (_, shape) in &self.shapes {
            keys.push("data".to_string());
            fields(&mut keys, shape, visit);
            keys.pop();
        }
    }
}

/// One field of the Signal input schema.
#[derive(Clone, Debug)]
pub struct InputField {
    pub name: String,
    pub ty: Ty,
    pub doc: String,
    /// The event kinds that carry it; `None` for all.
    pub on: Option<Vec<String>>,
    /// Members are free-form: an unknown member is not a mistake.
    pub open: bool,
    pub pii: bool,
    pub fields: Vec<InputField>,
}

impl InputField {
    pub fn field(&self, name: &str) -> Option<&InputField> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// The Signal envelope.
#[derive(Clone, Debug)]
pub struct InputSchema {
    pub fields: Vec<InputField>,
    /// Key names that hold personal data wherever they appear in a free-form object, normalised.
    pub pii_keys: Vec<String>,
}

/// Lower case without `_`, `-` and spaces: `Phone_Number`, `phone-number` and `phoneNumber` are one name.
pub fn normalise_key(key: &str) -> String {
    key.chars().filter(|c| !matches!(c, '_' | '-' | ' ')).flat_map(char::to_lowercase).collect()
}

impl InputSchema {
    /// Whether a free-form key names personal data.
    pub fn is_pii_key(&self, key: &str) -> bool {
        let key = normalise_key(key);
        self.pii_keys.contains(&key)
    }

    pub fn field(&self, name: &str) -> Option<&InputField> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Every target schema variant in `mappings/schema/openai_ads.yaml`.
pub fn targets() -> &'static [TargetSchema] {
    static TARGETS: OnceLock<Vec<TargetSchema>> = OnceLock::new();
    TARGETS.get_or_init(|| parse_targets(TARGET_SCHEMA_TEXT).unwrap_or_else(|e| panic!("embedded target schema: {e}")))
}

pub fn target(name: &str) -> Option<&'static TargetSchema> {
    targets().iter().find(|t| t.name == name)
}

/// The Signal input schema in `mappings/schema/signal.yaml`.
pub fn input() -> &'static InputSchema {
    static INPUT: OnceLock<InputSchema> = OnceLock::new();
    INPUT.get_or_init(|| parse_input(INPUT_SCHEMA_TEXT).unwrap_or_else(|e| panic!("embedded input schema: {e}")))
}

fn mapping_entries<'a>(value: &'a Yaml, context: &str) -> Result<Vec<(&'a str, &'a Yaml)>, String> {
    match value {
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| k.as_str().map(|k| (k, v)).ok_or_else(|| format!("{context}: keys must be strings")))
            .collect(),
        Yaml::Null => Ok(Vec::new()),
        _ => Err(format!("{context}: expected a mapping")),
    }
}

fn get<'a>(value: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    value.as_mapping().and_then(|m| m.get(key))
}

fn get_str(value: &Yaml, key: &str) -> String {
    get(value, key).and_then(Yaml::as_str).unwrap_or_default().to_string()
}

fn get_bool(value: &Yaml, key: &str) -> bool {
    get(value, key).and_then(Yaml::as_bool).unwrap_or(false)
}

pub(crate) fn parse_targets(text: &str) -> Result<Vec<TargetSchema>, String> {
    let root: Yaml = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let targets = get(&root, "targets").ok_or("no `targets`")?;
    let mut out: Vec<TargetSchema> = Vec::new();
    for (name, body) in mapping_entries(targets, "targets")? {
        let doc = get_str(body, "doc");
        let schema = if let Some(base) = get(body, "extends").and_then(Yaml::as_str) {
            let mut schema = out
                .iter()
                .find(|t| t.name == base)
                .cloned()
                .ok_or_else(|| format!("{name}: extends unknown target {base}"))?;
            schema.name = name.to_string();
            schema.doc = doc;
            if let Some(replace) = get(body, "replace_fields") {
                for (field_name, def) in mapping_entries(replace, name)? {
                    let def = parse_field(field_name, def)?;
                    match schema.fields.iter_mut().find(|f| f.name == field_name) {
                        Some(existing) => *existing = def,
                        None => schema.fields.push(def),
                    }
                }
            }
            schema
        } else {
            let fields = parse_fields(get(body, "fields").ok_or_else(|| format!("{name}: no fields"))?)?;
            let mut shapes = Vec::new();
            for (shape, def) in mapping_entries(get(body, "shapes").unwrap_or(&Yaml::Null), name)? {
                shapes.push((shape.to_string(), parse_fields(def)?));
            }
            let mut event_types = Vec::new();
            for (event_type, shape) in mapping_entries(get(body, "event_types").unwrap_or(&Yaml::Null), name)? {
                let shape = shape.as_str().ok_or_else(|| format!("{name}.{event_type}: shape must be a name"))?;
                if !shapes.iter().any(|(s, _)| s == shape) {
                    return Err(format!("{name}.{event_type}: unknown shape {shape}"));
                }
                event_types.push((event_type.to_string(), shape.to_string()));
            }
            TargetSchema { name: name.to_string(), doc, fields, shapes, event_types }
        };
        out.push(schema);
    }
    Ok(out)
}

fn parse_fields(value: &Yaml) -> Result<Vec<FieldDef>, String> {
    mapping_entries(value, "fields")?.into_iter().map(|(name, def)| parse_field(name, def)).collect()
}

fn parse_field(name: &str, def: &Yaml) -> Result<FieldDef, String> {
    let type_name = get_str(def, "type");
    let ty = match type_name.as_str() {
        "string" => Ty::STRING,
        "integer" => Ty::INTEGER,
        "number" => Ty::NUMBER,
        "boolean" => Ty::BOOL,
        "object" => Ty::OBJECT,
        "array" => Ty::ARRAY,
        other => return Err(format!("field {name}: unknown type `{other}`")),
    };
    let format = match get(def, "format").and_then(Yaml::as_str) {
        None => None,
        Some("sha256") => Some(Format::Sha256),
        Some("iso4217") => Some(Format::Iso4217),
        Some("iso3166_alpha2") => Some(Format::Iso3166Alpha2),
        Some("url") => Some(Format::Url),
        Some("timestamp_window") => Some(Format::TimestampWindow),
        Some("custom_event_name") => Some(Format::CustomEventName),
        Some(other) => return Err(format!("field {name}: unknown format `{other}`")),
    };
    let required_when = match get(def, "required_when") {
        None => None,
        Some(condition) => {
            let entries = mapping_entries(condition, name)?;
            let (field, value) = entries.first().ok_or_else(|| format!("field {name}: empty required_when"))?;
            Some((field.to_string(), value.as_str().unwrap_or_default().to_string()))
        }
    };
    let enum_values = get(def, "enum")
        .and_then(Yaml::as_sequence)
        .map(|values| values.iter().filter_map(Yaml::as_str).map(str::to_string).collect());
    let fields = match get(def, "fields") {
        Some(f) => parse_fields(f)?,
        None => Vec::new(),
    };
    let items = match get(def, "items") {
        Some(i) => Some(parse_fields(i)?),
        None => None,
    };
    Ok(FieldDef {
        name: name.to_string(),
        ty,
        type_name,
        doc: get_str(def, "doc"),
        required: get_bool(def, "required"),
        required_when,
        non_empty: get_bool(def, "non_empty"),
        enum_values,
        format,
        requires: get(def, "requires").and_then(Yaml::as_str).map(str::to_string),
        set_by_route: get(def, "set_by").and_then(Yaml::as_str) == Some("route"),
        max_items: get(def, "max_items").and_then(Yaml::as_u64).map(|n| n as usize),
        max_length: get(def, "max_length").and_then(Yaml::as_u64).map(|n| n as usize),
        fields,
        items,
    })
}

pub(crate) fn parse_input(text: &str) -> Result<InputSchema, String> {
    let root: Yaml = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let fields = parse_input_fields(get(&root, "fields").ok_or("no `fields`")?)?;
    let pii_keys = get(&root, "pii_keys")
        .and_then(Yaml::as_sequence)
        .map(|keys| keys.iter().filter_map(Yaml::as_str).map(normalise_key).collect())
        .unwrap_or_default();
    Ok(InputSchema { fields, pii_keys })
}

fn parse_input_fields(value: &Yaml) -> Result<Vec<InputField>, String> {
    let mut out = Vec::new();
    for (name, def) in mapping_entries(value, "fields")? {
        let ty = match get_str(def, "type").as_str() {
            "string" => Ty::STRING,
            "number" => Ty::NUMBER,
            "boolean" => Ty::BOOL,
            "object" => Ty::OBJECT,
            "array" => Ty::ARRAY,
            "any" => Ty::ANY,
            other => return Err(format!("input field {name}: unknown type `{other}`")),
        };
        let on = get(def, "on")
            .and_then(Yaml::as_sequence)
            .map(|kinds| kinds.iter().filter_map(Yaml::as_str).map(str::to_string).collect());
        let fields = match get(def, "fields") {
            Some(f) => parse_input_fields(f)?,
            None => Vec::new(),
        };
        out.push(InputField {
            name: name.to_string(),
            ty,
            doc: get_str(def, "doc"),
            on,
            open: get_bool(def, "open"),
            pii: get_bool(def, "pii"),
            fields,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn one_walk_and_one_lookup_serve_every_reader_of_the_target_schema() {
        let target = target(DEFAULT_TARGET).expect("the default target");
        let (amount, shapes) = target.resolve(&["data", "amount"], false).expect("data.amount");
        assert_eq!(amount.name, "amount");
        assert!(shapes.contains(&"contents") && shapes.contains(&"plan_enrollment"), "{shapes:?}");
        assert!(target.resolve(&["user", "email"], false).is_some_and(|(_, shapes)| shapes.is_empty()));
        assert!(target.resolve(&["data", "contents", "id"], false).is_none(), "elements only through a block");
        assert!(target.resolve(&["data", "contents", "id"], true).is_some());
        assert!(target.resolve(&["data", "type"], false).is_some());
        assert!(target.resolve(&["user", "emial"], false).is_none());
        let mut paths = Vec::new();
        target.walk(&mut |keys, _| paths.push(keys.join(".")));
        for expected in ["id", "user.email", "user", "data.type", "data.amount", "data.contents.id", "data.contents"] {
            assert!(paths.iter().any(|p| p == expected), "{expected} in {paths:?}");
        }
    }
    use super::*;

    #[test]
    fn embedded_schemas_load() {
        let seed = target("openai_ads").unwrap();
        assert_eq!(seed.shape_of("order_created"), Some("contents"));
        assert!(seed.field("user").unwrap().field("phone_number").is_some());
        let docs = target("openai_ads_developer_docs").unwrap();
        assert!(docs.field("user").unwrap().field("phone_number").is_none());
        assert!(docs.field("user").unwrap().field("email_sha256").is_some());
        assert_eq!(docs.event_types.len(), seed.event_types.len());
        let input = input();
        assert!(input.field("context").unwrap().field("traits").unwrap().field("email").unwrap().pii);
    }
}
