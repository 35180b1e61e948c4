//! `engine lsp` spoken to as an editor does: JSON-RPC with Content-Length framing over the binary's stdin and
//! stdout. Every wait has a deadline, so a server that hangs fails the test instead of blocking it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);

/// A client holding one server process.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    incoming: Receiver<Value>,
    /// Notifications that arrived while waiting for something else.
    pending: VecDeque<Value>,
    next_id: i64,
}

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the engine binary starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(message) = read_message(&mut reader) {
                if sender.send(message).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Client { child, stdin, incoming, pending: VecDeque::new(), next_id: 1 }
    }

    /// Starts a server and completes the `initialize` handshake; returns the server's `initialize` result.
    fn initialized() -> (Client, Value) {
        Client::initialized_with(Value::Null)
    }

    fn initialized_with(options: Value) -> (Client, Value) {
        let mut client = Client::start();
        let params = json!({"processId": null, "rootUri": null, "capabilities": {}, "initializationOptions": options});
        let result = client.request("initialize", params);
        client.notify("initialized", json!({}));
        (client, result)
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        let stdin = self.stdin.as_mut().expect("stdin is open");
        write!(stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its whole response (`result` or `error`).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + DEADLINE;
        loop {
            let message = self.receive(deadline, method);
            if message.get("id") == Some(&json!(id)) && message.get("method").is_none() {
                return message;
            }
            self.pending.push_back(message);
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let response = self.call(method, params);
        assert!(response.get("error").is_none(), "{method} failed: {response}");
        response["result"].clone()
    }

    fn receive(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        match self.incoming.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => panic!("no answer to {waiting_for} within {DEADLINE:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed stdout while waiting for {waiting_for}"),
        }
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        let is_for_uri = |m: &Value| m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri;
        if let Some(i) = self.pending.iter().position(is_for_uri) {
            let message = self.pending.remove(i).unwrap();
            return message["params"]["diagnostics"].as_array().unwrap().clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let message = self.receive(deadline, &format!("diagnostics for {uri}"));
            if is_for_uri(&message) {
                return message["params"]["diagnostics"].as_array().unwrap().clone();
            }
            self.pending.push_back(message);
        }
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "signalmap", "version": 1, "text": text}}),
        );
    }

    fn hover(&mut self, uri: &str, line: u32, character: u32) -> String {
        let result = self.request("textDocument/hover", position(uri, line, character));
        assert_eq!(result["contents"]["kind"], "markdown", "{result}");
        result["contents"]["value"].as_str().unwrap().to_string()
    }

    fn completion_labels(&mut self, uri: &str, line: u32, character: u32) -> Vec<String> {
        let result = self.request("textDocument/completion", position(uri, line, character));
        let items = result.as_array().or_else(|| result["items"].as_array()).expect("a completion list");
        items.iter().map(|item| item["label"].as_str().unwrap().to_string()).collect()
    }

    /// Sends `exit` (after `shutdown` when asked) and returns the exit code.
    fn exit(mut self, shutdown_first: bool) -> Option<i32> {
        if shutdown_first {
            assert_eq!(self.request("shutdown", Value::Null), Value::Null);
        }
        self.notify("exit", Value::Null);
        self.stdin = None;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the server did not exit within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_message(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length: ") {
            length = value.parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

fn position(uri: &str, line: u32, character: u32) -> Value {
    json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}})
}

/// A fresh directory holding `common.map` (a parameter) beside which the test's `main.map` lives; removed when the
/// test ends, whether it passes or fails.
fn workspace(test: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(&format!("engine-lsp-{test}-")).tempdir().unwrap();
    std::fs::write(dir.path().join("common.map"), "# shared\nparam region: string = \"US\"\n").unwrap();
    dir
}

fn uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// A clean mapping; line 12 has a string with non-BMP and non-ASCII characters before its pipe.
const MAPPING: &str = r#"include "common.map"
param consent_category: string = "marketing"

routes { "Order Completed" -> order_created (contents) }

messageId              -> id
to_unix_ms(timestamp)  -> timestamp_ms
"web"                  -> action_source
context.page.url       -> source_url
consent($consent_category) -> opt_out | not
traits.email           -> user.email | normalize_email | sha256
properties."prix € 😀" -> data.order_id | to_string
traits.phone           -> user.phone_number | e164($region) | sha256

