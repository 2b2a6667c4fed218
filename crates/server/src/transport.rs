//! The server's input, checked message by message before the LSP library sees it.
//!
//! tower-lsp-server stops reading for good after the first message it cannot decode (a malformed JSON body,
//! a body that is not UTF-8, an object that is neither a request nor a response): the session would end on
//! one bad message. This reader frames the input itself, passes valid messages through unchanged, and
//! replaces each invalid one with a request to `codellama/invalidMessage`, which the server answers with the
//! JSON-RPC error (`-32700` parse error or `-32600` invalid request, id `null`) while the session goes on. It
//! also tells the server when its input ends.
//!
//! - Header lines may end in `\n` as well as `\r\n`: a header block ended by `\n\n` is read, not merged with
//!   the next message's.
//! - After a header that cannot be used (no or a bad `Content-Length`, a message over [`MAX_MESSAGE`]) the
//!   input is dropped up to the next `Content-Length` header, wherever it comes: a client that announced
//!   gigabytes is answered at once and served again from its next message.
//! - A request whose method starts with `$/` is answered `MethodNotFound` with its id, as LSP says (the
//!   library answers nothing to those); such notifications pass and are ignored.
//! - A lone UTF-16 surrogate (`"\ud800"`) is valid for JavaScript but cannot be UTF-8, so JSON parsers refuse
//!   the whole message. Each is replaced by U+FFFD, which takes the same room in every position encoding
//!   (1 UTF-16 unit, 1 code point, and 3 UTF-8 bytes like a surrogate's own encoding), so the server's copy
//!   of the document stays position for position the editor's; a warning says so, once. A document
//!   notification that still cannot be read (its body is not UTF-8) makes the server drop the document and
//!   say so, rather than keep a copy that silently differs from the editor's (see `LspServer::invalid_message`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use regex::bytes::Regex;
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
    /// The document a refused `textDocument/didOpen` or `didChange` was for.
    pub document: Option<String>,
}

/// Larger messages are refused (and skipped).
const MAX_MESSAGE: usize = 512 << 20;
/// Header blocks longer than this are garbage.
const MAX_HEADER: usize = 8 << 10;
/// While input is dropped, this many bytes are kept: the start of a header cut by the end of a read.
const HEADER_TAIL: usize = 64;

/// The start of a `Content-Length` header line. Raw line breaks never occur inside JSON strings, and the
/// name cannot occur outside one, so this never matches inside a JSON body.
static HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i-u)content-length[ \t]*:[ \t]*[0-9]{1,20}[ \t]*\r?\n").expect("a valid regex")
});

pub struct CheckedInput<R> {
    inner: R,
    /// Raw bytes read, not yet framed.
    raw: Vec<u8>,
    /// Input is dropped up to the next header (after a header that could not be used).
    discarding: bool,
    /// Framed, checked messages ready for the reader.
    out: VecDeque<u8>,
    /// Whether replaced lone surrogates were reported already (a warning once, then at debug level).
    surrogates_reported: bool,
    on_end: Option<Box<dyn FnOnce() + Send>>,
    ended: bool,
}

