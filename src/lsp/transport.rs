//! The stdio transport: lsp-server's Content-Length framing on stdin and stdout, except that a frame that is not a
//! JSON-RPC message is answered with a parse error (-32700, id null) and the session goes on, as JSON-RPC asks;
//! lsp-server's own stdio transport ends the session at such a frame.

use std::io::{self, BufRead, Write};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use lsp_server::{Connection, Message};

/// The largest frame read; a larger one is refused with a parse error and skipped.
const MAX_FRAME_BYTES: usize = 64 << 20;

/// The server's side of a connection to stdin and stdout, and the threads that carry it.
pub(super) fn stdio() -> (Connection, Threads) {
    let (server, transport) = Connection::memory();
    let stdout = Arc::new(Mutex::new(io::stdout()));
    let writer = {
        let stdout = Arc::clone(&stdout);
        let receiver = transport.receiver.clone();
        thread::spawn(move || -> io::Result<()> {
            for message in receiver {
                let mut out = stdout.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                message.write(&mut *out)?;
            }
            Ok(())
        })
    };
    let reader = thread::spawn(move || -> io::Result<()> {
        let mut input = io::BufReader::new(io::stdin().lock());
        loop {
            let frame = match read_frame(&mut input)? {
                None => return Ok(()),
                Some(frame) => frame,
            };
            let message = frame.ok().and_then(|body| serde_json::from_slice::<Message>(&body).ok());
            match message {
                Some(message) => {
                    let exit = matches!(&message, Message::Notification(n) if n.method == "exit");
                    if transport.sender.send(message).is_err() || exit {
                        return Ok(());
                    }
                }
                None => {
                    let error = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: the frame is not a JSON-RPC message"}}"#;
                    let mut out = stdout.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    write!(out, "Content-Length: {}\r\n\r\n", error.len())?;
                    out.write_all(error)?;
                    out.flush()?;
                }
            }
        }
    });
    (server, Threads { reader, writer })
}

/// One frame's body, or `Err` for a frame whose header or size cannot be used (the frame is skipped); `None` at
/// the end of the input.
fn read_frame(input: &mut impl BufRead) -> io::Result<Option<Result<Vec<u8>, ()>>> {
    let mut length: Option<Option<usize>> = None;
    let mut line = String::new();
    let mut any = false;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(if any { Some(Err(())) } else { None });
        }
        any = true;
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse().ok());
            }
        }
    }
    match length {
        Some(Some(length)) if length <= MAX_FRAME_BYTES => {
            let mut body = vec![0; length];
            input.read_exact(&mut body)?;
            Ok(Some(Ok(body)))
        }
        // Without a usable length the body's end is unknown: what follows is read as the next frame's header.
        _ => Ok(Some(Err(()))),
    }
}

/// The transport's threads; joined once the server is done.
pub(super) struct Threads {
    reader: JoinHandle<io::Result<()>>,
    writer: JoinHandle<io::Result<()>>,
}

impl Threads {
    pub(super) fn join(self) -> io::Result<()> {
        let reader = self.reader.join().unwrap_or_else(|_| Err(io::Error::other("the reader thread panicked")));
        let writer = self.writer.join().unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
        reader.and(writer)
    }
}
