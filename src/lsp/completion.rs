//! Completion: function names after `|` and in source position, target fields after `->` (and in `remember`),
//! parameters after `$`, Signal envelope fields in source position, event types and data shapes in the route
//! table. The context is read from the text of the line before the cursor, because the line being typed rarely
//! parses.

use lsp_types::{
    CompletionItem, CompletionItemKind, CompletionTextEdit, Documentation, MarkupContent, MarkupKind, TextEdit,
};
use signal_engine::functions;
use signal_engine::schema::{self, InputField, TargetSchema};

use super::analysis::{blocks_at, Workspace};
use super::docs;
use super::text::LineIndex;

/// What the word being typed is.
#[derive(Debug, PartialEq)]
pub enum Slot {
    Param,
    Function,
    Target,
    Source,
    EventType,
    Shape,
    EventKind,
    Selector,
    TargetSchema,
}

/// What is being typed at byte `offset` of `text`, and the range of the partial word before the cursor that a
/// completion replaces; `None` where nothing is completed (comments, strings, declarations).
pub fn context(text: &str, offset: usize) -> Option<(Slot, lsp_types::Range, String)> {
    let index = LineIndex::new(text);
    let line = index.line_before(offset);
    let code = code_of(line)?;
    let word_start = code
        .char_indices()
        .rev()
        .take_while(|&(_, c)| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '*' | '@'))
        .last()
        .map_or(code.len(), |(i, _)| i);
    let slot = slot(text, offset, &code, word_start)?;
    let word = code[word_start..].to_string();
    let range = index.range(offset - word.len(), offset);
    Some((slot, range, word))
}

/// The completions at byte `offset` of `text`, each replacing the partial word before the cursor.
pub fn complete(text: &str, offset: usize, workspace: &Workspace) -> Vec<CompletionItem> {
    let Some((slot, range, word)) = context(text, offset) else { return Vec::new() };
    let target = workspace.target_schema();
    let entries: Vec<Entry> = match slot {
        Slot::Param => workspace
            .params()
            .into_iter()
            .map(|(file, decl)| Entry {
                label: decl.name.name.clone(),
                kind: CompletionItemKind::VARIABLE,
                detail: decl.ty.name.clone(),
                doc: docs::param(decl, &file.location(decl.name.span.start)),
            })
            .collect(),
        Slot::Function => function_entries(),
        Slot::Source => {
            let mut entries = envelope_entries();
            if !word.contains('.') {
                entries.extend(function_entries());
            }
            entries
        }
        Slot::Target => {
            let element = blocks_at(text, offset).element_keys();
            target_entries(target, &element)
        }
        Slot::EventType => target
            .event_types
            .iter()
            // `custom` is written `custom("name")`, offered below with that form.
            .filter(|(name, _)| name != "custom")
            .map(|(name, shape)| Entry {
                label: name.clone(),
                kind: CompletionItemKind::ENUM_MEMBER,
                detail: format!("{shape} data"),
                doc: docs::event_type(target, name).unwrap_or_default(),
            })
            .chain(std::iter::once(Entry {
                label: "custom".to_string(),
                kind: CompletionItemKind::KEYWORD,
                detail: "custom(\"name\")".to_string(),
                doc: "A custom event: `custom(\"button_clicked\")` sets `type` and `custom_event_name`.".to_string(),
            }))
            .collect(),
        Slot::Shape => shape_entries(target),
        Slot::EventKind => kind_entries(),
        Slot::Selector => {
            let mut entries: Vec<Entry> = workspace
                .route_event_names()
                .into_iter()
                .map(|name| Entry {
                    label: format!("\"{name}\""),
                    kind: CompletionItemKind::VALUE,
                    detail: "Signal track event".to_string(),
                    doc: String::new(),
                })
                .collect();
            entries.extend(target.event_types.iter().map(|(name, shape)| Entry {
                label: name.clone(),
                kind: CompletionItemKind::ENUM_MEMBER,
                detail: format!("event type, {shape} data"),
                doc: docs::event_type(target, name).unwrap_or_default(),
            }));
            entries.extend(shape_entries(target));
            entries.extend(kind_entries());
            entries
        }
        Slot::TargetSchema => schema::targets()
            .iter()
            .map(|t| Entry {
                label: t.name.clone(),
                kind: CompletionItemKind::MODULE,
                detail: "target schema".to_string(),
                doc: t.doc.clone(),
            })
            .collect(),
    };
    let mut seen = std::collections::HashSet::new();
    entries.into_iter().filter(|entry| seen.insert(entry.label.clone())).map(|entry| entry.into_item(range)).collect()
}

