//! The server's input, checked message by message before the LSP library sees it.
//!
//! tower-lsp-server stops reading for good after the first message it cannot decode (a malformed JSON body,
//! a body that is not UTF-8, an object that is neither a request nor a response): the session would end on
//! one bad message. This reader frames the input itself, passes valid messages through unchanged, and
//! replaces each invalid one with a request to `codellama/invalidMessage` (id `null`), which the server
//! answers with the JSON-RPC error (`-32700` parse error or `-32600` invalid request, id `null`) while the
//! session goes on. It also tells the server when its input ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, ReadBuf};

/// The method invalid messages are turned into.
pub const INVALID_MESSAGE_METHOD: &str = "codellama/invalidMessage";

/// Params of [`INVALID_MESSAGE_METHOD`].
#[derive(Debug, Clone, Deserialize)]
pub struct InvalidMessage {
    pub code: i64,
    pub message: String,
}

/// Larger messages are refused (and skipped).
const MAX_MESSAGE: usize = 512 << 20;
/// Header blocks longer than this are garbage.
const MAX_HEADER: usize = 8 << 10;

pub struct CheckedInput<R> {
    inner: R,
    /// Raw bytes read, not yet framed.
    raw: Vec<u8>,
    /// Bytes to skip from the input (the body of a refused, oversized message).
    skip: usize,
    /// Framed, checked messages ready for the reader.
    out: VecDeque<u8>,
    on_end: Option<Box<dyn FnOnce() + Send>>,
    ended: bool,
}

