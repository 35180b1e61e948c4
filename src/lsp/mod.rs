//! `engine lsp`: a language server for mapping files over stdio. It publishes the checker's diagnostics as
//! documents change, and answers hover, completion and go-to-definition. Synchronous by design (rust-analyzer's
//! `lsp-server`): one thread handles one message at a time, which a file of a few hundred lines allows easily.

mod analysis;
mod completion;
mod docs;
mod text;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, Exit, Notification as _, PublishDiagnostics,
};
use lsp_types::request::{Completion, Formatting, GotoDefinition, HoverRequest, Request as _, Shutdown};
use lsp_types::{
    CompletionOptions, CompletionParams, CompletionResponse, DiagnosticRelatedInformation, DiagnosticSeverity,
    DidChangeTextDocumentParams, DidCloseTextDocumentParams, DidOpenTextDocumentParams, GotoDefinitionParams,
    GotoDefinitionResponse, Hover, HoverContents, HoverParams, HoverProviderCapability, InitializeResult, Location,
    MarkupContent, MarkupKind, NumberOrString, OneOf, PublishDiagnosticsParams, Range, ServerCapabilities, ServerInfo,
    TextDocumentPositionParams, TextDocumentSyncCapability, TextDocumentSyncKind, TextDocumentSyncOptions, Uri,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use signal_engine::ast::{FileId, Segment, Span};
use signal_engine::diagnostic::{Diagnostic, Severity};
use signal_engine::files::FileLoader;
use signal_engine::source::{SourceLoader, Sources};
use signal_engine::{functions, schema, CompileOptions};

use analysis::{blocks_at, hit_at, Hit, Workspace};
use text::{normalize, path_to_uri, uri_to_path, LineIndex};

/// Why the server stopped other than by `shutdown` then `exit`.
#[derive(Debug)]
pub enum LspError {
    /// The client sent `exit` without `shutdown` first; the protocol asks for exit code 1.
    ExitWithoutShutdown,
    /// The client's input ended without `exit`.
    Disconnected,
    /// The client broke the protocol (e.g. sent no `initialize` first) or stdio failed.
    Protocol(String),
}

impl fmt::Display for LspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LspError::ExitWithoutShutdown => f.write_str("the client sent `exit` without `shutdown`"),
            LspError::Disconnected => f.write_str("the client closed the connection without `exit`"),
            LspError::Protocol(message) => write!(f, "protocol error: {message}"),
        }
    }
}

impl From<lsp_server::ProtocolError> for LspError {
    fn from(error: lsp_server::ProtocolError) -> Self {
        if error.channel_is_disconnected() {
            LspError::Disconnected
        } else {
            LspError::Protocol(error.to_string())
        }
    }
}

/// Serves one client on stdin and stdout until it sends `exit`.
pub fn serve_stdio() -> Result<(), LspError> {
    let (connection, io_threads) = transport::stdio();
    let served = serve(&connection);
    if matches!(served, Err(LspError::ExitWithoutShutdown | LspError::Protocol(_))) {
        return served;
    }
    // The reader thread has stopped (after `exit`, or at the end of the input), so joining cannot block once the
    // connection is dropped; its error says why the input ended.
    drop(connection);
    let joined = io_threads.join().map_err(|e| LspError::Protocol(e.to_string()));
    match (served, joined) {
        (Ok(()), joined) => joined,
        (Err(_), Err(reader)) => Err(reader),
        (Err(served), Ok(())) => Err(served),
    }
}

fn capabilities() -> ServerCapabilities {
    ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
            open_close: Some(true),
            change: Some(TextDocumentSyncKind::FULL),
            ..TextDocumentSyncOptions::default()
        })),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(["|", ">", "$", ".", "("].map(String::from).to_vec()),
            ..CompletionOptions::default()
        }),
        definition_provider: Some(OneOf::Left(true)),
        document_formatting_provider: Some(OneOf::Left(true)),
        ..ServerCapabilities::default()
    }
}

