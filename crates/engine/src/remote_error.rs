//! Errors from remote inference servers, sorted into the few kinds a language server reacts to
//! differently: the engine is down or misbehaves (say so once, keep serving), the key is wrong (say so
//! once, stop asking), the settings or the tokenizer are wrong (refuse to connect).
//!
//! Generation results travel as [`EngineError`]s (the [`Backend`](crate::Backend) contract), where
//! a remote failure is an [`EngineError::Remote`] carrying this error whole; [`RemoteErrorKind::of`] reads
//! its kind back.

use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteErrorKind {
    /// The settings are wrong or incomplete (bad URL, missing key file, unknown model...).
    Config,
    /// No connection could be opened: the engine is not running, or the URL is wrong.
    Unreachable,
    /// The engine refused the API key (HTTP 401/403), or wants one and none is configured.
    Unauthorized,
    /// Nothing came within `first_token_timeout` (the engine is overloaded or hung).
    Timeout,
    /// The connection broke in the middle of an answer (the engine crashed or restarted).
    Disconnected,
    /// The engine answered, but not as expected (HTTP errors, malformed JSON, wrong model...).
    BadResponse,
    /// No tokenizer could be found or it does not match the engine's.
    Tokenizer,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    kind: RemoteErrorKind,
    message: String,
    /// The HTTP status of an answer that was an error (`None`: no answer, or a broken one).
    status: Option<u16>,
}

impl RemoteError {
    pub fn kind(&self) -> RemoteErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status, when the engine answered with an error status.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    fn new(kind: RemoteErrorKind, message: String) -> Self {
        Self {
            kind,
            message,
            status: None,
        }
    }

    pub fn config(detail: impl std::fmt::Display) -> Self {
        Self::new(
            RemoteErrorKind::Config,
            format!("remote backend settings: {detail}"),
        )
    }

    /// `engine` names the server kind ("llama.cpp server"), `at` its URL.
    pub fn unreachable(engine: &str, at: &str, detail: &str) -> Self {
        Self::new(
            RemoteErrorKind::Unreachable,
            format!("cannot reach {engine} at {at}: {detail}; start it or fix `url`"),
        )
    }

    pub fn unauthorized(engine: &str, at: &str, have_key: bool, detail: &str) -> Self {
        let message = if have_key {
            format!("{engine} at {at} rejected the API key ({detail}); check the key in `api_key_env` / `api_key_file`")
        } else {
            format!("{engine} at {at} requires an API key ({detail}); name it with `api_key_env` or `api_key_file`")
        };
        Self::new(RemoteErrorKind::Unauthorized, message)
    }

    /// Nothing useful (a token, for a streamed answer) within `first_token_timeout`.
    pub fn timeout(engine: &str, at: &str, secs: f64, waiting_for: &str) -> Self {
        Self::new(
            RemoteErrorKind::Timeout,
            format!("{engine} at {at} timed out after {secs:.1} s while {waiting_for} (`first_token_timeout_ms`); is it overloaded?"),
        )
    }

    /// The whole answer took longer than `request_timeout`.
    pub fn request_timeout(engine: &str, at: &str, secs: f64, generated: usize) -> Self {
        Self::new(
            RemoteErrorKind::Timeout,
            format!("{engine} at {at} timed out after {secs:.1} s with the answer still incomplete after {generated} tokens (`request_timeout_ms`)"),
        )
    }

    pub fn disconnected(engine: &str, at: &str, detail: &str) -> Self {
        Self::new(
            RemoteErrorKind::Disconnected,
            format!("{engine} at {at} closed the connection {detail}; did it crash or restart?"),
        )
    }

    pub fn bad_response(engine: &str, at: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            RemoteErrorKind::BadResponse,
            format!("{engine} at {at} answered unexpectedly: {detail}"),
        )
    }

    pub fn tokenizer(detail: impl std::fmt::Display) -> Self {
        Self::new(
            RemoteErrorKind::Tokenizer,
            format!("remote tokenizer: {detail}"),
        )
    }

    /// Replaces every occurrence of `secret` in the message (servers sometimes quote a rejected key).
    pub fn redact(mut self, secret: Option<&str>) -> Self {
        self.message = redacted(&self.message, secret);
        self
    }
}