when order_created {
  revenue  -> data.amount | minor_units(currency)
  currency -> data.currency | uppercase
}
property "prix € 😀"
"#;

#[test]
fn initialize_announces_what_the_server_does() {
    let (client, result) = Client::initialized();
    let capabilities = &result["capabilities"];
    assert_eq!(capabilities["textDocumentSync"]["openClose"], true);
    assert_eq!(capabilities["textDocumentSync"]["change"], 1, "full document sync");
    assert_eq!(capabilities["hoverProvider"], true);
    assert_eq!(capabilities["definitionProvider"], true);
    let triggers = capabilities["completionProvider"]["triggerCharacters"].as_array().unwrap();
    for trigger in ["|", "$", "."] {
        assert!(triggers.contains(&json!(trigger)), "{triggers:?}");
    }
    assert_eq!(result["serverInfo"]["name"], "engine");
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn diagnostics_follow_the_document_as_it_changes() {
    let dir = workspace("diagnostics");
    let main = uri(&dir.path().join("main.map"));
    let (mut client, _) = Client::initialized();

    let broken = MAPPING.replace("| to_string", "| to_strin");
    client.open(&main, &broken);
    let diagnostics = client.diagnostics(&main);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let diagnostic = &diagnostics[0];
    assert_eq!(diagnostic["code"], "engine::check::unknown_function");
    assert_eq!(diagnostic["severity"], 1);
    assert_eq!(diagnostic["source"], "engine");
    let message = diagnostic["message"].as_str().unwrap();
    assert!(message.contains("unknown function `to_strin`"), "{message}");
    assert!(message.contains("did you mean `to_string`?"), "{message}");
    // `properties."prix € 😀" -> data.order_id | ` is 46 bytes but 42 UTF-16 code units (€ is 3 bytes and one
    // unit, 😀 is 4 bytes and two units).
    assert_eq!(diagnostic["range"]["start"], json!({"line": 11, "character": 42}));
    assert_eq!(diagnostic["range"]["end"], json!({"line": 11, "character": 50}));
    let hover = client.hover(&main, 10, 58);
    assert!(hover.contains("sha256() :"), "the rest of a broken file still answers hover: {hover}");

    // A ranged edit, placed by UTF-16 position, completes `to_strin`.
    let insert =
        json!({"range": {"start": {"line": 11, "character": 50}, "end": {"line": 11, "character": 50}}, "text": "g"});
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": main, "version": 2}, "contentChanges": [insert]}),
    );
    assert_eq!(client.diagnostics(&main), Vec::<Value>::new(), "the fixed mapping is clean");

    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": main, "version": 3}, "contentChanges": [{"text": "messageId -> id\nroutes {"}]}),
    );
    let syntax = client.diagnostics(&main);
    assert_eq!(syntax[0]["code"], "engine::parse::syntax", "{syntax:#?}");

    client.notify("textDocument/didClose", json!({"textDocument": {"uri": main}}));
    assert_eq!(client.diagnostics(&main), Vec::<Value>::new(), "closing a document clears its diagnostics");
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn diagnostics_in_an_included_file_are_published_for_that_file() {
    let dir = workspace("included");
    std::fs::write(dir.path().join("common.map"), "param region: strng = \"US\"\n").unwrap();
    let main = uri(&dir.path().join("main.map"));
    let common = uri(&dir.path().join("common.map"));
    let (mut client, _) = Client::initialized();
    client.open(&main, MAPPING);
    let diagnostics = client.diagnostics(&common);
    assert_eq!(diagnostics[0]["code"], "engine::check::unknown_param_type", "{diagnostics:#?}");
    assert_eq!(diagnostics[0]["range"]["start"], json!({"line": 0, "character": 14}));

    // The editor's unsaved text of an included file counts, not the file on disk.
    client.open(&common, "param region: string = \"US\"\n");
    assert_eq!(client.diagnostics(&common), Vec::<Value>::new());
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn hover_explains_functions_target_fields_signal_fields_and_parameters() {
    let dir = workspace("hover");
    let main = uri(&dir.path().join("main.map"));
    let (mut client, _) = Client::initialized();
    client.open(&main, MAPPING);

    // `minor_units` on line 16.
    let function = client.hover(&main, 15, 30);
    insta::assert_snapshot!("hover_minor_units", function);

    // `amount` of `data.amount` on line 16.
    let target = client.hover(&main, 15, 20);
    assert!(target.starts_with("**`data.amount`** · integer · optional"), "{target}");
    assert!(target.contains("minor units"), "{target}");
    assert!(target.contains("in data shapes: `contents`"), "{target}");

    let required = client.hover(&main, 6, 28);
    assert!(required.contains("**`timestamp_ms`** · integer · required"), "{required}");

    let email = client.hover(&main, 10, 9);
    assert!(email.starts_with("**`traits.email`** · string"), "{email}");
    assert!(email.contains("**Personal data:**"), "{email}");

    let url = client.hover(&main, 8, 14);
    assert!(url.starts_with("**`context.page.url`** · string · on every event"), "{url}");

    let param = client.hover(&main, 12, 55);
    assert!(param.contains("**`$region`** · string = `\"US\"`"), "{param}");
    assert!(param.contains("`common.map` line 2"), "{param}");

    let missing = client.request("textDocument/hover", position(&main, 2, 0));
    assert_eq!(missing, Value::Null, "nothing to say on an empty line");
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn completion_offers_functions_targets_parameters_and_signal_fields() {
    let dir = workspace("completion");
    let main = uri(&dir.path().join("main.map"));
    let (mut client, _) = Client::initialized();
    // The line being typed does not parse, as when a user types it.
    let typing = format!("{MAPPING}traits.email -> user.email | \n");
    client.open(&main, &typing);
    let line = typing.lines().count() as u32 - 1;

    let after_bar = client.completion_labels(&main, line, 29);
    assert!(after_bar.contains(&"sha256".to_string()), "{after_bar:?}");
    assert!(!after_bar.contains(&"user.email".to_string()), "{after_bar:?}");

    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": main, "version": 2}, "contentChanges": [{"text": format!("{MAPPING}revenue -> data.am\nconsent($")}]}),
    );
    let line = MAPPING.lines().count() as u32;
    let after_arrow = client.completion_labels(&main, line, 18);
    for field in ["data.amount", "user.email", "timestamp_ms", "data.contents[*]"] {
        assert!(after_arrow.contains(&field.to_string()), "{field} in {after_arrow:?}");
    }
    assert!(!after_arrow.contains(&"data.type".to_string()), "set by the route table: {after_arrow:?}");

    let after_dollar = client.completion_labels(&main, line + 1, 9);
    assert!(after_dollar.contains(&"consent_category".to_string()), "{after_dollar:?}");
    assert!(after_dollar.contains(&"region".to_string()), "declared in the included file: {after_dollar:?}");

    let source = client.completion_labels(&main, line, 0);
    assert!(source.contains(&"context.page.url".to_string()) && source.contains(&"to_unix_ms".to_string()));
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn definition_leads_to_included_files_and_parameter_declarations() {
    let dir = workspace("definition");
    let main = uri(&dir.path().join("main.map"));
    let common = uri(&dir.path().join("common.map"));
    let (mut client, _) = Client::initialized();
    client.open(&main, MAPPING);

    let include = client.request("textDocument/definition", position(&main, 0, 12));
    assert_eq!(include["uri"], common.as_str());

    let region = client.request("textDocument/definition", position(&main, 12, 53));
    assert_eq!(region["uri"], common.as_str());
    assert_eq!(region["range"], json!({"start": {"line": 1, "character": 6}, "end": {"line": 1, "character": 12}}));

    let local = client.request("textDocument/definition", position(&main, 9, 12));
    assert_eq!(local["uri"], main.as_str());
    assert_eq!(local["range"]["start"], json!({"line": 1, "character": 6}));
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn bad_requests_get_errors_and_the_server_carries_on() {
    let dir = workspace("errors");
    let main = uri(&dir.path().join("main.map"));
    let (mut client, _) = Client::initialized();
    client.open(&main, MAPPING);

    let unknown = client.call("textDocument/rename", position(&main, 0, 0));
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    let malformed = client.call("textDocument/hover", json!({"textDocument": 3}));
    assert_eq!(malformed["error"]["code"], -32602, "{malformed}");
    let unopened = client.request("textDocument/hover", position("file:///nowhere/x.map", 0, 0));
    assert_eq!(unopened, Value::Null);
    let beyond = client.request("textDocument/hover", position(&main, 900, 900));
    assert_eq!(beyond, Value::Null);
    client.notify("textDocument/didChange", json!({"textDocument": "nonsense"}));

    assert!(client.hover(&main, 10, 58).contains("sha256"), "still answering");
    assert_eq!(client.request("shutdown", Value::Null), Value::Null);
    let after = client.call("textDocument/hover", position(&main, 10, 58));
    assert_eq!(after["error"]["code"], -32600, "requests after shutdown are refused: {after}");
    assert_eq!(client.exit(false), Some(0));
}

#[test]
fn initialization_options_give_parameter_values() {
    let dir = workspace("options");
    let main = uri(&dir.path().join("main.map"));
    let text = MAPPING.replace("param consent_category: string = \"marketing\"", "param consent_category: string");

    let (mut client, _) = Client::initialized();
    client.open(&main, &text);
    let diagnostics = client.diagnostics(&main);
    assert_eq!(diagnostics[0]["code"], "engine::check::missing_param", "{diagnostics:#?}");
    assert_eq!(client.exit(true), Some(0));

    let (mut client, _) = Client::initialized_with(json!({"params": {"consent_category": "ads"}}));
    client.open(&main, &text);
    assert_eq!(client.diagnostics(&main), Vec::<Value>::new());
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn exit_without_shutdown_exits_with_code_1() {
    let (client, _) = Client::initialized();
    assert_eq!(client.exit(false), Some(1));
}

#[test]
fn formatting_gives_engine_fmt_layout_and_nothing_for_broken_text() {
    let dir = workspace("formatting");
    let main = uri(&dir.path().join("main.map"));
    let (mut client, capabilities) = Client::initialized();
    assert_eq!(capabilities["capabilities"]["documentFormattingProvider"], true);
    let messy = "routes { page -> page_viewed }\nmessageId    ->   id # the id\n\"web\" -> action_source\n";
    client.open(&main, messy);
    let options = json!({"tabSize": 2, "insertSpaces": true});
    let edits = client.request("textDocument/formatting", json!({"textDocument": {"uri": main}, "options": options}));
    let edits = edits.as_array().expect("a list of edits");
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert_eq!(edits[0]["newText"], signal_engine::format::format(messy).unwrap());
    assert_eq!(edits[0]["range"]["start"], json!({"line": 0, "character": 0}));
    assert_eq!(edits[0]["range"]["end"], json!({"line": 3, "character": 0}));

    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": main, "version": 2}, "contentChanges": [{"text": "messageId -> \n"}]}),
    );
    let edits = client.request("textDocument/formatting", json!({"textDocument": {"uri": main}, "options": options}));
    assert_eq!(edits, Value::Null, "broken text is left as it is");
    assert_eq!(client.exit(true), Some(0));
}

#[test]
fn a_malformed_frame_gets_a_parse_error_and_the_session_goes_on() {
    let (mut client, _) = Client::initialized();
    {
        let stdin = client.stdin.as_mut().expect("stdin is open");
        // Not JSON; then JSON that is no JSON-RPC message; then a header block without a Content-Length.
        write!(stdin, "Content-Length: 9\r\n\r\n{{not json").unwrap();
        write!(stdin, "Content-Length: 2\r\n\r\n[]").unwrap();
        write!(stdin, "Content-Type: text/plain\r\n\r\n").unwrap();
        stdin.flush().unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..3 {
        let error = client.receive(deadline, "a parse error");
        assert_eq!(error["error"]["code"], json!(-32700), "{error}");
        assert_eq!(error["id"], Value::Null, "{error}");
    }
    // The session is intact: documents are still checked and requests answered.
    client.open("file:///tmp/after-garbage.map", "messageId -> id | sha265\n");
    let diagnostics = client.diagnostics("file:///tmp/after-garbage.map");
    assert!(diagnostics.iter().any(|d| d["code"] == "engine::check::unknown_function"), "{diagnostics:?}");
    assert_eq!(client.exit(true), Some(0));
}