/// The line before the cursor with string contents blanked, or `None` inside a comment or a string (where
/// nothing is completed).
fn code_of(line: &str) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match (in_string, c) {
            (false, '#') => return None,
            (false, '"') | (true, '"') => {
                in_string = !in_string;
                out.push('"');
            }
            (true, '\\') => {
                out.push('_');
                if let Some(escaped) = chars.next() {
                    out.extend(std::iter::repeat_n('_', escaped.len_utf8()));
                }
            }
            (true, other) => out.extend(std::iter::repeat_n('_', other.len_utf8())),
            (false, other) => out.push(other),
        }
    }
    (!in_string).then_some(out)
}

fn slot(text: &str, offset: usize, code: &str, word_start: usize) -> Option<Slot> {
    let before = &code[..word_start];
    if before.ends_with('$') {
        return Some(Slot::Param);
    }
    let trimmed = before.trim_start();
    if blocks_at(text, offset).routes {
        return Some(match before.rfind("->") {
            Some(arrow) if before[arrow..].contains('(') => Slot::Shape,
            Some(_) => Slot::EventType,
            None => Slot::EventKind,
        });
    }
    if trimmed.starts_with("target ") {
        return Some(Slot::TargetSchema);
    }
    if trimmed.starts_with("when ") {
        return (!trimmed.contains('{')).then_some(Slot::Selector);
    }
    if trimmed.starts_with("remember ") {
        return (!trimmed.contains(" for ")).then_some(Slot::Target);
    }
    if trimmed.starts_with("param ") || trimmed.starts_with("include ") {
        return None;
    }
    let Some(arrow) = before.rfind("->") else { return Some(Slot::Source) };
    let after = &before[arrow + 2..];
    match after.rfind('|') {
        Some(bar) => {
            let call = &after[bar + 1..];
            let depth = call.matches('(').count() as isize - call.matches(')').count() as isize;
            if depth > 0 {
                Some(Slot::Source)
            } else if call.trim().is_empty() {
                Some(Slot::Function)
            } else {
                None
            }
        }
        None if after.trim().is_empty() => Some(Slot::Target),
        None => None,
    }
}

/// One completion before it is placed in the text.
struct Entry {
    label: String,
    kind: CompletionItemKind,
    detail: String,
    doc: String,
}

impl Entry {
    fn into_item(self, range: lsp_types::Range) -> CompletionItem {
        CompletionItem {
            label: self.label.clone(),
            kind: Some(self.kind),
            detail: (!self.detail.is_empty()).then_some(self.detail),
            documentation: (!self.doc.is_empty())
                .then_some(Documentation::MarkupContent(MarkupContent { kind: MarkupKind::Markdown, value: self.doc })),
            filter_text: Some(self.label.clone()),
            text_edit: Some(CompletionTextEdit::Edit(TextEdit { range, new_text: self.label })),
            ..CompletionItem::default()
        }
    }
}

fn function_entries() -> Vec<Entry> {
    functions::all()
        .iter()
        .map(|f| Entry {
            label: f.name.to_string(),
            kind: CompletionItemKind::FUNCTION,
            detail: f.signature(),
            doc: docs::function(f),
        })
        .collect()
}

/// Every envelope path of the Signal schema: `messageId`, `context.page.url`, `traits.email`.
fn envelope_entries() -> Vec<Entry> {
    fn walk(prefix: &str, fields: &[InputField], out: &mut Vec<Entry>) {
        for field in fields {
            let dotted = if prefix.is_empty() { field.name.clone() } else { format!("{prefix}.{}", field.name) };
            let keys: Vec<String> = dotted.split('.').map(str::to_string).collect();
            out.push(Entry {
                label: dotted.clone(),
                kind: CompletionItemKind::FIELD,
                detail: if field.pii { format!("{} · personal data", field.ty) } else { field.ty.to_string() },
                doc: docs::source_path(&keys, false),
            });
            walk(&dotted, &field.fields, out);
        }
    }
    let mut out = Vec::new();
    walk("", &schema::input().fields, &mut out);
    out
}