/// `text` with every occurrence of `secret` replaced.
fn redacted(text: &str, secret: Option<&str>) -> String {
    match secret.filter(|s| !s.is_empty()) {
        Some(s) => text.replace(s, "<redacted>"),
        None => text.to_string(),
    }
}

/// Characters of text from the engine quoted in a message.
const QUOTED: usize = 300;

/// Text from the engine (an error page, a malformed event, a bad header) for a message: the key replaced
/// first, then cut to [`QUOTED`] characters and "…". In that order, so that a cut can never leave a piece of
/// the key that the replacement no longer recognizes.
pub fn quote(text: &str, secret: Option<&str>) -> String {
    let text = redacted(text, secret);
    match text.char_indices().nth(QUOTED) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

impl From<RemoteError> for EngineError {
    fn from(e: RemoteError) -> Self {
        EngineError::Remote(e)
    }
}

impl RemoteErrorKind {
    /// The kind of a remote failure that reached the caller as an [`EngineError`]; `None` for errors that
    /// did not come from a remote server (a bad prompt, a cancelled request...).
    pub fn of(err: &EngineError) -> Option<Self> {
        match err {
            EngineError::Remote(e) => Some(e.kind),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_conversion() {
        let at = "http://127.0.0.1:8080";
        let e = "llama.cpp server";
        let cases = [
            RemoteError::config("`url` is empty"),
            RemoteError::unreachable(e, at, "connection refused"),
            RemoteError::unauthorized(e, at, true, "HTTP 401 Invalid API Key"),
            RemoteError::unauthorized(e, at, false, "HTTP 401"),
            RemoteError::timeout(e, at, 30.0, "waiting for the first token"),
            RemoteError::disconnected(e, at, "while waiting for token 4 of the answer"),
            RemoteError::bad_response(e, at, "HTTP 500: boom"),
            RemoteError::bad_response(e, at, "HTTP 502: upstream closed the connection early"),
            RemoteError::tokenizer("no tokenizer"),
        ];
        for err in cases {
            let kind = err.kind();
            let engine_error: EngineError = err.clone().into();
            assert_eq!(RemoteErrorKind::of(&engine_error), Some(kind), "{err}");
        }
        assert_eq!(
            RemoteError::unreachable(e, at, "connection refused").to_string(),
            "cannot reach llama.cpp server at http://127.0.0.1:8080: connection refused; start it or fix `url`"
        );
        assert_eq!(RemoteErrorKind::of(&EngineError::Cancelled), None);
        assert_eq!(
            RemoteErrorKind::of(&EngineError::Compute(
                "cannot reach llama.cpp server at http://x: refused".into()
            )),
            None,
            "a message is not parsed"
        );
    }

    #[test]
    fn redaction_removes_a_quoted_key() {
        let err = RemoteError::unauthorized(
            "OpenAI-compatible server",
            "https://x",
            true,
            "HTTP 401: Incorrect API key provided: sk-123456",
        )
        .redact(Some("sk-123456"));
        assert!(!err.to_string().contains("sk-123456"));
        assert!(!format!("{err:?}").contains("sk-123456"));
    }

    #[test]
    fn a_quote_never_keeps_a_piece_of_the_key_wherever_the_cut_falls() {
        let key = "sk-QZXJ0123456789";
        for pad in QUOTED - key.len() - 2..QUOTED + 2 {
            let text = format!("{}{key} and more", "a".repeat(pad));
            let q = quote(&text, Some(key));
            assert!(q.chars().count() <= QUOTED + 1, "{q}");
            for n in 4..=key.len() {
                assert!(!q.contains(&key[..n]), "{pad}: {q}");
            }
        }
        assert_eq!(quote("short", Some(key)), "short");
        let long = "é".repeat(QUOTED + 1);
        assert_eq!(quote(&long, None), format!("{}…", "é".repeat(QUOTED)));
    }
}
