//! The HTTP side of remote engines and Hub downloads: reqwest on rustls (ring, the Mozilla roots), with its
//! keep-alive pool and the proxies the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`), driven on one small tokio runtime of our own ([`runtime`]) so that the async language
//! server and the blocking CLI, eval and download threads share one mechanism. Redirects are never followed
//! by reqwest: the engine client refuses them (an API key goes nowhere but `url`), and the Hub download
//! follows them itself so that its token never reaches a CDN. Giving up on a request is dropping its future
//! (or its response), which closes the connection: that is how llama.cpp, vLLM and Ollama learn that nobody
//! wants the rest and stop generating.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Runtime;

/// The runtime every remote request runs on: two worker threads (requests mostly wait on the network), made
/// on first use and never dropped (a runtime may not be dropped from inside another one's tasks).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("codellama-http")
            .enable_all()
            .build()
            .expect("the operating system can start two threads for HTTP")
    })
}

/// Runs `fut` on [`runtime`] and waits for it from a blocking thread (connect, eval, a download thread).
/// Spawned rather than `block_on`, so that it also works on a thread that belongs to another runtime
/// (`spawn_blocking`). A panic in `fut` is resumed here.
pub fn wait<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    match rx.recv() {
        Ok(out) => out,
        Err(_) => panic!("an HTTP task panicked"),
    }
}

/// The settings every client of ours shares: our user agent, no redirects, no compression (none is
/// compiled in), `TCP_NODELAY` (a request is one small write), idle keep-alive connections kept for a
/// while between keystrokes.
pub fn client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("codellama-lsp/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
}

/// Sends `req`, and once more on a new connection when the connection closed under it before any answer: a
/// keep-alive connection the server closed just as we reused it (servers close idle connections when they
/// like, and some close after every answer without saying so). The request never reached the server then.
pub async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
    let again = req.try_clone();
    match (req.send().await, again) {
        (Err(e), Some(again)) if cause(&e) == Cause::Closed && !e.is_timeout() => {
            tracing::debug!(
                "{} before any answer; trying a new connection",
                describe(&e)
            );
            again.send().await
        }
        (result, _) => result,
    }
}

/// Where the server is: a base URL that request paths are appended to.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: url::Url,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// The URL as configured, without credentials, query or fragment (refused by [`Endpoint::parse`]), with
/// its port: safe for messages.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.url.host_str().unwrap_or_default();
        let port = self.url.port_or_known_default().unwrap_or_default();
        write!(
            f,
            "{}://{host}:{port}{}",
            self.url.scheme(),
            self.base_path()
        )
    }
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/base]`. User names and passwords in the URL are refused (the API key
    /// settings are the one place for secrets), and so are queries and fragments.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim())
            .map_err(|e| format!("`url` {:?} is not a URL ({e})", redact_userinfo(text)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "`url` must start with http:// or https://, not {}://",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "`url` must not contain a user name or password: put the key in the file named by `api_key_file` or the variable named by `api_key_env`".into(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("`url` must not have a query (?...) or fragment (#...)".into());
        }
        if url.host().is_none() {
            return Err(format!("`url` {text:?} has no host"));
        }
        Ok(Self { url })
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// An engine on this machine (`localhost`, 127.0.0.0/8, ::1): reached directly, never through a proxy
    /// from the environment (a proxy set for the internet would otherwise get, and fail, every keystroke).
    pub fn is_loopback(&self) -> bool {
        match self.url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
    }

    /// The base path without a trailing slash ("" for the root).
    pub fn base_path(&self) -> &str {
        self.url.path().trim_end_matches('/')
    }

    /// A copy with another base path.
    pub fn with_base_path(&self, base: &str) -> Self {
        let mut url = self.url.clone();
        url.set_path(base.trim_end_matches('/'));
        Self { url }
    }

    /// The request target for `path` (which starts with '/').
    pub fn target(&self, path: &str) -> String {
        format!("{}{path}", self.base_path())
    }

    /// The full URL for `path`.
    pub fn url(&self, path: &str) -> url::Url {
        let mut url = self.url.clone();
        url.set_path(&self.target(path));
        url
    }
}

/// A URL that did not parse, for messages: without anything before an '@' (it may be a password).
fn redact_userinfo(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}…@{}", &text[..s + 3], &text[at + 1..]),
        (_, Some(at)) => format!("…@{}", &text[at + 1..]),
        _ => text.to_string(),
    }
}

/// How a transfer failed, read from reqwest's error and the I/O error under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No connection could be opened; nothing was sent.
    Connect,
    /// The connection closed or broke after it was opened.
    Closed,
    /// The answer is not the HTTP we expect (a bad chunk size, a bad header...).
    Protocol,
}

/// The error and its sources, outermost first.
fn chain(e: &reqwest::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |s| {
        s.source()
    })
}

/// The kind of the first I/O error under `e`.
pub fn io_kind(e: &reqwest::Error) -> Option<std::io::ErrorKind> {
    chain(e).find_map(|s| s.downcast_ref::<std::io::Error>().map(std::io::Error::kind))
}

/// How `e` failed.
pub fn cause(e: &reqwest::Error) -> Cause {
    use std::io::ErrorKind as K;
    if e.is_connect() {
        return Cause::Connect;
    }
    match io_kind(e) {
        Some(K::InvalidData | K::InvalidInput) => Cause::Protocol,
        // A reply that is not HTTP ("invalid HTTP version parsed", a bad status line or header) is one of
        // hyper's parse errors, which carry no I/O error.
        None if chain(e).any(|s| {
            s.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse)
        }) =>
        {
            Cause::Protocol
        }
        _ => Cause::Closed,
    }
}

/// What went wrong, in words: the innermost cause, without the URL (signed CDN addresses carry
/// credentials in theirs).
pub fn describe(e: &reqwest::Error) -> String {
    use std::io::ErrorKind as K;
    match io_kind(e) {
        Some(K::ConnectionRefused) => "connection refused".into(),
        _ if e.is_connect() && e.is_timeout() => "no answer in time (`connect_timeout_ms`)".into(),
        _ => chain(e).last().map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// Whether a connect failure happened in the TLS handshake (rustls reports as invalid data).
pub fn is_tls_failure(e: &reqwest::Error) -> bool {
    e.is_connect() && io_kind(e) == Some(std::io::ErrorKind::InvalidData)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let ep = Endpoint::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(ep.to_string(), "http://127.0.0.1:8080");
        assert_eq!(ep.target("/completion"), "/completion");
        let ep = Endpoint::parse("https://gpu.example.com/v1").unwrap();
        assert_eq!(ep.to_string(), "https://gpu.example.com:443/v1");
        assert_eq!(ep.target("/completions"), "/v1/completions");
        assert_eq!(
            ep.url("/completions").as_str(),
            "https://gpu.example.com/v1/completions"
        );
        let ep = Endpoint::parse("http://[::1]:11434").unwrap();
        assert_eq!(ep.to_string(), "http://[::1]:11434");
        assert!(Endpoint::parse("ftp://x").unwrap_err().contains("http://"));
        let err = Endpoint::parse("http://me:hunter2@host:1").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = Endpoint::parse("http//me:hunter2@host").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