fn serve(connection: &Connection) -> Result<(), LspError> {
    let (id, params) = connection.initialize_start()?;
    let result = InitializeResult {
        capabilities: capabilities(),
        server_info: Some(ServerInfo {
            name: "engine".to_string(),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
        }),
    };
    let result = serde_json::to_value(result).map_err(|e| LspError::Protocol(e.to_string()))?;
    connection.initialize_finish(id, result)?;
    let mut server = Server::new(&params);
    let send = |message: Message| {
        connection.sender.send(message).map_err(|_| LspError::Protocol("cannot write to stdout".to_string()))
    };
    for message in &connection.receiver {
        match message {
            Message::Request(request) if server.shut_down => send(
                Response::new_err(request.id, ErrorCode::InvalidRequest as i32, "the server is shutting down".into())
                    .into(),
            )?,
            Message::Request(request) if request.method == Shutdown::METHOD => {
                server.shut_down = true;
                send(Response::new_ok(request.id, Value::Null).into())?;
            }
            Message::Request(request) => send(server.request(request).into())?,
            Message::Notification(notification) if notification.method == Exit::METHOD => {
                return if server.shut_down { Ok(()) } else { Err(LspError::ExitWithoutShutdown) };
            }
            Message::Notification(notification) => {
                for out in server.notification(notification) {
                    send(out.into())?;
                }
            }
            // The server sends no requests, so no responses are expected.
            Message::Response(_) => {}
        }
    }
    Err(LspError::Disconnected)
}

/// One open document, as the editor holds it.
struct Document {
    uri: Uri,
    text: String,
    version: i32,
}

impl Document {
    /// The name the compiler knows the document by: its path, so that includes resolve beside it.
    fn name(&self) -> String {
        uri_to_path(&self.uri)
            .map_or_else(|| self.uri.as_str().to_string(), |p| normalize(&p).to_string_lossy().into_owned())
    }
}

struct Server {
    documents: BTreeMap<String, Document>,
    /// What was last published for each URI, to send only changes and to clear what is gone.
    published: BTreeMap<String, Vec<lsp_types::Diagnostic>>,
    options: CompileOptions,
    shut_down: bool,
}

type Failure = (ErrorCode, String);

impl Server {
    /// `initializationOptions.params` gives parameter values, as `engine check --params` does.
    fn new(initialize: &Value) -> Server {
        let params = initialize
            .pointer("/initializationOptions/params")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(Map::new);
        Server {
            documents: BTreeMap::new(),
            published: BTreeMap::new(),
            options: CompileOptions { params },
            shut_down: false,
        }
    }

    fn request(&mut self, request: Request) -> Response {
        let id = request.id.clone();
        match panic::catch_unwind(AssertUnwindSafe(|| self.dispatch(request))) {
            Ok(Ok(value)) => Response::new_ok(id, value),
            Ok(Err((code, message))) => Response::new_err(id, code as i32, message),
            Err(_) => {
                Response::new_err(id, ErrorCode::InternalError as i32, "the server failed on this request".into())
            }
        }
    }

    fn dispatch(&mut self, request: Request) -> Result<Value, Failure> {
        let value = match request.method.as_str() {
            HoverRequest::METHOD => {
                let params: HoverParams = params(&request)?;
                serde_json::to_value(self.hover(&params.text_document_position_params))
            }
            Completion::METHOD => {
                let params: CompletionParams = params(&request)?;
                serde_json::to_value(self.completion(&params.text_document_position))
            }
            GotoDefinition::METHOD => {
                let params: GotoDefinitionParams = params(&request)?;
                serde_json::to_value(self.definition(&params.text_document_position_params))
            }
            Formatting::METHOD => {
                let params: lsp_types::DocumentFormattingParams = params(&request)?;
                serde_json::to_value(self.formatting(&params.text_document.uri))
            }
            other => return Err((ErrorCode::MethodNotFound, format!("`engine lsp` does not handle `{other}`"))),
        };
        value.map_err(|e| (ErrorCode::InternalError, e.to_string()))
    }

