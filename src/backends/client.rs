//! Requests to one engine: connection retries with backoff, the API key, timeouts, and HTTP errors turned
//! into [`RemoteError`]s of the right kind.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{ApiKey, RemoteConfig, RemoteKind};
use super::error::{quote, RemoteError};
use super::http::{check_until, Connection, Endpoint, HttpError, Interrupt, Response};

/// Largest non-streamed answer accepted (Ollama's verbose model information carries the whole vocabulary).
const MAX_JSON_BODY: usize = 256 << 20;

/// Why a request did not produce a response.
#[derive(Debug)]
pub(crate) enum Failure {
    Cancelled,
    Remote(RemoteError),
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Self {
        Failure::Remote(e)
    }
}

pub(crate) struct Client {
    pub kind: RemoteKind,
    pub endpoint: Endpoint,
    api_key: Option<ApiKey>,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub request_timeout: Duration,
    retries: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(cfg: &RemoteConfig) -> Result<Self, RemoteError> {
        let mut endpoint = Endpoint::parse(cfg.url_or_default()).map_err(RemoteError::config)?;
        if cfg.kind == RemoteKind::OpenAi {
            // Accept both "http://host:8000" and "http://host:8000/v1"; requests go to <base>/v1/...
            let base = endpoint.base_path().trim_end_matches("/v1").to_string();
            endpoint = endpoint.with_base_path(&base);
        }
        Ok(Self {
            kind: cfg.kind,
            endpoint,
            api_key: cfg.load_api_key()?,
            connect_timeout: cfg.connect_timeout,
            first_token_timeout: cfg.first_token_timeout,
            request_timeout: cfg.request_timeout,
            retries: cfg.retries,
        })
    }

    pub fn engine(&self) -> &'static str {
        self.kind.engine_name()
    }

    /// The configured URL, for messages.
    pub fn at(&self) -> String {
        self.endpoint.to_string()
    }

    pub fn has_key(&self) -> bool {
        self.api_key.is_some()
    }

    pub fn secret(&self) -> Option<&str> {
        self.api_key.as_ref().map(ApiKey::secret)
    }

    /// Opens a connection, retrying connection failures `retries` times with doubling backoff.
    fn connect(&self, cancelled: &dyn Fn() -> bool) -> Result<Connection, Failure> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            if cancelled() {
                return Err(Failure::Cancelled);
            }
            match Connection::open(&self.endpoint, self.connect_timeout) {
                Ok(c) => return Ok(c),
                Err(HttpError::Connect(detail)) if attempt < self.retries => {
                    tracing::debug!(
                        "{} at {}: {detail}; retrying in {} ms",
                        self.engine(),
                        self.at(),
                        delay.as_millis()
                    );
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        if cancelled() {
                            return Err(Failure::Cancelled);
                        }
                        std::thread::sleep(Duration::from_millis(10).min(delay));
                    }
                    delay *= 2;
                    attempt += 1;
                }
                Err(HttpError::Connect(detail)) => {
                    let detail = if self.retries > 0 {
                        format!("{detail} ({} attempts)", self.retries + 1)
                    } else {
                        detail
                    };
                    return Err(RemoteError::unreachable(self.engine(), &self.at(), &detail).into());
                }
                Err(HttpError::Tls(detail)) => {
                    return Err(RemoteError::unreachable(
                        self.engine(),
                        &self.at(),
                        &format!("TLS: {detail}"),
                    )
                    .into())
                }
                Err(e) => return Err(self.transport_error(e, "while connecting").into()),
            }
        }
    }

    /// Sends a request and waits for the response headers; non-2xx statuses become errors.
    /// `deadline` bounds the wait for the headers; `waiting_for` says what for, in messages.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        cancelled: &dyn Fn() -> bool,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<Response, Failure> {
        let conn = self.connect(cancelled)?;
        let bearer = self.api_key.as_ref().map(ApiKey::bearer);
        let mut headers: Vec<(&str, &str)> = vec![(
            "Accept",
            "application/json, text/event-stream, application/x-ndjson",
        )];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b));
        }
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialize"));
        if bytes.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let check = check_until(cancelled, deadline);
        let mut resp = conn
            .send(
                &self.endpoint,
                method,
                path,
                &headers,
                bytes.as_deref(),
                &check,
            )
            .map_err(|e| self.wait_failure(e, waiting_for))?;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        // The error body, briefly (bounded in time and size).
        let short_deadline = Instant::now() + Duration::from_secs(2);
        let body = resp
            .read_all(&check_until(&|| false, short_deadline), 64 * 1024)
            .unwrap_or_default();
        let detail = format!(
            "HTTP {}{}",
            resp.status,
            error_detail(&body)
                .map(|d| format!(": {}", quote(&d, self.secret())))
                .unwrap_or_default()
        );
        let err = match resp.status {
            401 | 403 => {
                RemoteError::unauthorized(self.engine(), &self.at(), self.has_key(), &detail)
            }
            300..=399 => RemoteError::bad_response(
                self.engine(),
                &self.at(),
                format!(
                    "{detail}, a redirect to {} (redirects are not followed, so that the API key goes nowhere else; set `url` to the final address)",
                    quote(resp.header("location").unwrap_or("?"), self.secret())
                ),
            ),
            404 => RemoteError::bad_response(
                self.engine(),
                &self.at(),
                format!("{detail} for {} (is this a {}, and is `url` right?)", self.endpoint.target(path), self.engine()),
            ),
            _ => RemoteError::bad_response(self.engine(), &self.at(), detail),
        };
        Err(err.redact(self.secret()).into())
    }

    /// A JSON request answered by one JSON document, within `first_token_timeout`.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RemoteError> {
        let never = || false;
        let deadline = Instant::now() + self.first_token_timeout;
        let mut resp = match self.request(
            method,
            path,
            body,
            &never,
            deadline,
            "waiting for the answer",
        ) {
            Ok(r) => r,
            Err(Failure::Remote(e)) => return Err(e),
            Err(Failure::Cancelled) => unreachable!("nothing cancels this request"),
        };
        let check = check_until(&|| false, deadline);
        let bytes = resp.read_all(&check, MAX_JSON_BODY).map_err(|e| {
            match self.wait_failure(e, "reading the answer") {
                Failure::Remote(e) => e,
                Failure::Cancelled => unreachable!("nothing cancels this request"),
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            RemoteError::bad_response(
                self.engine(),
                &self.at(),
                format!(
                    "{} {path} did not return JSON ({e}): {}",
                    method,
                    quote(&String::from_utf8_lossy(&bytes), self.secret())
                ),
            )
        })
    }

    /// An error while waiting for or reading a response.
    pub fn wait_failure(&self, e: HttpError, waiting_for: &str) -> Failure {
        match e {
            HttpError::Interrupted(Interrupt::Cancelled) => Failure::Cancelled,
            HttpError::Interrupted(Interrupt::TimedOut) => Failure::Remote(RemoteError::timeout(
                self.engine(),
                &self.at(),
                self.first_token_timeout.as_secs_f64(),
                waiting_for,
            )),
            other => Failure::Remote(self.transport_error(other, waiting_for)),
        }
    }

    fn transport_error(&self, e: HttpError, when: &str) -> RemoteError {
        match e {
            // A plain close needs no detail; a reset or other failure says what it was.
            HttpError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                RemoteError::disconnected(self.engine(), &self.at(), &format!("while {when}"))
            }
            HttpError::Io(io) => RemoteError::disconnected(
                self.engine(),
                &self.at(),
                &format!("while {when} ({io})"),
            ),
            HttpError::Protocol(p) => {
                RemoteError::bad_response(self.engine(), &self.at(), quote(&p, self.secret()))
            }
            HttpError::Connect(d) | HttpError::Tls(d) => {
                RemoteError::unreachable(self.engine(), &self.at(), &d)
            }
            HttpError::Interrupted(_) => RemoteError::timeout(
                self.engine(),
                &self.at(),
                self.first_token_timeout.as_secs_f64(),
                when,
            ),
        }
        .redact(self.secret())
    }
}

