//! `engine run`: NDJSON Signal events from files or stdin mapped to OpenAI events on stdout, one per line or in
//! request bodies of at most 1,000; drops, rejections and warnings reported as JSON lines naming the file and line.

use std::fs;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use signal_engine::identity::MemoryStore;
use signal_engine::run::{DropReason, Outcome, RejectReason};
use signal_engine::Context;

use super::{load_mapping, now_ms, usage, write_or_quit, Color, Failure, MappingArgs};

/// The most events one OpenAI request may carry.
pub(super) const MAX_BATCH: usize = 1000;

pub(super) struct RunArgs {
    pub(super) inputs: Vec<PathBuf>,
    pub(super) mapping: MappingArgs,
    pub(super) stateless: bool,
    pub(super) batch: bool,
    pub(super) rejects: Option<PathBuf>,
    pub(super) identity_capacity: usize,
    pub(super) identity_memory: usize,
}

/// Counts for the closing summary.
#[derive(Default)]
struct Summary {
    lines: usize,
    mapped: usize,
    unmapped: usize,
    identify: usize,
    rejected: usize,
    malformed: usize,
    warnings: usize,
}

pub(super) fn run(args: RunArgs, color: Color) -> Result<u8, Failure> {
    let Some(compiled) = load_mapping(args.mapping.map.as_deref(), args.mapping.params.as_deref(), "run", color)?
    else {
        return Ok(1);
    };
    let Some(plan) = compiled.plan.as_ref() else { return Ok(1) };
    let now_ms = now_ms(args.mapping.now.as_deref())?;
    let mut reports: Box<dyn Write> = match &args.rejects {
        Some(path) => Box::new(BufWriter::new(
            fs::File::create(path).map_err(|e| usage(format!("cannot create {}: {e}", path.display())))?,
        )),
        None => Box::new(BufWriter::new(io::stderr().lock())),
    };
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut memory = MemoryStore::bounded(args.identity_capacity, args.identity_memory.saturating_mul(1 << 20));
    let mut summary = Summary::default();
    let mut batch: Vec<String> = Vec::new();
    for input in inputs(&args.inputs) {
        let (file, reader) = input?;
        let file = file.as_deref();
        let mut lines = Lines::new(reader);
        let mut line_number = 0;
        loop {
            let bytes =
                lines.next_line().map_err(|e| usage(format!("cannot read {}: {e}", file.unwrap_or("stdin"))))?;
            let Some(bytes) = bytes else { break };
            line_number += 1;
            let Ok(text) = std::str::from_utf8(bytes) else {
                summary.lines += 1;
                summary.malformed += 1;
                report(
                    &mut reports,
                    file,
                    json!({"line": line_number, "outcome": "malformed", "message": "not UTF-8"}),
                )?;
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            summary.lines += 1;
            let mut context =
                if args.stateless { Context::stateless(now_ms) } else { Context::with_identity(now_ms, &mut memory) };
            match plan.apply_str(text, &mut context) {
                Outcome::Mapped(mapped) => {
                    summary.mapped += 1;
                    for warning in &mapped.warnings {
                        summary.warnings += 1;
                        report(
                            &mut reports,
                            file,
                            json!({"line": line_number, "outcome": "warning", "field": warning.field, "rule": warning.rule, "message": warning.message}),
                        )?;
                    }
                    if args.batch {
                        batch.push(mapped.json);
                        if batch.len() == MAX_BATCH {
                            write_batch(&mut out, &mut batch)?;
                        }
                    } else {
                        write_or_quit(&mut out, mapped.json.as_bytes())?;
                        write_or_quit(&mut out, b"\n")?;
                    }
                }
                Outcome::Dropped(dropped) => {
                    match dropped.reason {
                        DropReason::Unmapped => summary.unmapped += 1,
                        // An alias, like an identify, only feeds identity memory.
                        DropReason::Identify | DropReason::Alias => summary.identify += 1,
                        // A reason a newer library adds is still a drop.
                        _ => summary.unmapped += 1,
                    }
                    report(
                        &mut reports,
                        file,
                        json!({"line": line_number, "outcome": "dropped", "reason": dropped.reason, "message": dropped.message}),
                    )?;
                }
                Outcome::Rejected(rejected) => {
                    if rejected.reason == RejectReason::InvalidInput {
                        summary.malformed += 1;
                        report(
                            &mut reports,
                            file,
                            json!({"line": line_number, "outcome": "malformed", "message": rejected.message}),
                        )?;
                    } else {
                        summary.rejected += 1;
                        summary.warnings += rejected.warnings.len();
                        let mut record = serde_json::to_value(&rejected).unwrap_or(Value::Null);
                        if let Value::Object(map) = &mut record {
                            map.insert("line".into(), json!(line_number));
                            map.insert("outcome".into(), json!("rejected"));
                        }
                        report(&mut reports, file, record)?;
                    }
                }
                // The library marks its outcomes open to additions; this build knows every one it can return.
                _ => {}
            }
        }
    }
    if !batch.is_empty() {
        write_batch(&mut out, &mut batch)?;
    }
    out.flush().map_err(|e| usage(format!("cannot write output: {e}")))?;
    let text = format!(
        "engine run: {} events: {} mapped, {} dropped ({} unmapped, {} identify), {} rejected, {} malformed; {} warnings\n",
        summary.lines,
        summary.mapped,
        summary.unmapped + summary.identify,
        summary.unmapped,
        summary.identify,
        summary.rejected,
        summary.malformed,
        summary.warnings,
    );
    reports.flush().map_err(|e| usage(format!("cannot write reports: {e}")))?;
    drop(reports);
    eprint!("{text}");
    // Freeing a memory of up to millions of visitors one by one takes a noticeable part of a run; the process ends
    // right after, and the operating system takes the memory back whole.
    std::mem::forget(memory);
    Ok(0)
}

/// The lines of a stream, each with its line break as `read_until` gives it, lent from the reader's large buffer
/// where they lie whole in it and copied only where one straddles two reads. Lines are found with the `memchr`
/// crate's vectorised search: std's `read_until` searches with the portable one and copies every line, which took
/// 4 % of a stateless run.
struct Lines<R> {
    reader: R,
    /// The part of a line that began in an earlier read.
    carried: Vec<u8>,
    /// Bytes of the reader's buffer lent out as the last line, consumed at the next call.
    lent: usize,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Self {
        Lines { reader, carried: Vec::new(), lent: 0 }
    }

    /// The next line; `None` at the end of the stream.
    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        self.reader.consume(std::mem::take(&mut self.lent));
        self.carried.clear();
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if available.is_empty() {
                return Ok((!self.carried.is_empty()).then_some(self.carried.as_slice()));
            }
            match memchr::memchr(b'\n', available) {
                Some(end) if self.carried.is_empty() => {
                    self.lent = end + 1;
                    // Asked again, the reader gives the same bytes without reading: the borrow checker cannot yet
                    // see that a slice returned from one arm leaves the reader free in the others.
                    return Ok(Some(&self.reader.fill_buf()?[..end + 1]));
                }
                Some(end) => {
                    self.carried.extend_from_slice(&available[..=end]);
                    self.reader.consume(end + 1);
                    return Ok(Some(self.carried.as_slice()));
                }
                None => {
                    let taken = available.len();
                    self.carried.extend_from_slice(available);
                    self.reader.consume(taken);
                }
            }
        }
    }
}

