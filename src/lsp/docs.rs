//! The Markdown the server shows for functions, target fields, Signal fields, parameters, event types and data
//! shapes, written from the same declarations and schema files the compiler checks against.

use signal_engine::ast::ParamDecl;
use signal_engine::functions::Function;
use signal_engine::schema::{self, FieldDef, Format, InputField, TargetSchema};

/// A function: its reference block from docs/functions.md (signature, doc, parameters, personal data, examples).
pub fn function(f: &Function) -> String {
    f.markdown()
}

/// The field at `keys` and the shapes that have it; inside element blocks keys run through array elements.
pub fn resolve_target<'s>(target: &'s TargetSchema, keys: &[String]) -> Option<(&'s FieldDef, Vec<&'s str>)> {
    target.resolve(keys, true)
}

/// A target field: type, whether required, constraints, the data shapes that have it, and its doc.
pub fn target_field(target: &TargetSchema, dotted: &str, def: &FieldDef, shapes: &[&str]) -> String {
    let requirement = if def.set_by_route {
        "set by the route table".to_string()
    } else if def.required {
        "required".to_string()
    } else if let Some((field, value)) = &def.required_when {
        format!("required when `{field}` is `{value}`")
    } else {
        "optional".to_string()
    };
    let mut out = format!("**`{dotted}`** · {} · {requirement}\n\n{}\n", def.type_name, def.doc);
    let mut facts = Vec::new();
    if let Some(values) = &def.enum_values {
        let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
        facts.push(format!("allowed values: {}", values.join(", ")));
    }
    if let Some(format) = def.format {
        facts.push(format!("format: {}", format_words(format)));
    }
    if def.non_empty {
        facts.push("must not be empty".to_string());
    }
    if let Some(n) = def.max_length {
        facts.push(format!("at most {n} characters"));
    }
    if let Some(n) = def.max_items {
        facts.push(format!("at most {n} elements"));
    }
    if let Some(other) = &def.requires {
        facts.push(format!("sent only together with `{other}`"));
    }
    if let Some(items) = &def.items {
        let names: Vec<String> = items.iter().map(|f| format!("`{}`", f.name)).collect();
        facts.push(format!("element fields: {} (write them in a `[*] {{ … }}` block)", names.join(", ")));
    }
    if def.set_by_route {
        facts.push("rules cannot write it; change the route table instead".to_string());
    }
    if !shapes.is_empty() {
        let shapes: Vec<String> = shapes.iter().map(|s| format!("`{s}`")).collect();
        facts.push(format!("in data shapes: {}", shapes.join(", ")));
    }
    facts.push(format!("target schema: `{}`", target.name));
    out.push('\n');
    for fact in facts {
        out.push_str(&format!("- {fact}\n"));
    }
    out
}

fn format_words(format: Format) -> &'static str {
    match format {
        Format::Sha256 => "SHA-256, 64 lowercase hex characters (hash it with `sha256`)",
        Format::Iso4217 => "ISO 4217 currency code in upper case",
        Format::Iso3166Alpha2 => "ISO 3166 two-letter country code in upper case",
        Format::Url => "absolute http(s) URL",
        Format::TimestampWindow => "epoch milliseconds within the accepted window around now",
        Format::CustomEventName => "OpenAI's rules for custom event names",
    }
}

/// A Signal source path up to the segment under the cursor. `element` says the path reads the current array
/// element of an element block rather than the event.
pub fn source_path(keys: &[String], element: bool) -> String {
    let input = schema::input();
    let dotted = keys.join(".");
    if element {
        let pii = keys.iter().any(|k| input.is_pii_key(k));
        return format!(
            "**`@.{dotted}`** · a field of the current element of the block's source array\n{}",
            pii_note(pii)
        );
    }
    let Some((first, rest)) = keys.split_first() else { return String::new() };
    let Some(mut field) = input.field(first) else {
        let pii = keys.iter().any(|k| input.is_pii_key(k));
        return format!(
            "**`properties.{dotted}`** · free-form\n\nA bare name reads the event's `properties`.\n{}",
            pii_note(pii)
        );
    };
    let mut pii = field.pii;
    for (i, key) in rest.iter().enumerate() {
        match field.field(key) {
            Some(child) => {
                field = child;
                pii |= child.pii;
            }
            None if field.open => {
                let pii = pii || rest[i..].iter().any(|k| input.is_pii_key(k));
                return format!(
                    "**`{dotted}`** · free-form member of `{}`\n\n{}\n{}",
                    keys[..=i].join("."),
                    field.doc,
                    pii_note(pii)
                );
            }
            None => {
                let members: Vec<String> = field.fields.iter().map(|f| format!("`{}`", f.name)).collect();
                return format!(
                    "Signal events have no `{dotted}`.\n\n`{}` has: {}\n",
                    keys[..=i].join("."),
                    members.join(", ")
                );
            }
        }
    }
    let carried = match &field.on {
        Some(kinds) => format!("{} events", kinds.join(", ")),
        None => "every event".to_string(),
    };
    let pii = pii || contains_pii(field);
    format!("**`{dotted}`** · {} · on {carried}\n\n{}\n{}", field.ty, field.doc, pii_note(pii))
}

fn contains_pii(field: &InputField) -> bool {
    field.pii || field.fields.iter().any(contains_pii)
}

fn pii_note(pii: bool) -> &'static str {
    if pii {
        "\n**Personal data:** reaches the output only through a hash (`| sha256`); `engine check` enforces it.\n"
    } else {
        ""
    }
}

/// A parameter: its type, default and where it is declared.
pub fn param(decl: &ParamDecl, location: &str) -> String {
    let default = match &decl.default {
        Some(literal) => format!(" = `{}`", literal.value),
        None => " · no default: a value must be given with `--params`".to_string(),
    };
    format!("**`${}`** · {}{default}\n\nDeclared at {location}.\n", decl.name.name, decl.ty.name)
}

/// An OpenAI event type, with its data shape.
pub fn event_type(target: &TargetSchema, name: &str) -> Option<String> {
    let shape = target.shape_of(name)?;
    Some(format!(
        "**`{name}`** · OpenAI event type\n\nIts events carry `{shape}` data{}.\n",
        shape_fields(target, shape)
    ))
}

/// A data shape, with its fields and the event types that use it.
pub fn shape(target: &TargetSchema, name: &str) -> Option<String> {
    target.shape(name)?;
    let types: Vec<String> =
        target.event_types.iter().filter(|(_, s)| s == name).map(|(t, _)| format!("`{t}`")).collect();
    Some(format!(
        "**`{name}`** · data shape\n\nFields{}.\n\nEvent types: {}.\n",
        shape_fields(target, name),
        types.join(", ")
    ))
}

fn shape_fields(target: &TargetSchema, shape: &str) -> String {
    let fields: Vec<String> = target
        .shape(shape)
        .unwrap_or_default()
        .iter()
        .map(|f| format!("`data.{}` ({})", f.name, f.type_name))
        .collect();
    if fields.is_empty() {
        " (no fields beyond `data.type`)".to_string()
    } else {
        format!(": {}", fields.join(", "))
    }
}

/// A target schema named by `target`.
pub fn target_schema(name: &str) -> Option<String> {
    let target = schema::target(name)?;
    Some(format!("**`{name}`** · target schema\n\n{}\n", target.doc))
}