/// The message in an error body: `{"error": {"message": ...}}` (OpenAI, llama.cpp), `{"message": ...}`
/// (vLLM), `{"error": "..."}` (Ollama), or the text itself. Whole: quote it with [`quote`].
pub(crate) fn error_detail(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if let Some(m) = json_error_message(&v) {
            return Some(m);
        }
    }
    Some(text.to_string())
}

/// One streamed event (an SSE `data:` payload or an NDJSON line) as JSON; an error object the engine
/// sent instead is the `Err`. The `Err` text is whole: quote it with [`quote`].
pub(crate) fn event_json(data: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("not JSON ({e}): {data}"))?;
    match json_error_message(&v) {
        Some(msg) => Err(msg),
        None => Ok(v),
    }
}

/// The message of a JSON error object, if `v` is one.
pub(crate) fn json_error_message(v: &Value) -> Option<String> {
    let err = v.get("error");
    err.and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .or_else(|| err.and_then(Value::as_str))
        .or_else(|| {
            (v.get("object").and_then(Value::as_str) == Some("error"))
                .then(|| v.get("message").and_then(Value::as_str))
                .flatten()
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_engine() {
        assert_eq!(
            error_detail(br#"{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}"#),
            Some("Invalid API Key".into())
        );
        assert_eq!(
            error_detail(br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","code":404}"#),
            Some("The model `x` does not exist.".into())
        );
        assert_eq!(
            error_detail(br#"{"error":"model 'codellama:7b-code' not found"}"#),
            Some("model 'codellama:7b-code' not found".into())
        );
        assert_eq!(error_detail(b"Bad Gateway"), Some("Bad Gateway".into()));
        assert_eq!(error_detail(b"  "), None);
    }

    #[test]
    fn the_client_never_shows_the_key() {
        let dir = std::env::temp_dir().join(format!("codellama-lsp-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "sk-very-secret").unwrap();
        let mut cfg = RemoteConfig::new(RemoteKind::OpenAi, "http://127.0.0.1:9/v1");
        cfg.api_key_file = Some(dir.join("key"));
        let client = Client::new(&cfg).unwrap();
        assert!(!format!("{client:?}").contains("sk-very-secret"));
        assert_eq!(client.endpoint.target("/v1/completions"), "/v1/completions");
        std::fs::remove_dir_all(&dir).ok();
    }
}
