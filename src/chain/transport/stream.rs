//! The byte stream under electrum-client: the socket, plain or TLS, and JSON-RPC
//! batch arrays for subscriptions.
//!
//! electrum-client sends a batch as one request per line. electrs computes the
//! statuses of a batch of subscriptions on all its cores only when the batch comes as
//! one JSON-RPC array (its `try_multi_call`); sent as lines, they are answered one
//! script after another. Measured against a local electrs 0.12 on two cores: 2,000
//! subscriptions take 0.69 s as lines and 0.39 s as one array. A restart from the
//! chain cache asks nothing but those subscriptions, so this is most of its time.
//!
//! So, when the server takes arrays, the stream rewrites on its way out a write of
//! several subscriptions (or pings) into one array, and splits an array answer on its
//! way in into one response per line, which is what electrum-client reads. Anything
//! else passes through untouched. Whether the server takes arrays is asked once per
//! [`super::Connector`] (see [`probe`]); a server that does not is spoken to in lines.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;

use electrum_client::{Batch, ElectrumApi};
use rustls::{ClientConnection, StreamOwned};

use super::ElectrumClient;

/// The methods whose batches go out as one array: subscriptions (what electrs
/// parallelizes) and pings (the probe).
const ARRAY_METHODS: [&str; 2] = ["blockchain.scripthash.subscribe", "server.ping"];

/// A connected socket, plain or TLS.
pub(super) enum Socket {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Tls(s) => s.flush(),
        }
    }
}

/// The stream electrum-client speaks over (see the module doc).
pub struct ElectrumStream {
    socket: Socket,
    arrays: Option<Arrays>,
}

/// The state of the array translation.
#[derive(Default)]
struct Arrays {
    /// Written by electrum-client, not flushed yet.
    out: Vec<u8>,
    /// Read and translated, not handed out yet (from `ready_at`).
    ready: Vec<u8>,
    ready_at: usize,
    /// An array answer read so far (up to its newline).
    array_line: Option<Vec<u8>>,
    /// The next byte read starts a line.
    line_start: bool,
    chunk: Vec<u8>,
}

impl fmt::Debug for ElectrumStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, socket) = match &self.socket {
            Socket::Tcp(s) => ("Tcp", s),
            Socket::Tls(s) => ("Tls", &s.sock),
        };
        f.debug_struct(scheme)
            .field("socket", socket)
            .field("arrays", &self.arrays.is_some())
            .finish()
    }
}

impl ElectrumStream {
    pub(super) fn new(socket: Socket, arrays: bool) -> Self {
        Self {
            socket,
            arrays: arrays.then(|| Arrays {
                line_start: true,
                chunk: vec![0; 64 * 1024],
                ..Arrays::default()
            }),
        }
    }

    /// True if batches of subscriptions go out as one array.
    pub fn uses_arrays(&self) -> bool {
        self.arrays.is_some()
    }
}

impl Read for ElectrumStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(arrays) = &mut self.arrays else {
            return self.socket.read(buf);
        };
        loop {
            if arrays.ready_at < arrays.ready.len() {
                let n = buf.len().min(arrays.ready.len() - arrays.ready_at);
                buf[..n].copy_from_slice(&arrays.ready[arrays.ready_at..arrays.ready_at + n]);
                arrays.ready_at += n;
                if arrays.ready_at == arrays.ready.len() {
                    arrays.ready.clear();
                    arrays.ready_at = 0;
                }
                return Ok(n);
            }
            let mut chunk = std::mem::take(&mut arrays.chunk);
            let read = self.socket.read(&mut chunk);
            if let Ok(n) = read {
                arrays.incoming(&chunk[..n]);
            }
            arrays.chunk = chunk;
            if read? == 0 {
                return Ok(0);
            }
        }
    }
}

impl Write for ElectrumStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.arrays {
            Some(arrays) => {
                arrays.out.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => self.socket.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(arrays) = &mut self.arrays {
            let out = std::mem::take(&mut arrays.out);
            if !out.is_empty() {
                let array = as_array(&out);
                self.socket.write_all(array.as_deref().unwrap_or(&out))?;
            }
        }
        self.socket.flush()
    }
}

impl Arrays {
    /// Bytes read from the socket: lines pass through to `ready` as they come; an
    /// array answer is held until its newline, then split into one line per response.
    fn incoming(&mut self, mut bytes: &[u8]) {
        while let Some(&first) = bytes.first() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            if self.array_line.is_none() && !(self.line_start && first == b'[') {
                let end = newline.map_or(bytes.len(), |i| i + 1);
                self.ready.extend_from_slice(&bytes[..end]);
                self.line_start = newline.is_some();
                bytes = &bytes[end..];
                continue;
            }
            let line = self.array_line.get_or_insert_with(Vec::new);
            match newline {
                None => {
                    line.extend_from_slice(bytes);
                    self.line_start = false;
                    return;
                }
                Some(i) => {
                    line.extend_from_slice(&bytes[..i]);
                    let line = self.array_line.take().unwrap_or_default();
                    split_array(&line, &mut self.ready);
                    self.line_start = true;
                    bytes = &bytes[i + 1..];
                }
            }
        }
    }
}

