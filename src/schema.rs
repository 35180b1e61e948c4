//! The two schemas a mapping is checked against, loaded from the data files under `mappings/schema/`: the
//! OpenAI target schema (event types, data shapes, fields and their constraints) and the Signal input schema
//! (envelope fields, their types, and which hold personal data). Knowledge of either API lives in those files,
//! not in code.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::functions::Ty;
use crate::yaml::{self, Entries};

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
///
/// Laid out in declaration order, what validating every event reads first (the type and the checks, up to
/// `requires`): together they take the struct's first 120 bytes, where the compiler's own order scattered them
/// among the names and the documentation.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct FieldDef {
    /// The field's type, as a set of JSON kinds (integer fields accept only integers).
    pub ty: Ty,
    pub non_empty: bool,
    pub required: bool,
    pub set_by_route: bool,
    pub format: Option<Format>,
    pub max_length: Option<usize>,
    pub max_items: Option<usize>,
    pub enum_values: Option<Vec<String>>,
    pub requires: Option<String>,
    pub name: String,
    pub type_name: String,
    pub doc: String,
    pub required_when: Option<(String, String)>,
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
    /// The properties each event is known to carry, from the Segment specs.
    pub event_properties: EventProperties,
}

/// The properties events are known to carry (`event_properties` in `signal.yaml`), so that `check` can tell a
/// misspelled property from a custom one.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventProperties {
    pub page: Vec<String>,
    pub screen: Vec<String>,
    /// What any track event may carry besides its own.
    pub track: Vec<String>,
    /// The members of a `products` element.
    pub product: Vec<String>,
    /// Per track event name.
    #[serde(default)]
    pub events: Entries<Vec<String>>,
}

impl EventProperties {
    /// The properties an event of `kind` named `event` (for track) is known to carry, or `None` when it may carry
    /// anything: an event name the specs do not describe, the `track` catch-all, identify and group.
    pub fn carried_by(&self, kind: &str, event: Option<&str>) -> Option<impl Iterator<Item = &str>> {
        let (own, common): (&[String], &[String]) = match (kind, event) {
            ("page", _) => (&self.page, &[]),
            ("screen", _) => (&self.screen, &[]),
            ("track", Some(name)) => (&self.events.0.iter().find(|(event, _)| event == name)?.1, &self.track),
            _ => return None,
        };
        Some(own.iter().chain(common).map(String::as_str))
    }
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

/// `openai_ads.yaml` as written: targets in order, each extending an earlier one or giving its fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    targets: Entries<TargetSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    #[serde(default)]
    doc: String,
    extends: Option<String>,
    replace_fields: Option<Entries<FieldSpec>>,
    fields: Option<Entries<FieldSpec>>,
    #[serde(default)]
    shapes: Entries<Entries<FieldSpec>>,
    #[serde(default)]
    event_types: Entries<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    required: bool,
    required_when: Option<Entries<String>>,
    #[serde(default)]
    non_empty: bool,
    #[serde(rename = "enum")]
    enum_values: Option<Vec<String>>,
    format: Option<String>,
    requires: Option<String>,
    set_by: Option<String>,
    max_items: Option<usize>,
    max_length: Option<usize>,
    fields: Option<Entries<FieldSpec>>,
    items: Option<Entries<FieldSpec>>,
}

pub(crate) fn parse_targets(text: &str) -> Result<Vec<TargetSchema>, String> {
    let file: TargetsFile = yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut out: Vec<TargetSchema> = Vec::new();
    for (name, body) in file.targets.0 {
        let schema = if let Some(base) = &body.extends {
            let mut schema = out
                .iter()
                .find(|t| &t.name == base)
                .cloned()
                .ok_or_else(|| format!("{name}: extends unknown target {base}"))?;
            schema.name = name.clone();
            schema.doc = body.doc;
            for (field_name, spec) in body.replace_fields.unwrap_or_default().0 {
                let def = parse_field(&field_name, spec)?;
                match schema.fields.iter_mut().find(|f| f.name == field_name) {
                    Some(existing) => *existing = def,
                    None => schema.fields.push(def),
                }
            }
            schema
        } else {
            let fields = parse_fields(body.fields.ok_or_else(|| format!("{name}: no fields"))?)?;
            let mut shapes = Vec::new();
            for (shape, spec) in body.shapes.0 {
                shapes.push((shape, parse_fields(spec)?));
            }
            let mut event_types = Vec::new();
            for (event_type, shape) in body.event_types.0 {
                if !shapes.iter().any(|(s, _)| *s == shape) {
                    return Err(format!("{name}.{event_type}: unknown shape {shape}"));
                }
                event_types.push((event_type, shape));
            }
            TargetSchema { name: name.clone(), doc: body.doc, fields, shapes, event_types }
        };
        out.push(schema);
    }
    Ok(out)
}