    /// Handles a notification; returns the notifications to send back.
    fn notification(&mut self, notification: Notification) -> Vec<Notification> {
        let method = notification.method.clone();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.handle_notification(notification)));
        match outcome {
            Ok(Ok(changed)) if changed => self.publish(),
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(message)) => {
                eprintln!("engine lsp: ignored `{method}`: {message}");
                Vec::new()
            }
            Err(_) => {
                eprintln!("engine lsp: failed on `{method}`");
                Vec::new()
            }
        }
    }

    /// Applies a document notification; `Ok(true)` when documents changed.
    fn handle_notification(&mut self, notification: Notification) -> Result<bool, String> {
        match notification.method.as_str() {
            DidOpenTextDocument::METHOD => {
                let params: DidOpenTextDocumentParams =
                    serde_json::from_value(notification.params).map_err(|e| e.to_string())?;
                let document = params.text_document;
                self.documents.insert(
                    document.uri.as_str().to_string(),
                    Document { uri: document.uri, text: document.text, version: document.version },
                );
                Ok(true)
            }
            DidChangeTextDocument::METHOD => {
                let params: DidChangeTextDocumentParams =
                    serde_json::from_value(notification.params).map_err(|e| e.to_string())?;
                let document = self
                    .documents
                    .get_mut(params.text_document.uri.as_str())
                    .ok_or_else(|| format!("{} is not open", params.text_document.uri.as_str()))?;
                for change in params.content_changes {
                    match change.range {
                        // Clients may send ranged edits even to a full-sync server; apply them rather than lose text.
                        Some(range) => {
                            let index = LineIndex::new(&document.text);
                            let (start, end) = (index.offset(range.start), index.offset(range.end));
                            document.text.replace_range(start..end.max(start), &change.text);
                        }
                        None => document.text = change.text,
                    }
                }
                document.version = params.text_document.version;
                Ok(true)
            }
            DidCloseTextDocument::METHOD => {
                let params: DidCloseTextDocumentParams =
                    serde_json::from_value(notification.params).map_err(|e| e.to_string())?;
                Ok(self.documents.remove(params.text_document.uri.as_str()).is_some())
            }
            // `initialized`, `didSave`, `$/cancelRequest` (every request is answered before the next is read) and
            // anything else need nothing from this server.
            _ => Ok(false),
        }
    }

    fn loader(&self) -> EditorLoader {
        let open =
            self.documents.values().filter_map(|d| Some((normalize(&uri_to_path(&d.uri)?), d.text.clone()))).collect();
        EditorLoader { open }
    }

    /// Compiles every open document and publishes, per file, the diagnostics that changed. A diagnostic in an
    /// included file is published for that file. A document that another open document includes is checked as
    /// part of that one, not alone, where a fragment would only show that it has no routes.
    fn publish(&mut self) -> Vec<Notification> {
        let loader = self.loader();
        let mut current: BTreeMap<String, (Uri, Vec<lsp_types::Diagnostic>)> = BTreeMap::new();
        let mut compiled = Vec::new();
        for document in self.documents.values() {
            current.entry(document.uri.as_str().to_string()).or_insert_with(|| (document.uri.clone(), Vec::new()));
            let result = signal_engine::compile(&document.name(), &document.text, &loader, &self.options);
            let includes: Vec<String> = result.sources.files().skip(1).map(|(_, file)| file.name.clone()).collect();
            compiled.push((document, result, includes));
        }
        let included_elsewhere = |document: &Document, own_includes: &[String]| {
            let name = document.name();
            compiled.iter().any(|(other, _, includes)| {
                other.uri != document.uri && includes.contains(&name) && !own_includes.contains(&other.name())
            })
        };
        for (document, result, includes) in &compiled {
            if included_elsewhere(document, includes) {
                continue;
            }
            let uri_of = |file: FileId| source_uri(&result.sources, file, &document.uri);
            for diagnostic in &result.diagnostics {
                let Some(uri) = uri_of(diagnostic.primary.span.file) else { continue };
                let converted = to_lsp(diagnostic, &result.sources, &uri_of);
                let (_, list) = current.entry(uri.as_str().to_string()).or_insert_with(|| (uri.clone(), Vec::new()));
                if !list.contains(&converted) {
                    list.push(converted);
                }
            }
        }
        let mut out = Vec::new();
        for (key, (uri, diagnostics)) in &current {
            if self.published.get(key) != Some(diagnostics) {
                let version = self.documents.get(key).map(|d| d.version);
                out.push(publish_notification(uri.clone(), diagnostics.clone(), version));
            }
        }
        for key in self.published.keys().filter(|k| !current.contains_key(*k)) {
            if let Ok(uri) = key.parse::<Uri>() {
                out.push(publish_notification(uri, Vec::new(), None));
            }
        }
        self.published = current.into_iter().map(|(key, (_, diagnostics))| (key, diagnostics)).collect();
        out
    }

    /// The document at `uri` with the files it includes, when it is open.
    fn workspace(&self, uri: &Uri) -> Option<(&Document, Workspace)> {
        let document = self.documents.get(uri.as_str())?;
        let workspace = Workspace::load(&document.name(), &document.text, &self.loader());
        Some((document, workspace))
    }

    fn hover(&self, at: &TextDocumentPositionParams) -> Option<Hover> {
        let (document, workspace) = self.workspace(&at.text_document.uri)?;
        hover_at(&document.name(), &document.text, &workspace, at.position)
    }

    /// The document in `engine fmt`'s layout, as one edit replacing the whole text; nothing while it has syntax
    /// errors (the editor keeps the text as it is, and the diagnostics say why).
    fn formatting(&self, uri: &Uri) -> Option<Vec<lsp_types::TextEdit>> {
        let (document, _) = self.workspace(uri)?;
        let formatted = signal_engine::format::format(&document.text).ok()?;
        if formatted == document.text {
            return Some(Vec::new());
        }
        let range = LineIndex::new(&document.text).range(0, document.text.len());
        Some(vec![lsp_types::TextEdit { range, new_text: formatted }])
    }

    fn completion(&self, at: &TextDocumentPositionParams) -> Option<CompletionResponse> {
        let (document, workspace) = self.workspace(&at.text_document.uri)?;
        let offset = LineIndex::new(&document.text).offset(at.position);
        Some(CompletionResponse::Array(completion::complete(&document.text, offset, &workspace)))
    }

    fn definition(&self, at: &TextDocumentPositionParams) -> Option<GotoDefinitionResponse> {
        let (document, workspace) = self.workspace(&at.text_document.uri)?;
        let offset = LineIndex::new(&document.text).offset(at.position);
        let location = match hit_at(&workspace.root().items, offset)? {
            Hit::Include(include) => {
                let path = resolve_include(&document.name(), &include.path.value);
                let open = self.loader().open.contains_key(&path);
                if !open && !path.is_file() {
                    return None;
                }
                Location::new(path_to_uri(&path)?, Range::default())
            }
            Hit::ParamRef(name) => self.param_location(document, &workspace, &name.name)?,
            Hit::ParamDecl(decl) => self.param_location(document, &workspace, &decl.name.name)?,
            _ => return None,
        };
        Some(GotoDefinitionResponse::Scalar(location))
    }

    fn param_location(&self, document: &Document, workspace: &Workspace, name: &str) -> Option<Location> {
        let (file, decl) = workspace.param(name)?;
        let uri = if std::ptr::eq(file, workspace.root()) {
            document.uri.clone()
        } else {
            path_to_uri(Path::new(&file.name))?
        };
        Some(Location::new(uri, LineIndex::new(&file.text).range(decl.name.span.start, decl.name.span.end)))
    }
}