/// The fields a rule may write: leaves of the schema (objects expanded, arrays as `name[*]`), relative to the
/// current element inside an element block. Read from the schema's one walk, in its order; a field several data
/// shapes share is offered once.
fn target_entries(target: &TargetSchema, element: &[String]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    target.walk(&mut |keys, def| {
        // Only leaves and arrays of objects are written; objects are written through their members.
        if !def.fields.is_empty() {
            return;
        }
        let relative = if element.is_empty() {
            // Outside a block, element fields are written only through their array's block.
            if target.resolve(keys, false).is_none() {
                return;
            }
            keys
        } else {
            match keys.strip_prefix(element) {
                Some(rest) if !rest.is_empty() && target.resolve(keys, true).is_some() => rest,
                _ => return,
            }
        };
        // Fields the route sets, and everything below them, are not a rule's to write.
        if (1..=keys.len()).any(|n| docs::resolve_target(target, &keys[..n]).is_some_and(|(d, _)| d.set_by_route)) {
            return;
        }
        let dotted = relative.join(".");
        let (label, detail) = if def.items.is_some() {
            (format!("{dotted}[*]"), format!("{} of objects: element block", def.type_name))
        } else {
            (dotted, def.type_name.clone())
        };
        if out.iter().any(|entry| entry.label == label) {
            return;
        }
        let shapes = docs::resolve_target(target, keys).map(|(_, shapes)| shapes).unwrap_or_default();
        let detail = if shapes.is_empty() { detail } else { format!("{detail} · {}", shapes.join(", ")) };
        out.push(Entry {
            label,
            kind: CompletionItemKind::FIELD,
            detail,
            doc: docs::target_field(target, &keys.join("."), def, &shapes),
        });
    });
    out
}

fn shape_entries(target: &TargetSchema) -> Vec<Entry> {
    target
        .shapes
        .iter()
        .map(|(name, _)| Entry {
            label: name.clone(),
            kind: CompletionItemKind::STRUCT,
            detail: "data shape".to_string(),
            doc: docs::shape(target, name).unwrap_or_default(),
        })
        .collect()
}

fn kind_entries() -> Vec<Entry> {
    [("page", "every page event"), ("screen", "every screen event"), ("track", "track events no named route takes")]
        .into_iter()
        .map(|(name, doc)| Entry {
            label: name.to_string(),
            kind: CompletionItemKind::KEYWORD,
            detail: "Signal event kind".to_string(),
            doc: doc.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_at_end(text: &str) -> Option<Slot> {
        context(text, text.len()).map(|(slot, _, _)| slot)
    }

    #[test]
    fn slots_follow_the_line_before_the_cursor() {
        assert_eq!(slot_at_end("revenue -> data.amount | minor"), Some(Slot::Function));
        assert_eq!(slot_at_end("revenue -> data.amount | minor_units(curr"), Some(Slot::Source));
        assert_eq!(slot_at_end("revenue -> data.am"), Some(Slot::Target));
        assert_eq!(slot_at_end("consent($con"), Some(Slot::Param));
        assert_eq!(slot_at_end("context.pa"), Some(Slot::Source));
        assert_eq!(slot_at_end("routes {\n  page -> page_viewed (con"), Some(Slot::Shape));
        assert_eq!(slot_at_end("remember user.em"), Some(Slot::Target));
        assert_eq!(slot_at_end("\"a -> b | \" -> x"), Some(Slot::Target));
        assert_eq!(slot_at_end("x -> y # | "), None);
        assert_eq!(slot_at_end("include \"com"), None);
    }

    #[test]
    fn element_blocks_complete_element_fields() {
        let target = schema::target("openai_ads").unwrap();
        let labels: Vec<String> = target_entries(target, &["data".to_string(), "contents".to_string()])
            .into_iter()
            .map(|e| e.label)
            .collect();
        assert!(labels.contains(&"quantity".to_string()), "{labels:?}");
        assert!(!labels.contains(&"data.amount".to_string()));
        let top: Vec<String> = target_entries(target, &[]).into_iter().map(|e| e.label).collect();
        assert!(top.contains(&"data.contents[*]".to_string()) && top.contains(&"user.email".to_string()));
        assert!(!top.iter().any(|l| l == "type" || l == "data.type"), "{top:?}");
    }
}