fn parse_fields(specs: Entries<FieldSpec>) -> Result<Vec<FieldDef>, String> {
    specs.0.into_iter().map(|(name, spec)| parse_field(&name, spec)).collect()
}

fn parse_field(name: &str, spec: FieldSpec) -> Result<FieldDef, String> {
    let ty = match spec.type_name.as_str() {
        "string" => Ty::STRING,
        "integer" => Ty::INTEGER,
        "number" => Ty::NUMBER,
        "boolean" => Ty::BOOL,
        "object" => Ty::OBJECT,
        "array" => Ty::ARRAY,
        other => return Err(format!("field {name}: unknown type `{other}`")),
    };
    let format = match spec.format.as_deref() {
        None => None,
        Some("sha256") => Some(Format::Sha256),
        Some("iso4217") => Some(Format::Iso4217),
        Some("iso3166_alpha2") => Some(Format::Iso3166Alpha2),
        Some("url") => Some(Format::Url),
        Some("timestamp_window") => Some(Format::TimestampWindow),
        Some("custom_event_name") => Some(Format::CustomEventName),
        Some(other) => return Err(format!("field {name}: unknown format `{other}`")),
    };
    let required_when = match spec.required_when {
        None => None,
        Some(condition) => {
            Some(condition.0.into_iter().next().ok_or_else(|| format!("field {name}: empty required_when"))?)
        }
    };
    let set_by_route = match spec.set_by.as_deref() {
        None => false,
        Some("route") => true,
        Some(other) => return Err(format!("field {name}: unknown set_by `{other}`")),
    };
    Ok(FieldDef {
        name: name.to_string(),
        ty,
        type_name: spec.type_name,
        doc: spec.doc,
        required: spec.required,
        required_when,
        non_empty: spec.non_empty,
        enum_values: spec.enum_values,
        format,
        requires: spec.requires,
        set_by_route,
        max_items: spec.max_items,
        max_length: spec.max_length,
        fields: parse_fields(spec.fields.unwrap_or_default())?,
        items: spec.items.map(parse_fields).transpose()?,
    })
}

/// `signal.yaml` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFile {
    #[serde(default)]
    pii_keys: Vec<String>,
    fields: Entries<InputSpec>,
    #[serde(default)]
    event_properties: EventProperties,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSpec {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    doc: String,
    on: Option<Vec<String>>,
    #[serde(default)]
    open: bool,
    #[serde(default)]
    pii: bool,
    fields: Option<Entries<InputSpec>>,
}

pub(crate) fn parse_input(text: &str) -> Result<InputSchema, String> {
    let file: InputFile = yaml::from_str(text).map_err(|e| e.to_string())?;
    Ok(InputSchema {
        fields: parse_input_fields(file.fields)?,
        pii_keys: file.pii_keys.iter().map(|key| normalise_key(key)).collect(),
        event_properties: file.event_properties,
    })
}

fn parse_input_fields(specs: Entries<InputSpec>) -> Result<Vec<InputField>, String> {
    let mut out = Vec::new();
    for (name, spec) in specs.0 {
        let ty = match spec.type_name.as_str() {
            "string" => Ty::STRING,
            "number" => Ty::NUMBER,
            "boolean" => Ty::BOOL,
            "object" => Ty::OBJECT,
            "array" => Ty::ARRAY,
            "any" => Ty::ANY,
            other => return Err(format!("input field {name}: unknown type `{other}`")),
        };
        out.push(InputField {
            ty,
            doc: spec.doc,
            on: spec.on,
            open: spec.open,
            pii: spec.pii,
            fields: parse_input_fields(spec.fields.unwrap_or_default())?,
            name,
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
