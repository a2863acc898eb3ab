//! The other side of the HTTP API: what the parties' tools (the client commands and the
//! lender's co-signer) use to talk to a running `serve`. Blocking (the tools are
//! plain programs); every failure is a [`ClientError`] of one [`ErrorKind`], carrying
//! the server's problem `code`, `detail` and `field` when it sent one, and mapping to
//! a distinct exit code.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::Value;

/// What kind of failure: each is its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line itself (a missing flag, a bad file).
    Usage,
    /// 401 or 403: no token, a bad token, or not this party's to do.
    Auth,
    NotFound,
    /// 409: the loan is not in a state for this (or a concurrent change).
    Conflict,
    /// 400, 413, 422: the input was refused, naming the field.
    Invalid,
    /// 5xx or an answer that is not what the API documents.
    Server,
    /// The server could not be reached.
    Network,
}

impl ErrorKind {
    /// The process exit code (1 is left to other errors of the tools themselves).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::Auth => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Conflict => 5,
            ErrorKind::Invalid => 6,
            ErrorKind::Server => 7,
            ErrorKind::Network => 8,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ClientError {
    pub kind: ErrorKind,
    pub status: Option<u16>,
    /// The problem's stable `code`.
    pub code: Option<String>,
    pub detail: String,
    pub field: Option<String>,
}

impl ClientError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            code: None,
            detail: detail.into(),
            field: None,
        }
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(s) = self.status {
            out.push_str(&format!("{s} "));
        }
        if let Some(c) = &self.code {
            out.push_str(&format!("{c}: "));
        }
        out.push_str(&self.detail);
        if let Some(f) = &self.field {
            out.push_str(&format!(" (field `{f}`)"));
        }
        out
    }

    /// The error of an HTTP answer `status` with body `body` (a problem document).
    pub fn from_answer(status: u16, body: &str) -> Self {
        let kind = match status {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            400 | 413 | 422 => ErrorKind::Invalid,
            _ => ErrorKind::Server,
        };
        let problem: Option<Value> = serde_json::from_str(body).ok();
        let text = |k: &str| {
            problem
                .as_ref()
                .and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Self {
            kind,
            status: Some(status),
            code: text("code"),
            detail: text("detail")
                .or_else(|| text("title"))
                .unwrap_or_else(|| body.chars().take(200).collect()),
            field: text("field"),
        }
    }
}

/// A connection to one server as one party.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// `http://host:port/v1`.
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl ApiClient {
    /// `api` is the server's address, with or without `/v1` (`http://127.0.0.1:8080`).
    pub fn new(api: &str, token: Option<String>) -> Result<Self, ClientError> {
        let api = api.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(api)
            .map_err(|e| ClientError::new(ErrorKind::Usage, format!("--api {api}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::new(
                ErrorKind::Usage,
                format!("--api {api}: an http:// or https:// URL"),
            ));
        }
        let base = if api.ends_with("/v1") {
            api.to_owned()
        } else {
            format!("{api}/v1")
        };
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|e| ClientError::new(ErrorKind::Usage, e.to_string()))?;
        Ok(Self { base, token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Result<Value, ClientError> {
        let resp = req.send().map_err(network)?;
        let status = resp.status().as_u16();
        let text = resp.text().map_err(network)?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_answer(status, &text));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            ClientError::new(ErrorKind::Server, format!("the answer is not JSON: {e}"))
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::GET, path))
    }

    /// POST `body`; with an `Idempotency-Key` when given (a retried command is then
    /// counted once by the server).
    pub fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut req = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        self.send(req)
    }

    /// Follow `GET /v1/events/stream` from after `after`, calling `on_event(seq, loan
    /// event JSON)` for each event until it returns false (then `Ok(last seq)`) or the
    /// stream ends or fails (`Err`, with the last sequence seen in the error's detail
    /// lost: callers keep their own). Keep-alive comments are skipped.
    pub fn follow(
        &self,
        after: Option<u64>,
        mut on_event: impl FnMut(u64, Value) -> bool,
    ) -> Result<(), ClientError> {
        let mut req = self
            .http
            .get(format!("{}/events/stream", self.base))
            .header("accept", "text/event-stream");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(a) = after {
            req = req.header("Last-Event-ID", a.to_string());
        }
        let resp = req.send().map_err(network)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.text().unwrap_or_default();
            return Err(ClientError::from_answer(status, &text));
        }
        // The SSE rules: `data:` lines joined with newlines, the last event id kept
        // until another is sent, an event dispatched at a blank line.
        let mut id: Option<u64> = None;
        let mut data: Vec<String> = Vec::new();
        for line in BufReader::new(resp).lines() {
            let line = line.map_err(|e| ClientError::new(ErrorKind::Network, e.to_string()))?;
            if line.is_empty() {
                if let (Some(seq), false) = (id, data.is_empty()) {
                    match serde_json::from_str(&data.join("\n")) {
                        Ok(event) => {
                            if !on_event(seq, event) {
                                return Ok(());
                            }
                        }
                        // Skipped, not fatal: resuming would meet it again.
                        Err(e) => tracing::warn!(seq, error = %e, "an event that is not JSON"),
                    }
                }
                data.clear();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok().or(id);
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            }
        }
        Err(ClientError::new(
            ErrorKind::Network,
            "the event stream ended",
        ))
    }
}

fn network(e: reqwest::Error) -> ClientError {
    ClientError::new(ErrorKind::Network, format!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_answer_becomes_an_error_of_its_kind_naming_the_field() {
        let body = r#"{"type":"about:blank","title":"Unprocessable","status":422,
                       "detail":"must be above 0","code":"invalid","field":"amount_minor"}"#;
        let e = ClientError::from_answer(422, body);
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert_eq!(e.field.as_deref(), Some("amount_minor"));
        assert_eq!(
            e.to_string(),
            "422 invalid: must be above 0 (field `amount_minor`)"
        );
        let kinds: Vec<u8> = [401, 403, 404, 409, 422, 500, 502]
            .iter()
            .map(|s| ClientError::from_answer(*s, "").kind.exit_code())
            .collect();
        assert_eq!(kinds, [3, 3, 4, 5, 6, 7, 7]);
    }

    #[test]
    fn the_api_address_is_taken_with_or_without_v1() {
        for a in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/v1",
        ] {
            assert_eq!(
                ApiClient::new(a, None).unwrap().base(),
                "http://127.0.0.1:8080/v1"
            );
        }
        assert_eq!(
            ApiClient::new("ftp://x", None).unwrap_err().kind,
            ErrorKind::Usage
        );
    }
}