/// The inputs of `run` and `explain`, in order: each file named (`None` for stdin) with a reader. No file, or
/// `-`, stands for stdin.
pub(super) fn inputs(
    paths: &[PathBuf],
) -> impl Iterator<Item = Result<(Option<String>, Box<dyn BufRead>), Failure>> + '_ {
    let stdin_only = paths.is_empty().then(|| PathBuf::from("-"));
    let paths: Vec<PathBuf> = stdin_only.into_iter().chain(paths.iter().cloned()).collect();
    paths.into_iter().map(|path| {
        if path.as_os_str() == "-" {
            return Ok((None, Box::new(io::BufReader::with_capacity(1 << 20, io::stdin().lock())) as Box<dyn BufRead>));
        }
        let file = fs::File::open(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        Ok((
            Some(path.display().to_string()),
            Box::new(io::BufReader::with_capacity(1 << 20, file)) as Box<dyn BufRead>,
        ))
    })
}

fn write_batch(out: &mut impl Write, batch: &mut Vec<String>) -> Result<(), Failure> {
    let mut body = String::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 16);
    body.push_str("{\"events\":[");
    body.push_str(&batch.join(","));
    body.push_str("]}\n");
    batch.clear();
    write_or_quit(out, body.as_bytes())
}

/// Writes one report record; with events read from files, the record names the file its line is in.
fn report(reports: &mut dyn Write, file: Option<&str>, mut record: Value) -> Result<(), Failure> {
    if let (Some(file), Value::Object(map)) = (file, &mut record) {
        map.insert("file".into(), json!(file));
    }
    let mut line = record.to_string();
    line.push('\n');
    match reports.write_all(line.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(usage(format!("cannot write reports: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What std's `read_until` gives, line by line: the behaviour [`Lines`] must keep.
    fn read_until_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut reader = io::BufReader::new(bytes);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).expect("reading a slice") == 0 {
                return lines;
            }
            lines.push(line);
        }
    }

    fn lent_lines(bytes: &[u8], capacity: usize) -> Vec<Vec<u8>> {
        let mut lines = Lines::new(io::BufReader::with_capacity(capacity, bytes));
        let mut found = Vec::new();
        while let Some(line) = lines.next_line().expect("reading a slice") {
            found.push(line.to_vec());
        }
        found
    }

    proptest! {
        #[test]
        fn lines_are_the_lines_read_until_gives_whatever_the_buffer(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'{'), any::<u8>()], 0..200),
            capacity in 1usize..24,
        ) {
            prop_assert_eq!(lent_lines(&bytes, capacity), read_until_lines(&bytes));
        }
    }

    #[test]
    fn a_line_longer_than_the_buffer_and_a_last_line_without_a_break_are_whole() {
        let long = "x".repeat(1000);
        let text = format!("{{\"a\":1}}\n{long}\n\r\n\nlast");
        let lines: Vec<String> =
            lent_lines(text.as_bytes(), 64).into_iter().map(|l| String::from_utf8(l).unwrap()).collect();
        assert_eq!(lines, ["{\"a\":1}\n".to_string(), format!("{long}\n"), "\r\n".into(), "\n".into(), "last".into()]);
    }
}