impl<R> CheckedInput<R> {
    pub fn new(inner: R, on_end: Box<dyn FnOnce() + Send>) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            discarding: false,
            out: VecDeque::new(),
            surrogates_reported: false,
            on_end: Some(on_end),
            ended: false,
        }
    }

    fn emit(&mut self, body: &[u8]) {
        self.out
            .extend(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.out.extend(body);
    }

    fn emit_refused(&mut self, refused: Refused) {
        let Refused {
            code,
            message,
            id,
            document,
        } = refused;
        tracing::warn!("invalid message from the client ({code}): {message}");
        let replacement = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": INVALID_MESSAGE_METHOD,
            "params": {"code": code, "message": message, "document": document},
        });
        self.emit(replacement.to_string().as_bytes());
    }

    /// Frames as many complete messages from `raw` as there are.
    fn frame(&mut self) {
        loop {
            if self.discarding {
                let Some(next) = HEADER.find(&self.raw) else {
                    let keep_from = self.raw.len().saturating_sub(HEADER_TAIL);
                    self.raw.drain(..keep_from);
                    return;
                };
                self.raw.drain(..next.start());
                self.discarding = false;
            }
            // The same limit whether the header arrived whole or in pieces (found by the fuzzer's
            // whole-versus-pieces check): a complete header block over the limit is refused like an
            // incomplete one.
            let header = match Header::parse(&self.raw) {
                Some(h) if h.len <= MAX_HEADER => h,
                None if self.raw.len() <= MAX_HEADER => return,
                _ => {
                    self.resync(1, "a header longer than 8 KiB".into());
                    continue;
                }
            };
            let length = match header.content_length {
                Ok(n) if n > MAX_MESSAGE => {
                    let why = format!("a message of {n} bytes (the limit is {MAX_MESSAGE})");
                    self.refuse_header(header.len, -32600, why);
                    continue;
                }
                Ok(n) => n,
                Err(why) => {
                    self.resync(header.len, why);
                    continue;
                }
            };
            if self.raw.len() < header.len + length {
                return;
            }
            let body: Vec<u8> = self
                .raw
                .drain(..header.len + length)
                .skip(header.len)
                .collect();
            match check(&body) {
                Ok(passed) => {
                    self.report_surrogates(&passed);
                    self.emit(&passed.body);
                }
                Err(refused) => self.emit_refused(refused),
            }
        }
    }

    /// A parse error for a header that cannot be used; see [`CheckedInput::refuse_header`].
    fn resync(&mut self, at_least: usize, why: String) {
        self.refuse_header(at_least, -32700, why);
    }

    /// Answers `code`, drops `at_least` bytes and whatever follows up to the next header.
    fn refuse_header(&mut self, at_least: usize, code: i64, why: String) {
        self.raw.drain(..at_least.min(self.raw.len()));
        self.discarding = true;
        self.emit_refused(Refused::new(code, why));
    }

    fn report_surrogates(&mut self, passed: &Passed<'_>) {
        if passed.lone_surrogates == 0 {
            return;
        }
        let what = format!(
            "{} lone UTF-16 surrogate(s) in a message from the client{}, which UTF-8 cannot hold, were replaced \
             by U+FFFD (same length in every position encoding, so positions stay in step with the editor)",
            passed.lone_surrogates,
            passed
                .document
                .as_deref()
                .map(|d| format!(" (for {d})"))
                .unwrap_or_default()
        );
        if self.surrogates_reported {
            tracing::debug!("{what}");
        } else {
            self.surrogates_reported = true;
            tracing::warn!("{what}; later ones are logged at debug level");
        }
    }
}

/// A header block at the start of the input.
struct Header {
    /// Its length, the blank line included.
    len: usize,
    content_length: Result<usize, String>,
}

impl Header {
    /// The header block `raw` starts with, once its blank line has arrived. Lines end in `\n` or `\r\n`.
    fn parse(raw: &[u8]) -> Option<Header> {
        let mut content_length = Err("a message without Content-Length".to_string());
        let mut at = 0;
        loop {
            let end = at + raw[at..].iter().position(|&b| b == b'\n')?;
            let line = raw[at..end].strip_suffix(b"\r").unwrap_or(&raw[at..end]);
            at = end + 1;
            if line.is_empty() {
                return Some(Header {
                    len: at,
                    content_length,
                });
            }
            let line = String::from_utf8_lossy(line);
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse::<usize>().map_err(|_| {
                    format!("a Content-Length that is not a number: {:?}", value.trim())
                });
            }
        }
    }
}

/// A message the LSP library can decode.
#[derive(Debug)]
pub struct Passed<'a> {
    /// The body, with lone surrogates replaced.
    pub body: Cow<'a, [u8]>,
    pub lone_surrogates: usize,
    /// The document, for a document notification.
    pub document: Option<String>,
}

/// Why a message cannot be passed on, and how to answer it.
#[derive(Debug)]
pub struct Refused {
    pub code: i64,
    pub message: String,
    /// `null` unless the request's id could be read (a `$/` request).
    pub id: Value,
    /// The document a refused document notification was for: the server drops its copy.
    pub document: Option<String>,
}

impl Refused {
    fn new(code: i64, message: String) -> Self {
        Self {
            code,
            message,
            id: Value::Null,
            document: None,
        }
    }
}

/// Checks that the body is a message the LSP library can decode, repairing lone surrogates.
pub fn check(body: &[u8]) -> Result<Passed<'_>, Refused> {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            let lossy = String::from_utf8_lossy(body);
            return Err(Refused {
                document: serde_json::from_str(&lossy)
                    .ok()
                    .as_ref()
                    .and_then(document_of),
                ..Refused::new(-32700, format!("the body is not UTF-8: {e}"))
            });
        }
    };
    if text.is_empty() {
        return Err(Refused::new(-32600, "an empty body".into()));
    }
    let (value, body, lone_surrogates) = match serde_json::from_str::<Value>(text) {
        Ok(value) => (value, Cow::Borrowed(body), 0),
        Err(e) => {
            let refused = || Refused::new(-32700, format!("the body is not JSON: {e}"));
            let (repaired, n) = replace_lone_surrogates(text).ok_or_else(refused)?;
            let value = serde_json::from_str(&repaired).map_err(|_| refused())?;
            (value, Cow::Owned(repaired.into_bytes()), n)
        }
    };
    check_message(&value)?;
    Ok(Passed {
        body,
        lone_surrogates,
        document: document_of(&value),
    })
}