impl<R> CheckedInput<R> {
    pub fn new(inner: R, on_end: Box<dyn FnOnce() + Send>) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            skip: 0,
            out: VecDeque::new(),
            on_end: Some(on_end),
            ended: false,
        }
    }

    fn emit(&mut self, body: &[u8]) {
        self.out
            .extend(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.out.extend(body);
    }

    fn emit_invalid(&mut self, code: i64, message: String) {
        tracing::warn!("invalid message from the client ({code}): {message}");
        let replacement = json!({
            "jsonrpc": "2.0",
            "id": null,
            "method": INVALID_MESSAGE_METHOD,
            "params": {"code": code, "message": message},
        });
        self.emit(replacement.to_string().as_bytes());
    }

    /// Frames as many complete messages from `raw` as there are.
    fn frame(&mut self) {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.raw.len());
                self.raw.drain(..n);
                self.skip -= n;
                if self.skip > 0 {
                    return;
                }
            }
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                if self.raw.len() > MAX_HEADER {
                    self.resync(1, "a header longer than 8 KiB".into());
                    continue;
                }
                return;
            };
            let headers = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            let length = headers.split("\r\n").find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
            });
            let length = match length {
                Some(Some(n)) => n,
                Some(None) => {
                    self.resync(end + 4, "a Content-Length that is not a number".into());
                    continue;
                }
                None => {
                    self.resync(end + 4, "a message without Content-Length".into());
                    continue;
                }
            };
            if length > MAX_MESSAGE {
                self.raw.drain(..end + 4);
                self.skip = length;
                self.emit_invalid(
                    -32600,
                    format!("a message of {length} bytes (the limit is {MAX_MESSAGE})"),
                );
                continue;
            }
            if self.raw.len() < end + 4 + length {
                return;
            }
            let body: Vec<u8> = self.raw.drain(..end + 4 + length).skip(end + 4).collect();
            match check(&body) {
                Ok(()) => self.emit(&body),
                Err((code, message)) => self.emit_invalid(code, message),
            }
        }
    }

    /// Drops `at_least` bytes and whatever follows up to the next `Content-Length`.
    fn resync(&mut self, at_least: usize, why: String) {
        let from = at_least.min(self.raw.len());
        let next = find(&self.raw[from..], b"Content-Length").map_or(self.raw.len(), |i| from + i);
        self.raw.drain(..next);
        self.emit_invalid(-32700, why);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether the body is a message the LSP library can decode: `Err((code, why))` if not.
pub fn check(body: &[u8]) -> Result<(), (i64, String)> {
    let text =
        std::str::from_utf8(body).map_err(|e| (-32700, format!("the body is not UTF-8: {e}")))?;
    if text.is_empty() {
        return Err((-32600, "an empty body".into()));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| (-32700, format!("the body is not JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err((
            -32600,
            "the message is not a JSON object (batches are not supported)".into(),
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((-32600, "the message lacks \"jsonrpc\": \"2.0\"".into()));
    }
    let id_ok = |id: Option<&Value>| match id {
        None | Some(Value::Null) | Some(Value::String(_)) => true,
        Some(Value::Number(n)) => n.as_i64().is_some(),
        _ => false,
    };
    if !id_ok(obj.get("id")) {
        return Err((-32600, "the id is neither an integer nor a string".into()));
    }
    match obj.get("method") {
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err((-32600, "the method is not a string".into())),
        None if obj.contains_key("result") && obj.contains_key("id") => Ok(()),
        None => match obj.get("error") {
            Some(e) if e["code"].is_i64() && e["message"].is_string() && obj.contains_key("id") => {
                Ok(())
            }
            _ => Err((
                -32600,
                "neither a request, a notification nor a response".into(),
            )),
        },
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CheckedInput<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = buf.remaining().min(this.out.len());
                let (a, b) = this.out.as_slices();
                let from_a = n.min(a.len());
                buf.put_slice(&a[..from_a]);
                buf.put_slice(&b[..n - from_a]);
                this.out.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 64 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    if result.is_err() || read.filled().is_empty() {
                        this.ended = true;
                        if let Some(f) = this.on_end.take() {
                            f();
                        }
                        if !this.raw.is_empty() {
                            tracing::debug!(
                                "{} bytes of an unfinished message at the end of the input",
                                this.raw.len()
                            );
                        }
                        continue;
                    }
                    this.raw.extend_from_slice(read.filled());
                    this.frame();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &str) -> Vec<u8> {
        let mut v = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        v.extend_from_slice(body.as_bytes());
        v
    }

    /// The bodies that come out, for the given input.
    fn run(input: Vec<u8>) -> Vec<Value> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let out = rt.block_on(async move {
            let mut r = CheckedInput::new(
                std::io::Cursor::new(input),
                Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst)),
            );
            let mut all = Vec::new();
            loop {
                let mut chunk = [0u8; 100];
                let mut buf = ReadBuf::new(&mut chunk);
                std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut buf))
                    .await
                    .unwrap();
                if buf.filled().is_empty() {
                    break all;
                }
                all.extend_from_slice(buf.filled());
            }
        });
        assert!(ended.load(std::sync::atomic::Ordering::SeqCst));
        let mut bodies = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let end = find(rest, b"\r\n\r\n").unwrap();
            let len: usize = std::str::from_utf8(&rest[16..end])
                .unwrap()
                .parse()
                .unwrap();
            bodies.push(serde_json::from_slice(&rest[end + 4..end + 4 + len]).unwrap());
            rest = &rest[end + 4 + len..];
        }
        bodies
    }

    #[test]
    fn valid_messages_pass_unchanged() {
        let req = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        let resp = r#"{"jsonrpc":"2.0","id":"a","result":null}"#;
        let mut input = framed(req);
        input.extend(framed(resp));
        let out = run(input);
        assert_eq!(
            out,
            vec![
                serde_json::from_str::<Value>(req).unwrap(),
                serde_json::from_str(resp).unwrap()
            ]
        );
    }

    #[test]
    fn invalid_messages_become_error_requests() {
        let mut input = framed("{not json");
        input.extend(framed("[1,2]"));
        input.extend(b"Content-Length: 3\r\n\r\n\xff\xfe\xfd");
        input.extend(framed(r#"{"jsonrpc":"2.0","method":"x","id":1.5}"#));
        input.extend(b"garbage\r\n\r\n");
        input.extend(framed(r#"{"jsonrpc":"2.0","method":"ok"}"#));
        input.extend(b"Content-Length: 99999999999\r\n\r\n");
        let out = run(input);
        let codes: Vec<i64> = out
            .iter()
            .map(|m| {
                if m["method"] == INVALID_MESSAGE_METHOD {
                    m["params"]["code"].as_i64().unwrap()
                } else {
                    0
                }
            })
            .collect();
        assert_eq!(
            codes,
            vec![-32700, -32600, -32700, -32600, -32700, 0, -32600]
        );
        assert!(out.iter().all(|m| m["jsonrpc"] == "2.0"));
        assert_eq!(out[5]["method"], "ok");
    }

    #[test]
    fn lone_surrogates_are_refused() {
        let body = r#"{"jsonrpc":"2.0","method":"x","params":{"t":"\ud800"}}"#;
        assert_eq!(check(body.as_bytes()).unwrap_err().0, -32700);
        let ok = r#"{"jsonrpc":"2.0","method":"x","params":{"t":"\ud83d\ude00"}}"#;
        assert!(check(ok.as_bytes()).is_ok());
    }

    #[test]
    fn messages_split_across_reads_are_framed() {
        // A Cursor hands everything at once; check the framing state machine with two halves.
        let body = framed(r#"{"jsonrpc":"2.0","method":"a"}"#);
        let mut c = CheckedInput::new(std::io::Cursor::new(Vec::<u8>::new()), Box::new(|| ()));
        c.raw.extend_from_slice(&body[..10]);
        c.frame();
        assert!(c.out.is_empty());
        c.raw.extend_from_slice(&body[10..]);
        c.frame();
        assert_eq!(c.out.len(), body.len());
    }
}