/// The hover text at `position` of the root document of `workspace` (named `document_name`, beside which its
/// includes resolve).
fn hover_at(document_name: &str, text: &str, workspace: &Workspace, position: lsp_types::Position) -> Option<Hover> {
    let index = LineIndex::new(text);
    let offset = index.offset(position);
    let target = workspace.target_schema();
    let hit = hit_at(&workspace.root().items, offset)?;
    let (markdown, span) = match hit {
        Hit::Function(name) => (docs::function(functions::find(&name.name)?), name.span),
        Hit::ParamRef(name) => {
            let (file, decl) = workspace.param(&name.name)?;
            (docs::param(decl, &file.location(decl.name.span.start)), name.span)
        }
        Hit::ParamDecl(decl) => (docs::param(decl, &workspace.root().location(decl.name.span.start)), decl.name.span),
        Hit::SourcePath(path, segment) => {
            let keys = keys(&path.segments[..=segment]);
            let input = schema::input();
            let in_element = !blocks_at(text, path.span.start).elements.is_empty()
                && (path.segments.len() == 1 || keys.first().is_some_and(|k| input.field(k).is_none()));
            let span = path.segments[segment].span();
            (docs::source_path(&keys, path.element || in_element), Span { start: path.span.start, ..span })
        }
        Hit::TargetPath(path, segment) => {
            let element = blocks_at(text, path.span.start).element_keys();
            let own = keys(&path.segments[..=segment]);
            let full: Vec<String> = element.iter().chain(&own).cloned().collect();
            let shown =
                if element.is_empty() { own.join(".") } else { format!("{}[*].{}", element.join("."), own.join(".")) };
            let markdown = match docs::resolve_target(target, &full) {
                Some((def, shapes)) => docs::target_field(target, &shown, def, &shapes),
                None => format!("OpenAI events have no field `{shown}` in the `{}` target schema.\n", target.name),
            };
            let span = path.segments[segment].span();
            (markdown, Span { start: path.span.start, ..span })
        }
        Hit::Include(include) => {
            let resolved = resolve_include(document_name, &include.path.value);
            let state = if resolved.is_file() { "" } else { " (it cannot be read)" };
            (format!("Includes `{}`{state}.\n", resolved.display()), include.path.span)
        }
        Hit::TargetSchema(name) => (docs::target_schema(&name.name)?, name.span),
        Hit::EventType(name) => {
            let markdown = docs::event_type(target, &name.name).or_else(|| docs::shape(target, &name.name))?;
            (markdown, name.span)
        }
        Hit::Shape(name) => (docs::shape(target, &name.name)?, name.span),
    };
    Some(Hover {
        contents: HoverContents::Markup(MarkupContent { kind: MarkupKind::Markdown, value: markdown }),
        range: Some(index.range(span.start, span.end)),
    })
}