/// Whether a JSON value is a request, a notification or a response the library can take.
fn check_message(value: &Value) -> Result<(), Refused> {
    let invalid = |why: &str| Err(Refused::new(-32600, why.to_string()));
    let Some(obj) = value.as_object() else {
        return invalid("the message is not a JSON object (batches are not supported)");
    };
    let refused = |why: &str| Refused {
        document: document_of(value),
        ..Refused::new(-32600, why.to_string())
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(refused("the message lacks \"jsonrpc\": \"2.0\""));
    }
    let id = obj.get("id");
    let id_ok = match id {
        None | Some(Value::Null) | Some(Value::String(_)) => true,
        Some(Value::Number(n)) => n.as_i64().is_some(),
        _ => false,
    };
    if !id_ok {
        return Err(refused("the id is neither an integer nor a string"));
    }
    match obj.get("method") {
        Some(Value::String(m)) if m.starts_with("$/") && id.is_some() => Err(Refused {
            id: id.cloned().unwrap_or_default(),
            ..Refused::new(
                -32601,
                format!("method not found: {m} (no request starting with $/ is supported)"),
            )
        }),
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err(refused("the method is not a string")),
        None if obj.contains_key("result") && id.is_some() => Ok(()),
        None => match obj.get("error") {
            Some(e) if e["code"].is_i64() && e["message"].is_string() && id.is_some() => Ok(()),
            _ => invalid("neither a request, a notification nor a response"),
        },
    }
}

/// The document a `textDocument/didOpen` or `didChange` notification is for.
fn document_of(message: &Value) -> Option<String> {
    let method = message["method"].as_str()?;
    ["textDocument/didOpen", "textDocument/didChange"]
        .contains(&method)
        .then(|| message["params"]["textDocument"]["uri"].as_str())?
        .map(str::to_string)
}

