//! `engine send`: posts an NDJSON stream of Signal events to a relay as a server SDK would: batches of at most 100
//! events and 500 KB to `/v1/batch` with the key as HTTP Basic user name, optionally gzipped, retried on 429, 5xx
//! and connection errors with backoff (honouring Retry-After), never on other 4xx. `--rebase-time` shifts every
//! event's time by the same amount so that the newest is now, so an old recording can be replayed into a relay
//! whose delivery checks OpenAI's 7-day window.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::{usage, Failure};

#[derive(clap::Args)]
pub(super) struct SendArgs {
    /// NDJSON events, one per line; `-` for stdin.
    file: PathBuf,
    /// The relay's base URL, e.g. http://127.0.0.1:8088.
    #[arg(long, required_unless_present = "print")]
    to: Option<String>,
    /// Write the events (after `--rebase-time`) to stdout as NDJSON instead of sending them.
    #[arg(long, conflicts_with = "to")]
    print: bool,
    /// An ingestion key of the relay (sent as the HTTP Basic user name, as Segment's SDKs do).
    #[arg(long)]
    key: Option<String>,
    /// Shift every event's time so that the newest is now (the gaps between events are kept).
    #[arg(long)]
    rebase_time: bool,
    /// Compress request bodies with gzip.
    #[arg(long)]
    gzip: bool,
    /// Events per request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch_size: u16,
    /// Attempts per request before giving up.
    #[arg(long, default_value_t = 8)]
    attempts: u32,
}

/// Request bodies stay under the relay's default batch limit.
const MAX_BODY: usize = 480 * 1024;

#[derive(Default)]
struct Tally {
    sent: usize,
    refused: usize,
    dropped: usize,
    malformed: usize,
}

pub(super) fn send(args: SendArgs) -> Result<u8, Failure> {
    let mut events = read_events(&args.file)?;
    let mut tally = Tally { malformed: events.iter().filter(|e| e.is_err()).count(), ..Tally::default() };
    for (line, error) in events.iter().filter_map(|e| e.as_ref().err()) {
        eprintln!("engine send: line {line}: {error}: skipped");
    }
    let mut events: Vec<Value> = events.drain(..).filter_map(Result::ok).collect();
    if args.rebase_time {
        rebase(&mut events, jiff::Timestamp::now().as_millisecond());
    }
    if args.print {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for event in &events {
            writeln!(out, "{event}").map_err(|e| usage(format!("cannot write: {e}")))?;
        }
        out.flush().map_err(|e| usage(format!("cannot write: {e}")))?;
        return Ok(if tally.malformed > 0 { 1 } else { 0 });
    }
    let to = args.to.as_deref().unwrap_or_default();
    let total = events.len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| usage(format!("cannot start the async runtime: {e}")))?;
    let url = format!("{}/v1/batch", to.trim_end_matches('/'));
    // reqwest's TLS (for an https relay) needs a process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| usage(format!("cannot make an HTTP client: {e}")))?;
    let auth = args
        .key
        .as_ref()
        .map(|key| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))));
    let mut stderr = std::io::stderr();
    for chunk in batches(&events, usize::from(args.batch_size)) {
        let body = serde_json::to_vec(&json!({ "batch": chunk, "sentAt": now_text() }))
            .map_err(|e| usage(format!("cannot encode a batch: {e}")))?;
        let answer = runtime.block_on(post(&client, &url, auth.as_deref(), body, args.gzip, args.attempts))?;
        tally.sent += chunk.len();
        match answer {
            Answer::Taken(body) => {
                for refusal in body["refused"].as_array().into_iter().flatten() {
                    tally.refused += 1;
                    let event = refusal["index"].as_u64().and_then(|i| chunk.get(i as usize));
                    let id = event.and_then(|e| e["messageId"].as_str()).unwrap_or("-");
                    eprintln!("\nengine send: event {id} refused: {}", refusal["error"].as_str().unwrap_or("?"));
                }
                tally.dropped += body["dropped"].as_array().map_or(0, Vec::len);
            }
            Answer::Refused(status, error) => {
                tally.refused += chunk.len();
                eprintln!("\nengine send: a batch of {} events was refused with {status}: {error}", chunk.len());
            }
        }
        let _ = write!(stderr, "\rengine send: {}/{total} events sent, {} refused", tally.sent, tally.refused);
        let _ = stderr.flush();
    }
    eprintln!(
        "\rengine send: {total} events sent: {} taken ({} dropped by the mapping on purpose), {} refused, {} malformed lines",
        tally.sent - tally.refused,
        tally.dropped,
        tally.refused,
        tally.malformed
    );
    Ok(if tally.refused + tally.malformed > 0 { 1 } else { 0 })
}

/// An event of the stream, or the line number and what is wrong with the line.
type Line = Result<Value, (usize, String)>;

