//! Requests to one engine: one shared `reqwest::Client` (its keep-alive connections are reused from one
//! request to the next), connection retries with backoff, the API key, deadlines, and HTTP errors turned
//! into [`RemoteError`]s of the right kind. Async; [`Client::json`] waits for one answer from a blocking
//! thread (connecting, the eval harness) on the same runtime ([`http::wait`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response};
use serde_json::Value;

use super::config::{ApiKey, RemoteConfig, RemoteKind};
use codellama_engine::http::{self, Cause, Endpoint};
use codellama_engine::remote_error::{quote, RemoteError};

/// Largest non-streamed answer accepted (Ollama's verbose model information carries the whole vocabulary).
const MAX_JSON_BODY: usize = 256 << 20;

#[derive(Clone)]
pub struct Client {
    pub kind: RemoteKind,
    pub endpoint: Endpoint,
    api_key: Option<ApiKey>,
    http: reqwest::Client,
    connect_timeout: Duration,
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
        let api_key = cfg.load_api_key()?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream, application/x-ndjson"),
        );
        if let Some(key) = &api_key {
            let mut value = HeaderValue::from_str(&key.bearer()).map_err(|_| {
                RemoteError::config(
                    "the API key has a character a header cannot carry (a line break?)",
                )
            })?;
            // Never printed by reqwest's own logging either.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = http::client_builder(cfg.connect_timeout).default_headers(headers);
        if endpoint.is_loopback() {
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| {
            RemoteError::config(format!("cannot set up HTTP: {}", http::describe(&e)))
        })?;
        Ok(Self {
            kind: cfg.kind,
            endpoint,
            api_key,
            http,
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

    /// Sends a request and waits, until `deadline`, for the response headers; connection failures are
    /// retried `retries` times with doubling backoff, and non-2xx statuses become errors. `waiting_for`
    /// says what for, in messages. Cancelling is dropping the future.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<Response, RemoteError> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        let resp = loop {
            let mut req = self.http.request(method.clone(), self.endpoint.url(path));
            if let Some(b) = body {
                let bytes = serde_json::to_vec(b).expect("JSON values serialize");
                req = req.header(CONTENT_TYPE, "application/json").body(bytes);
            }
            let sent = tokio::time::timeout_at(deadline.into(), http::send(req)).await;
            match sent {
                Ok(Ok(resp)) => break resp,
                Err(_) => return Err(self.timeout(waiting_for)),
                Ok(Err(e)) if e.is_connect() && attempt < self.retries => {
                    tracing::debug!(
                        "{} at {}: {}; retrying in {} ms",
                        self.engine(),
                        self.at(),
                        http::describe(&e),
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Ok(Err(e)) => return Err(self.transport_error(e, waiting_for)),
            }
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // The error body, briefly (bounded in time and size).
        let short = Instant::now() + Duration::from_secs(2);
        let body = read_limited(resp, 64 * 1024, short)
            .await
            .unwrap_or_default();
        let detail = format!(
            "HTTP {status}{}",
            error_detail(&body)
                .map(|d| format!(": {}", quote(&d, self.secret())))
                .unwrap_or_default()
        );
        let err = match status {
            401 | 403 => {
                RemoteError::unauthorized(self.engine(), &self.at(), self.has_key(), &detail)
            }
            300..=399 => RemoteError::bad_response(
                self.engine(),
                &self.at(),
                format!(
                    "{detail}, a redirect to {} (redirects are not followed, so that the API key goes nowhere else; set `url` to the final address)",
                    quote(location.as_deref().unwrap_or("?"), self.secret())
                ),
            ),
            404 => RemoteError::bad_response(
                self.engine(),
                &self.at(),
                format!("{detail} for {} (is this a {}, and is `url` right?)", self.endpoint.target(path), self.engine()),
            ),
            _ => RemoteError::bad_response(self.engine(), &self.at(), detail),
        };
        Err(err.with_status(status).redact(self.secret()))
    }

    /// A JSON request answered by one JSON document, within `first_token_timeout`, from a blocking thread.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RemoteError> {
        let method = Method::from_bytes(method.as_bytes()).expect("a method name of ours");
        let (this, path, body) = (self.clone(), path.to_string(), body.cloned());
        http::wait(async move { this.json_async(method, &path, body.as_ref()).await })
    }

    async fn json_async(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RemoteError> {
        let deadline = Instant::now() + self.first_token_timeout;
        let resp = self
            .request(
                method.clone(),
                path,
                body,
                deadline,
                "waiting for the answer",
            )
            .await?;
        let bytes = match read_limited(resp, MAX_JSON_BODY, deadline).await {
            Ok(b) => b,
            Err(Read::TimedOut) => return Err(self.timeout("reading the answer")),
            Err(Read::TooLarge) => {
                return Err(RemoteError::bad_response(
                    self.engine(),
                    &self.at(),
                    format!(
                        "the answer to {method} {path} is larger than {} MiB",
                        MAX_JSON_BODY >> 20
                    ),
                ))
            }
            Err(Read::Failed(e)) => return Err(self.transport_error(e, "reading the answer")),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            RemoteError::bad_response(
                self.engine(),
                &self.at(),
                format!(
                    "{method} {path} did not return JSON ({e}): {}",
                    quote(&String::from_utf8_lossy(&bytes), self.secret())
                ),
            )
        })
    }

    /// Nothing came within `first_token_timeout` while `waiting_for`.
    /// [`Client::json`] that gives up once `cancelled` is set (`Ok(None)`): the request's future is
    /// dropped, which closes the connection the way a browser's `AbortController` does.
    pub fn json_cancellable(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Option<Value>, RemoteError> {
        let method = Method::from_bytes(method.as_bytes()).expect("a method name of ours");
        let (this, path, body) = (self.clone(), path.to_string(), body.cloned());
        http::wait(async move {
            let watch = async {
                while !cancelled.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                answer = this.json_async(method, &path, body.as_ref()) => answer.map(Some),
                () = watch => Ok(None),
            }
        })
    }

    /// The text answer to `GET path` (at most 1 MiB), within `first_token_timeout`.
    pub fn text(&self, path: &str) -> Result<String, RemoteError> {
        let (this, path) = (self.clone(), path.to_string());
        http::wait(async move {
            let deadline = Instant::now() + this.first_token_timeout;
            let resp = this
                .request(Method::GET, &path, None, deadline, "waiting for the answer")
                .await?;
            match read_limited(resp, 1 << 20, deadline).await {
                Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
                Err(Read::TimedOut) => Err(this.timeout("reading the answer")),
                Err(Read::TooLarge) => Err(RemoteError::bad_response(
                    this.engine(),
                    &this.at(),
                    format!("the answer to GET {path} is larger than 1 MiB"),
                )),
                Err(Read::Failed(e)) => Err(this.transport_error(e, "reading the answer")),
            }
        })
    }

    pub fn timeout(&self, waiting_for: &str) -> RemoteError {
        RemoteError::timeout(
            self.engine(),
            &self.at(),
            self.first_token_timeout.as_secs_f64(),
            waiting_for,
        )
    }

    /// A failed connection or transfer while `when`.
    pub fn transport_error(&self, e: reqwest::Error, when: &str) -> RemoteError {
        let detail = http::describe(&e);
        let https = self.endpoint.is_https();
        match http::cause(&e) {
            Cause::Connect if http::is_tls_failure(&e) => {
                RemoteError::unreachable(self.engine(), &self.at(), &format!("TLS: {detail}"))
            }
            Cause::Connect if https && e.is_timeout() => {
                RemoteError::unreachable(
                    self.engine(),
                    &self.at(),
                    &format!(
                        "no answer to the connection or the TLS handshake within {} ms (`connect_timeout_ms`){}",
                        self.connect_timeout.as_millis(),
                        self.attempts()
                    ),
                )
            }
            Cause::Connect => RemoteError::unreachable(
                self.engine(),
                &self.at(),
                &format!("{detail}{}", self.attempts()),
            ),
            Cause::Closed => RemoteError::disconnected(
                self.engine(),
                &self.at(),
                &format!("while {when} ({detail})"),
            ),
            Cause::Protocol => {
                RemoteError::bad_response(self.engine(), &self.at(), quote(&detail, self.secret()))
            }
        }
        .redact(self.secret())
    }
}

impl Client {
    /// " (N attempts)" where connecting is retried.
    fn attempts(&self) -> String {
        match self.retries {
            0 => String::new(),
            n => format!(" ({} attempts)", n + 1),
        }
    }
}

/// Why [`read_limited`] stopped.
enum Read {
    TimedOut,
    TooLarge,
    Failed(reqwest::Error),
}

/// A whole body of at most `limit` bytes, by `deadline`.
async fn read_limited(
    mut resp: Response,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Read> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline.into(), resp.chunk()).await {
            Err(_) => return Err(Read::TimedOut),
            Ok(Err(e)) => return Err(Read::Failed(e)),
            Ok(Ok(None)) => return Ok(out),
            Ok(Ok(Some(piece))) => {
                out.extend_from_slice(&piece);
                if out.len() > limit {
                    return Err(Read::TooLarge);
                }
            }
        }
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
        assert!(!format!("{:?}", client.http).contains("sk-very-secret"));
        assert_eq!(client.endpoint.target("/v1/completions"), "/v1/completions");
        std::fs::remove_dir_all(&dir).ok();
    }
}