/// `json` with each `\uXXXX` escape of a lone UTF-16 surrogate replaced by `\uFFFD`, and how many there
/// were; `None` when there are none. serde_json has no lenient mode for strings (only for raw bytes), so
/// the escapes are found here; a backslash occurs only in escapes in JSON, which makes this a plain scan.
fn replace_lone_surrogates(json: &str) -> Option<(String, usize)> {
    let bytes = json.as_bytes();
    let unit_at = |i: usize| -> Option<u16> {
        let digits = bytes.get(i..i + 6)?.strip_prefix(b"\\u")?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let (high, low) = (0xD800..0xDC00, 0xDC00..0xE000);
    let (mut out, mut copied, mut replaced, mut i) = (String::new(), 0, 0, 0);
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = unit_at(i) else {
            i += 2; // another escape (`\\`, `\"`, ...)
            continue;
        };
        if high.contains(&unit) && unit_at(i + 6).is_some_and(|next| low.contains(&next)) {
            i += 12; // a pair: one character
            continue;
        }
        if high.contains(&unit) || low.contains(&unit) {
            out.push_str(&json[copied..i]);
            out.push_str("\\uFFFD");
            copied = i + 6;
            replaced += 1;
        }
        i += 6;
    }
    (replaced > 0).then(|| {
        out.push_str(&json[copied..]);
        (out, replaced)
    })
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

    /// A reader that hands out at most `piece` bytes per read, as a pipe may.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        piece: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .piece
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// The bodies that come out, for the given input.
    fn run(input: Vec<u8>) -> Vec<Value> {
        run_in_pieces(input, usize::MAX)
    }

    /// The bodies that come out, for the given input read `piece` bytes at a time.
    fn run_in_pieces(input: Vec<u8>, piece: usize) -> Vec<Value> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let out = rt.block_on(async move {
            let mut r = CheckedInput::new(
                Pieces {
                    data: input,
                    at: 0,
                    piece,
                },
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
            let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
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
    fn a_header_over_the_limit_is_refused_whole_or_in_pieces() {
        let ok = r#"{"jsonrpc":"2.0","method":"ok"}"#;
        let big = r#"{"jsonrpc":"2.0","method":"big"}"#;
        let mut input = b"X-Padding: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_HEADER));
        input.extend(b"\r\n");
        input.extend(framed(big));
        input.extend(framed(ok));
        let whole = run(input.clone());
        for piece in [1, 7, 4096] {
            assert_eq!(
                run_in_pieces(input.clone(), piece),
                whole,
                "pieces of {piece}"
            );
        }
        assert_eq!(whole[0]["params"]["code"], -32700, "{whole:?}");
        assert_eq!(whole.last().unwrap()["method"], "ok", "{whole:?}");
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
    fn lone_surrogates_become_replacement_characters() {
        let check_text = |json: &str| -> String {
            let passed = check(json.as_bytes()).unwrap();
            let v: Value = serde_json::from_slice(&passed.body).unwrap();
            v["params"]["t"].as_str().unwrap().to_string()
        };
        let message =
            |t: &str| format!(r#"{{"jsonrpc":"2.0","method":"x","params":{{"t":"{t}"}}}}"#);
        // Lone high, lone low, a low before a high, one at the very end: each one U+FFFD.
        assert_eq!(check_text(&message(r"a\ud800b")), "a\u{fffd}b");
        assert_eq!(check_text(&message(r"\udc00")), "\u{fffd}");
        assert_eq!(check_text(&message(r"\ude00\ud83d")), "\u{fffd}\u{fffd}");
        // A pair stays one character; an escaped backslash before "ud800" is text, not an escape.
        assert_eq!(check_text(&message(r"\ud83d\ude00\ud800")), "😀\u{fffd}");
        assert_eq!(check_text(&message(r"\\ud800")), r"\ud800");
        let two = message(r"\ud800\ud800");
        assert_eq!(check(two.as_bytes()).unwrap().lone_surrogates, 2);
        // A valid message is passed as it came.
        let ok = message(r"\ud83d\ude00");
        assert!(matches!(
            check(ok.as_bytes()).unwrap().body,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_request_starting_with_dollar_slash_is_method_not_found_with_its_id() {
        let r = check(br#"{"jsonrpc":"2.0","id":7,"method":"$/unknown"}"#).unwrap_err();
        assert_eq!((r.code, r.id), (-32601, json!(7)));
        assert!(check(br#"{"jsonrpc":"2.0","method":"$/unknown"}"#).is_ok());
    }

    #[test]
    fn a_header_ended_by_bare_newlines_is_read() {
        let a = r#"{"jsonrpc":"2.0","method":"a"}"#;
        let b = r#"{"jsonrpc":"2.0","method":"b"}"#;
        let mut input = format!("Content-Length: {}\n\n{a}", a.len()).into_bytes();
        input.extend(framed(b));
        let out = run(input);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            (&out[0]["method"], &out[1]["method"]),
            (&json!("a"), &json!("b"))
        );
    }

    #[test]
    fn an_oversized_message_is_refused_and_the_next_header_is_served() {
        let ok = r#"{"jsonrpc":"2.0","method":"ok"}"#;
        // The client announced 600 MB but sent a few bytes: the next message is served at once.
        let mut input = b"Content-Length: 600000000\r\n\r\n{\"jsonrpc\":".to_vec();
        input.extend(framed(ok));
        let out = run(input);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0]["params"]["code"], -32600);
        assert_eq!(out[1]["method"], "ok");
        // A header cut by the end of a read while input is dropped is still found.
        let mut c = CheckedInput::new(std::io::Cursor::new(Vec::<u8>::new()), Box::new(|| ()));
        c.raw
            .extend_from_slice(b"Content-Length: 600000000\r\n\r\nxxxxxxxx Content-Len");
        c.frame();
        c.raw.extend_from_slice(&framed(ok)[11..]);
        c.frame();
        let framed_ok = framed(ok);
        assert!(c
            .out
            .iter()
            .copied()
            .collect::<Vec<u8>>()
            .ends_with(&framed_ok));
        // What is dropped is not kept.
        let mut c = CheckedInput::new(std::io::Cursor::new(Vec::<u8>::new()), Box::new(|| ()));
        c.raw
            .extend_from_slice(b"Content-Length: 600000000\r\n\r\n");
        c.frame();
        for _ in 0..100 {
            c.raw.extend_from_slice(&[b'x'; 1 << 16]);
            c.frame();
        }
        assert!(c.raw.len() <= HEADER_TAIL, "{} bytes kept", c.raw.len());
    }

    #[test]
    fn a_document_notification_that_cannot_be_read_names_its_document() {
        let body = b"{\"jsonrpc\":\"2.0\",\"method\":\"textDocument/didChange\",\"params\":{\"textDocument\":{\"uri\":\"file:///a.py\",\"version\":2},\"contentChanges\":[{\"text\":\"\xff\"}]}}";
        let r = check(body).unwrap_err();
        assert_eq!(
            (r.code, r.document.as_deref()),
            (-32700, Some("file:///a.py"))
        );
        assert_eq!(check(b"{\"x\": \"\xff\"}").unwrap_err().document, None);
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