fn read_events(file: &PathBuf) -> Result<Vec<Line>, Failure> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let opened = std::fs::File::open(file).map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
        Box::new(std::io::BufReader::new(opened))
    };
    let mut events = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(match serde_json::from_str::<Value>(&line) {
            Ok(event @ Value::Object(_)) => Ok(event),
            Ok(_) => Err((index + 1, "not a JSON object".to_string())),
            Err(error) => Err((index + 1, format!("malformed JSON: {error}"))),
        });
    }
    Ok(events)
}

/// Groups events into requests of at most `size` events and [`MAX_BODY`] bytes.
fn batches(events: &[Value], size: usize) -> Vec<&[Value]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, event) in events.iter().enumerate() {
        let event_bytes = event.to_string().len() + 1;
        if index > start && (index - start == size || bytes + event_bytes > MAX_BODY) {
            out.push(&events[start..index]);
            start = index;
            bytes = 0;
        }
        bytes += event_bytes;
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

const TIME_FIELDS: [&str; 2] = ["timestamp", "originalTimestamp"];

/// Shifts every event's times by the amount that makes the newest `now_ms`.
fn rebase(events: &mut [Value], now_ms: i64) {
    let newest = events
        .iter()
        .flat_map(|e| TIME_FIELDS.iter().filter_map(move |f| e.get(*f)))
        .filter_map(signal_engine::functions::timestamp_ms)
        .max();
    let Some(newest) = newest else { return };
    let shift = now_ms - newest;
    for event in events.iter_mut() {
        for field in TIME_FIELDS {
            if let Some(ms) = event.get(field).and_then(signal_engine::functions::timestamp_ms) {
                if let Ok(time) = jiff::Timestamp::from_millisecond(ms + shift) {
                    event[field] = Value::String(format!("{time:.3}"));
                }
            }
        }
        // A `sentAt` from the recording would make the relay "correct" the shifted times back.
        if let Value::Object(fields) = event {
            fields.remove("sentAt");
        }
    }
}

fn now_text() -> String {
    format!("{:.3}", jiff::Timestamp::now())
}

enum Answer {
    /// 200, with the relay's answer (refused and dropped events by index).
    Taken(Value),
    /// A 4xx other than 429: the batch will never be taken as it is.
    Refused(u16, String),
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    body: Vec<u8>,
    gzip: bool,
    attempts: u32,
) -> Result<Answer, Failure> {
    let body = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&body).and_then(|_| encoder.finish()).map_err(|e| usage(format!("gzip: {e}")))?
    } else {
        body
    };
    let mut backoff = Duration::from_millis(500);
    let mut last_error = String::new();
    for attempt in 1..=attempts.max(1) {
        let mut request = client.post(url).header("content-type", "application/json").body(body.clone());
        if gzip {
            request = request.header("content-encoding", "gzip");
        }
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let wait = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(300)));
                let text = response.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match status {
                    200..=299 => return Ok(Answer::Taken(body)),
                    429 | 500..=599 => {
                        last_error = format!("HTTP {status}: {}", body["error"].as_str().unwrap_or(&text));
                        retry_after.unwrap_or(backoff)
                    }
                    _ => return Ok(Answer::Refused(status, body["error"].as_str().unwrap_or(&text).to_string())),
                }
            }
            Err(error) => {
                last_error = format!("cannot reach {url}: {error}");
                backoff
            }
        };
        if attempt < attempts {
            eprintln!("\nengine send: {last_error}; retrying in {} ms", wait.as_millis());
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    Err(Failure { code: 2, message: format!("engine send: giving up after {attempts} attempts: {last_error}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebasing_keeps_the_gaps_and_makes_the_newest_now() {
        let mut events = vec![
            json!({"timestamp": "2026-11-18T10:00:00Z", "sentAt": "2026-11-18T10:00:01Z"}),
            json!({"originalTimestamp": "2026-11-18T11:00:00.500Z"}),
            json!({"type": "page"}),
        ];
        let now = jiff::Timestamp::from_second(1_900_000_000).unwrap().as_millisecond();
        rebase(&mut events, now);
        assert_eq!(events[1]["originalTimestamp"], "2030-03-17T17:46:40.000Z");
        assert_eq!(events[0]["timestamp"], "2030-03-17T16:46:39.500Z");
        assert!(events[0].get("sentAt").is_none());
        assert_eq!(events[2], json!({"type": "page"}));
    }

    #[test]
    fn batches_hold_at_most_the_size_and_the_body_limit() {
        let small: Vec<Value> = (0..250).map(|i| json!({"i": i})).collect();
        let sizes: Vec<usize> = batches(&small, 100).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let big: Vec<Value> = (0..5).map(|_| json!({"pad": "x".repeat(200 * 1024)})).collect();
        let sizes: Vec<usize> = batches(&big, 100).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }
}