fn params<P: DeserializeOwned>(request: &Request) -> Result<P, Failure> {
    serde_json::from_value(request.params.clone())
        .map_err(|e| (ErrorCode::InvalidParams, format!("invalid parameters for `{}`: {e}", request.method)))
}

fn keys(segments: &[Segment]) -> Vec<String> {
    segments
        .iter()
        .filter_map(|s| match s {
            Segment::Key { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The file `include "path"` names when written in the file named `from`, as the compiler resolves it.
fn resolve_include(from: &str, path: &str) -> PathBuf {
    normalize(&Path::new(from).parent().unwrap_or(Path::new("")).join(path))
}

/// Reads included files from the editor's open documents first, so that unsaved edits count, then from disk.
struct EditorLoader {
    open: HashMap<PathBuf, String>,
}

impl SourceLoader for EditorLoader {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String> {
        let full = resolve_include(from, path);
        let name = full.to_string_lossy().into_owned();
        if let Some(text) = self.open.get(&full) {
            return Ok((name, text.clone()));
        }
        FileLoader.load(from, path).map(|(_, text)| (name, text))
    }
}

/// The URI of a file one compilation read: the document itself, or an included file on disk.
fn source_uri(sources: &Sources, file: FileId, root: &Uri) -> Option<Uri> {
    if file == FileId(0) {
        return Some(root.clone());
    }
    path_to_uri(Path::new(&sources.get(file).name))
}

fn to_lsp(diagnostic: &Diagnostic, sources: &Sources, uri_of: &dyn Fn(FileId) -> Option<Uri>) -> lsp_types::Diagnostic {
    let range = |span: Span| LineIndex::new(&sources.get(span.file).text).range(span.start, span.end);
    let mut message = diagnostic.message.clone();
    if !diagnostic.primary.message.is_empty() {
        message.push('\n');
        message.push_str(&diagnostic.primary.message);
    }
    if let Some(help) = &diagnostic.help {
        message.push_str("\nhelp: ");
        message.push_str(help);
    }
    let related: Vec<DiagnosticRelatedInformation> = diagnostic
        .context
        .iter()
        .filter_map(|label| {
            Some(DiagnosticRelatedInformation {
                location: Location::new(uri_of(label.span.file)?, range(label.span)),
                message: label.message.clone(),
            })
        })
        .collect();
    lsp_types::Diagnostic {
        range: range(diagnostic.primary.span),
        severity: Some(match diagnostic.severity {
            Severity::Error => DiagnosticSeverity::ERROR,
            Severity::Warning => DiagnosticSeverity::WARNING,
        }),
        code: Some(NumberOrString::String(diagnostic.code.0.to_string())),
        source: Some("engine".to_string()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        ..lsp_types::Diagnostic::default()
    }
}

fn publish_notification(uri: Uri, diagnostics: Vec<lsp_types::Diagnostic>, version: Option<i32>) -> Notification {
    Notification::new(PublishDiagnostics::METHOD.to_string(), PublishDiagnosticsParams { uri, diagnostics, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped mapping and every diagnostics fixture (most of them broken on purpose), at every position
    /// of every line and one past its end: hover and the completion context answer without panicking, and so
    /// do whole completion lists at each line's start and end.
    #[test]
    fn every_position_of_every_fixture_answers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in ["mappings", "tests/fixtures/diagnostics"] {
            let entries = std::fs::read_dir(root.join(dir)).unwrap();
            files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "map")));
        }
        assert!(files.len() > 20);
        let mut answered = 0;
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.to_string_lossy().into_owned();
            let workspace = Workspace::load(&name, &text, &FileLoader);
            let index = LineIndex::new(&text);
            for (line, content) in text.split('\n').enumerate() {
                for character in 0..=content.encode_utf16().count() + 1 {
                    let position = lsp_types::Position::new(line as u32, character as u32);
                    answered += usize::from(hover_at(&name, &text, &workspace, position).is_some());
                    let offset = index.offset(position);
                    completion::context(&text, offset);
                    if character == 0 || character == content.encode_utf16().count() {
                        completion::complete(&text, offset, &workspace);
                    }
                }
            }
        }
        assert!(answered > 1000, "hover answered at only {answered} positions");
    }
}
