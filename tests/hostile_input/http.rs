//! Requests sent as given (any Content-Type, any bytes, any size) and what came back.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use crate::common::serve::Market;

pub const JSON: &str = "application/json";

/// An HTTP answer: status, Content-Type, headers we look at, and the body as JSON.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub replayed: bool,
    pub json: Value,
}

/// A request sent as given: any Content-Type, any bytes.
#[derive(Clone)]
pub struct Raw {
    base: String,
    client: reqwest::blocking::Client,
}

impl Raw {
    pub fn new(m: &Market) -> Self {
        Self {
            base: m.api().base.clone(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a client"),
        }
    }

    pub fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().with_context(|| format!("{path}: sending"))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let content_type = header("content-type");
        let replayed = header("idempotent-replayed") == "true";
        let text = resp.text()?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status,
            content_type,
            replayed,
            json,
        })
    }

    /// `body` under `content_type`, no other headers.
    pub fn body(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        self.send(method, path, token, Some(content_type), Some(body), &[])
    }

    pub fn json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        self.body(method, path, token, JSON, serde_json::to_vec(body)?)
    }

    /// [`Raw::json`], or no body at all when `body` is null.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        if body.is_null() {
            self.send(method, path, token, None, None, &[])
        } else {
            self.json(method, path, token, body)
        }
    }

    /// POST `total` bytes of JSON-looking body over a raw socket, declared by
    /// Content-Length or sent chunked; read the answer while still writing (the server
    /// may answer and close before the body ends).
    pub fn flood(
        &self,
        path: &str,
        token: &str,
        total: usize,
        chunked: bool,
    ) -> anyhow::Result<Answer> {
        let host = self
            .base
            .trim_start_matches("http://")
            .split('/')
            .next()
            .context("host")?
            .to_owned();
        let mut tcp = std::net::TcpStream::connect(&host)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let length = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {total}")
        };
        write!(
            tcp,
            "POST /v1{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\n{length}\r\nConnection: close\r\n\r\n"
        )?;
        let mut reader = tcp.try_clone()?;
        let read = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let mut body = Vec::with_capacity(total);
        body.extend_from_slice(b"{\"psbt\":\"");
        body.resize(total - 2, b'A');
        body.extend_from_slice(b"\"}");
        for piece in body.chunks(64 * 1024) {
            let sent = if chunked {
                write!(tcp, "{:x}\r\n", piece.len())
                    .and_then(|_| tcp.write_all(piece))
                    .and_then(|_| tcp.write_all(b"\r\n"))
            } else {
                tcp.write_all(piece)
            };
            if sent.is_err() {
                break; // the server answered and closed
            }
        }
        if chunked {
            let _ = tcp.write_all(b"0\r\n\r\n");
        }
        let got = read
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        let text = String::from_utf8_lossy(&got).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line: {text:?}"))?;
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        let json = match (rest.find('{'), rest.rfind('}')) {
            (Some(a), Some(b)) if a < b => serde_json::from_str(&rest[a..=b])?,
            _ => Value::String(rest.to_owned()),
        };
        Ok(Answer {
            status,
            content_type,
            replayed: false,
            json,
        })
    }
}