/// One array answer as one line per response; a line that is not an array of JSON
/// values passes as it came (electrum-client then reports it).
fn split_array(line: &[u8], ready: &mut Vec<u8>) {
    match serde_json::from_slice::<Vec<serde_json::Value>>(line) {
        Ok(responses) => {
            for response in responses {
                // Writing a `Value` into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *ready, &response);
                ready.push(b'\n');
            }
        }
        Err(_) => {
            ready.extend_from_slice(line);
            ready.push(b'\n');
        }
    }
}

/// Several requests, one per line, all of [`ARRAY_METHODS`]: as one array line.
fn as_array(out: &[u8]) -> Option<Vec<u8>> {
    let lines: Vec<&[u8]> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() < 2 || out.last() != Some(&b'\n') {
        return None;
    }
    let batchable = lines.iter().all(|line| {
        serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| {
                v.get("method")?
                    .as_str()
                    .map(|m| ARRAY_METHODS.contains(&m))
            })
            .unwrap_or(false)
    });
    if !batchable {
        return None;
    }
    let mut array = Vec::with_capacity(out.len() + 2);
    array.push(b'[');
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            array.push(b',');
        }
        array.extend_from_slice(line);
    }
    array.extend_from_slice(b"]\n");
    Some(array)
}

/// Does the server answer a batch sent as one array? Two pings go out as an array;
/// both answered (in an array, split back into lines) means yes. Anything else (an
/// error, no answer within the socket's read timeout) means no, and the connection
/// must then be dropped: an answer may still be on its way.
pub(super) fn probe(client: &ElectrumClient) -> bool {
    let mut batch = Batch::default();
    batch.raw("server.ping".into(), vec![]);
    batch.raw("server.ping".into(), vec![]);
    match client.batch_call(&batch) {
        Ok(answers) => answers.len() == 2,
        Err(e) => {
            tracing::info!(error = %e, "the Electrum server does not take batch arrays: batches go out one request per line");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u32, method: &str) -> String {
        format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":[\"ab\"]}}\n")
    }

    #[test]
    fn subscription_and_ping_batches_go_out_as_one_array() {
        let sub = "blockchain.scripthash.subscribe";
        let out = format!("{}{}", request(1, sub), request(2, sub));
        let array = as_array(out.as_bytes()).expect("an array");
        let parsed: Vec<serde_json::Value> =
            serde_json::from_slice(&array).expect("one JSON array");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1]["id"], 2);
        assert!(array.ends_with(b"]\n") && !array[..array.len() - 1].contains(&b'\n'));
        let pings = format!("{}{}", request(3, "server.ping"), request(4, "server.ping"));
        assert!(as_array(pings.as_bytes()).is_some());
    }

    #[test]
    fn other_requests_and_single_ones_pass_as_lines() {
        let sub = "blockchain.scripthash.subscribe";
        assert!(
            as_array(request(1, sub).as_bytes()).is_none(),
            "one request"
        );
        let mixed = format!(
            "{}{}",
            request(1, sub),
            request(2, "blockchain.transaction.get")
        );
        assert!(as_array(mixed.as_bytes()).is_none(), "another method");
        let histories = format!(
            "{}{}",
            request(1, "blockchain.scripthash.get_history"),
            request(2, "blockchain.scripthash.get_history")
        );
        assert!(as_array(histories.as_bytes()).is_none());
        let unfinished = format!("{}{}", request(1, sub), request(2, sub).trim_end());
        assert!(
            as_array(unfinished.as_bytes()).is_none(),
            "no final newline"
        );
    }

    #[test]
    fn array_answers_are_split_into_lines_whatever_the_chunks() {
        let answers = concat!(
            "{\"jsonrpc\":\"2.0\",\"method\":\"blockchain.headers.subscribe\",\"params\":[{}]}\n",
            "[{\"id\":1,\"result\":\"aa\"},{\"id\":2,\"result\":null}]\n",
            "{\"id\":3,\"result\":\"[not an array]\"}\n",
            "[not json]\n",
        );
        let expected = concat!(
            "{\"jsonrpc\":\"2.0\",\"method\":\"blockchain.headers.subscribe\",\"params\":[{}]}\n",
            "{\"id\":1,\"result\":\"aa\"}\n",
            "{\"id\":2,\"result\":null}\n",
            "{\"id\":3,\"result\":\"[not an array]\"}\n",
            "[not json]\n",
        );
        for size in [1, 2, 7, 50, answers.len()] {
            let mut arrays = Arrays {
                line_start: true,
                ..Arrays::default()
            };
            for chunk in answers.as_bytes().chunks(size) {
                arrays.incoming(chunk);
            }
            assert_eq!(
                String::from_utf8(arrays.ready).expect("utf-8"),
                expected,
                "chunks of {size}"
            );
            assert!(arrays.array_line.is_none() && arrays.line_start);
        }
    }
}
