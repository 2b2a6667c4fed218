//! A small blocking HTTP/1.1 client for talking to inference servers: one connection per request
//! (`Connection: close`), TLS through rustls with the Mozilla root certificates, no redirects, and reads
//! that wake up every [`TICK`] so that the caller can give up on a request (cancellation, deadlines) while
//! the server is still computing. Giving up drops the connection, which closes the socket: that is how
//! llama.cpp, vLLM and Ollama learn that nobody wants the rest and stop generating.
//!
//! Why not ureq, which hf-hub already brings in? ureq 2 hands out no socket for a plain-HTTP request, so a
//! read that waits for the first token (llama.cpp sends its response headers only together with it) could
//! not be interrupted from outside, and a short read timeout used as a tick would lose the state of its
//! chunked decoder. Here every wait goes through [`Connection::fill`], which retries on the tick and asks the
//! caller's check whether to go on; parsing only ever consumes complete units from our own buffer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often a blocked read wakes up to ask whether to go on.
pub const TICK: Duration = Duration::from_millis(20);

/// Longest status line, header line or chunk-size line accepted.
const MAX_LINE: usize = 64 * 1024;
const MAX_HEADERS: usize = 200;

/// Why a wait was abandoned by the caller's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Cancelled,
    TimedOut,
}

/// Asked on every tick while waiting for the server; `Err` abandons the request.
pub type Check<'a> = &'a dyn Fn() -> Result<(), Interrupt>;

/// The check every caller uses: abandon once `cancelled()` says so, or once `deadline` has passed.
pub fn check_until(
    cancelled: &dyn Fn() -> bool,
    deadline: Instant,
) -> impl Fn() -> Result<(), Interrupt> + '_ {
    move || {
        if cancelled() {
            Err(Interrupt::Cancelled)
        } else if Instant::now() >= deadline {
            Err(Interrupt::TimedOut)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
pub enum HttpError {
    /// No connection could be opened (refused, unreachable, name not found, connect timeout). Nothing was
    /// sent, so trying again is safe.
    Connect(String),
    /// The TLS handshake failed.
    Tls(String),
    /// The caller's check stopped the wait.
    Interrupted(Interrupt),
    /// The connection failed or was closed after it was opened.
    Io(io::Error),
    /// The server's answer is not the HTTP we expect.
    Protocol(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "{e}"),
            HttpError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HttpError::Interrupted(Interrupt::Cancelled) => write!(f, "cancelled"),
            HttpError::Interrupted(Interrupt::TimedOut) => write!(f, "timed out"),
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Protocol(e) => write!(f, "{e}"),
        }
    }
}

/// Where the server is: scheme, host, port and a base path that request paths are appended to.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    base_path: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// The URL as configured, without credentials, query or fragment: safe for messages.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.base_path)
    }
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/base]`. User names and passwords in the URL are refused (the API key
    /// settings are the one place for secrets), and so are queries and fragments.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim())
            .map_err(|e| format!("`url` {:?} is not a URL ({e})", redact_userinfo(text)))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "`url` must start with http:// or https://, not {other}://"
                ))
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "`url` must not contain a user name or password: put the key in the file named by `api_key_file` or the variable named by `api_key_env`".into(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("`url` must not have a query (?...) or fragment (#...)".into());
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(format!("`url` {text:?} has no host")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("`url` {text:?} has no port"))?;
        let base_path = url.path().trim_end_matches('/').to_string();
        Ok(Self {
            tls,
            host,
            port,
            base_path,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base path without a trailing slash ("" for the root).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// A copy with another base path.
    pub fn with_base_path(&self, base: &str) -> Self {
        Self {
            base_path: base.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    /// The request target for `path` (which starts with '/').
    pub fn target(&self, path: &str) -> String {
        format!("{}{path}", self.base_path)
    }

    /// `Host` header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
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

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// An open connection with its own read buffer.
pub struct Connection {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Connection {
    /// Opens a TCP connection (every resolved address in turn, each within `connect_timeout`) and, for
    /// https, completes the TLS handshake within `connect_timeout` as well.
    pub fn open(ep: &Endpoint, connect_timeout: Duration) -> Result<Self, HttpError> {
        let addrs: Vec<SocketAddr> = (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(|e| HttpError::Connect(format!("cannot resolve {}: {e}", ep.host)))?
            .collect();
        if addrs.is_empty() {
            return Err(HttpError::Connect(format!(
                "{} resolves to no address",
                ep.host
            )));
        }
        let mut last = None;
        let mut sock = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, connect_timeout) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let sock = match sock {
            Some(s) => s,
            None => {
                let e = last.expect("at least one address was tried");
                return Err(HttpError::Connect(describe_connect_error(
                    &e,
                    connect_timeout,
                )));
            }
        };
        let _ = sock.set_nodelay(true);
        let io: Box<dyn Io> = if ep.tls {
            Box::new(tls_handshake(ep, sock, connect_timeout)?)
        } else {
            sock.set_read_timeout(Some(TICK)).map_err(HttpError::Io)?;
            sock.set_write_timeout(Some(Duration::from_secs(30)))
                .map_err(HttpError::Io)?;
            Box::new(sock)
        };
        Ok(Self::from_io(io))
    }

    fn from_io(io: Box<dyn Io>) -> Self {
        Self {
            io,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Sends a request. `headers` must not contain `Host`, `Content-Length` or `Connection`.
    pub fn send(
        mut self,
        ep: &Endpoint,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        check: Check,
    ) -> Result<Response, HttpError> {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept-Encoding: identity\r\nUser-Agent: codellama-lsp/{}\r\n",
            ep.target(path),
            ep.host_header(),
            env!("CARGO_PKG_VERSION"),
        );
        for (name, value) in headers {
            if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
                return Err(HttpError::Protocol(format!(
                    "header {name} has a line break in it"
                )));
            }
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = body {
            bytes.extend_from_slice(body);
        }
        self.io
            .write_all(&bytes)
            .and_then(|_| self.io.flush())
            .map_err(HttpError::Io)?;
        let sent_at = Instant::now();
        let mut resp = Response::read_head(self, check)?;
        resp.sent_at = sent_at;
        Ok(resp)
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream. Waits, tick by tick, until data arrives
    /// or `check` says to stop.
    fn fill(&mut self, check: Check) -> Result<usize, HttpError> {
        if self.eof {
            return Ok(0);
        }
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        loop {
            check().map_err(HttpError::Interrupted)?;
            match self.io.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A TLS peer that closes without close_notify: the same as a plain close.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                    return Ok(0);
                }
                Err(e) => return Err(HttpError::Io(e)),
            }
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// One line without its line ending (`\n` or `\r\n`); `None` at end of stream before any byte.
    fn read_line(&mut self, check: Check) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            if let Some(i) = self.buffered().iter().position(|&b| b == b'\n') {
                let mut line = self.buffered()[..i].to_vec();
                self.consume(i + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.buffered().len() > MAX_LINE {
                return Err(HttpError::Protocol("a header line is too long".into()));
            }
            if self.fill(check)? == 0 {
                if self.buffered().is_empty() {
                    return Ok(None);
                }
                return Err(HttpError::Protocol(
                    "the connection closed in the middle of a line".into(),
                ));
            }
        }
    }
}

fn describe_connect_error(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            format!("no answer within {} ms", timeout.as_millis())
        }
        _ => e.to_string(),
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

fn tls_handshake(
    ep: &Endpoint,
    mut sock: TcpStream,
    timeout: Duration,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, HttpError> {
    let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
        .map_err(|e| HttpError::Tls(format!("{}: {e}", ep.host)))?;
    let mut conn = rustls::ClientConnection::new(tls_config(), name)
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(HttpError::Io)?;
    sock.set_write_timeout(Some(timeout))
        .map_err(HttpError::Io)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                HttpError::Connect(format!("no TLS answer within {} ms", timeout.as_millis()))
            }
            _ => HttpError::Tls(e.to_string()),
        })?;
    }
    sock.set_read_timeout(Some(TICK)).map_err(HttpError::Io)?;
    sock.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(HttpError::Io)?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

enum Body {
    /// `Transfer-Encoding: chunked`: bytes left in the current chunk (0: a size line comes next).
    Chunked { remaining: usize, done: bool },
    /// `Content-Length`.
    Length(usize),
    /// Until the server closes the connection.
    UntilClose,
}

/// A response whose body is read piece by piece. Dropping it closes the connection.
pub struct Response {
    /// When the request was written (the answer's waiting time starts there).
    pub sent_at: Instant,
    pub status: u16,
    pub reason: String,
    headers: Vec<(String, String)>,
    conn: Connection,
    body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl Response {
    fn read_head(mut conn: Connection, check: Check) -> Result<Response, HttpError> {
        let status_line = conn.read_line(check)?.ok_or_else(|| {
            HttpError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection without answering",
            ))
        })?;
        let status_line = String::from_utf8_lossy(&status_line).into_owned();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let code = parts.next().unwrap_or("");
        let reason = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/1.") || code.len() != 3 {
            return Err(HttpError::Protocol(format!(
                "not an HTTP/1.x answer: {status_line:?}"
            )));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| HttpError::Protocol(format!("bad status code {code:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = conn.read_line(check)?.ok_or_else(|| {
                HttpError::Protocol("the connection closed inside the response headers".into())
            })?;
            if line.is_empty() {
                break;
            }
            if headers.len() >= MAX_HEADERS {
                return Err(HttpError::Protocol("too many response headers".into()));
            }
            let line = String::from_utf8_lossy(&line);
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let chunked =
            find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Body::Length(0)
        } else if chunked {
            Body::Chunked {
                remaining: 0,
                done: false,
            }
        } else if let Some(len) = find("content-length") {
            Body::Length(
                len.parse()
                    .map_err(|_| HttpError::Protocol(format!("bad Content-Length {len:?}")))?,
            )
        } else {
            Body::UntilClose
        };
        if let Some(enc) = find("content-encoding") {
            if !enc.eq_ignore_ascii_case("identity") {
                return Err(HttpError::Protocol(format!(
                    "the server sent a {enc}-compressed body although identity was asked for"
                )));
            }
        }
        Ok(Response {
            sent_at: Instant::now(),
            status,
            reason,
            headers,
            conn,
            body,
        })
    }

    /// A response header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body as it arrives; `None` once the body is complete.
    pub fn read_chunk(&mut self, check: Check) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            match &mut self.body {
                Body::Length(0) => return Ok(None),
                Body::Length(left) => {
                    if self.conn.buffered().is_empty() && self.conn.fill(check)? == 0 {
                        return Err(HttpError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the connection closed with {left} bytes of the body missing"),
                        )));
                    }
                    let n = self.conn.buffered().len().min(*left);
                    let out = self.conn.buffered()[..n].to_vec();
                    self.conn.consume(n);
                    *left -= n;
                    return Ok(Some(out));
                }
                Body::UntilClose => {
                    if self.conn.buffered().is_empty() && self.conn.fill(check)? == 0 {
                        return Ok(None);
                    }
                    let out = self.conn.buffered().to_vec();
                    self.conn.consume(out.len());
                    return Ok(Some(out));
                }
                Body::Chunked { done: true, .. } => return Ok(None),
                Body::Chunked { remaining: 0, done } => {
                    let line = self.conn.read_line(check)?.ok_or_else(|| {
                        HttpError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection closed in the middle of the response",
                        ))
                    })?;
                    let line = String::from_utf8_lossy(&line);
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    if size_text.is_empty() {
                        // The line break that ends a chunk's data.
                        continue;
                    }
                    let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                        HttpError::Protocol(format!("bad chunk size {size_text:?}"))
                    })?;
                    if size == 0 {
                        *done = true;
                        // Trailers, then the empty line; tolerate a server that just closes.
                        while let Some(l) = self.conn.read_line(check)? {
                            if l.is_empty() {
                                break;
                            }
                        }
                        return Ok(None);
                    }
                    if let Body::Chunked { remaining, .. } = &mut self.body {
                        *remaining = size;
                    }
                }
                Body::Chunked { remaining, .. } => {
                    let want = *remaining;
                    if self.conn.buffered().is_empty() && self.conn.fill(check)? == 0 {
                        return Err(HttpError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection closed in the middle of the response",
                        )));
                    }
                    let n = self.conn.buffered().len().min(want);
                    let out = self.conn.buffered()[..n].to_vec();
                    self.conn.consume(n);
                    if let Body::Chunked { remaining, .. } = &mut self.body {
                        *remaining -= n;
                    }
                    return Ok(Some(out));
                }
            }
        }
    }

    /// The whole body, at most `limit` bytes.
    pub fn read_all(&mut self, check: Check, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(piece) = self.read_chunk(check)? {
            out.extend_from_slice(&piece);
            if out.len() > limit {
                return Err(HttpError::Protocol(format!(
                    "the response is larger than {} MiB",
                    limit >> 20
                )));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Serves scripted reads: data pieces and "would block" pauses, then end of stream.
    struct Script {
        reads: VecDeque<Option<Vec<u8>>>,
        written: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.reads.pop_front() {
                None => Ok(0),
                Some(None) => Err(io::ErrorKind::WouldBlock.into()),
                Some(Some(mut data)) => {
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    if n < data.len() {
                        self.reads.push_front(Some(data.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(pieces: Vec<Option<&[u8]>>) -> Connection {
        Connection::from_io(Box::new(Script {
            reads: pieces.into_iter().map(|p| p.map(<[u8]>::to_vec)).collect(),
            written: Vec::new(),
        }))
    }

    fn go() -> Result<(), Interrupt> {
        Ok(())
    }

    fn body_of(mut resp: Response) -> String {
        let mut out = Vec::new();
        while let Some(p) = resp.read_chunk(&go).unwrap() {
            out.extend(p);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn chunked_bodies_survive_any_split_and_pauses() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        // One byte at a time, with a pause between every byte.
        let mut pieces: Vec<Option<&[u8]>> = Vec::new();
        for i in 0..raw.len() {
            pieces.push(Some(&raw[i..i + 1]));
            pieces.push(None);
        }
        let resp = Response::read_head(conn(pieces), &go).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        assert_eq!(body_of(resp), "hello, world");
        // All at once.
        let resp = Response::read_head(conn(vec![Some(raw)]), &go).unwrap();
        assert_eq!(body_of(resp), "hello, world");
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let raw = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope!extra";
        let resp = Response::read_head(conn(vec![Some(raw)]), &go).unwrap();
        assert_eq!((resp.status, resp.reason.as_str()), (401, "Unauthorized"));
        assert_eq!(body_of(resp), "nope!");
        let raw = b"HTTP/1.0 200 OK\n\n{\"a\":1}\n{\"b\":2}\n";
        let resp = Response::read_head(conn(vec![Some(raw)]), &go).unwrap();
        assert_eq!(body_of(resp), "{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_truncated_chunked_body_is_an_error_not_an_end() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
        let mut resp = Response::read_head(conn(vec![Some(raw)]), &go).unwrap();
        assert_eq!(resp.read_chunk(&go).unwrap().unwrap(), b"hel");
        assert!(matches!(resp.read_chunk(&go), Err(HttpError::Io(_))));
    }

    #[test]
    fn the_check_interrupts_a_wait() {
        let pauses: Vec<Option<&[u8]>> = vec![None; 1000];
        let stop = || Err(Interrupt::Cancelled);
        let err = Response::read_head(conn(pauses), &stop).unwrap_err();
        assert!(matches!(err, HttpError::Interrupted(Interrupt::Cancelled)));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let err = Response::read_head(conn(vec![Some(b"SSH-2.0-OpenSSH\r\n")]), &go).unwrap_err();
        assert!(matches!(err, HttpError::Protocol(_)), "{err:?}");
    }

    #[test]
    fn endpoints() {
        let ep = Endpoint::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(ep.to_string(), "http://127.0.0.1:8080");
        assert_eq!(ep.target("/completion"), "/completion");
        assert_eq!(ep.host_header(), "127.0.0.1:8080");
        let ep = Endpoint::parse("https://gpu.example.com/v1").unwrap();
        assert_eq!(ep.to_string(), "https://gpu.example.com:443/v1");
        assert_eq!(ep.host_header(), "gpu.example.com");
        assert_eq!(ep.target("/completions"), "/v1/completions");
        let ep = Endpoint::parse("http://[::1]:11434").unwrap();
        assert_eq!(ep.host_header(), "[::1]:11434");
        assert!(Endpoint::parse("ftp://x").unwrap_err().contains("http://"));
        let err = Endpoint::parse("http://me:hunter2@host:1").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = Endpoint::parse("http//me:hunter2@host").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn requests_are_written_with_a_length_and_no_line_breaks_in_headers() {
        let script = Script {
            reads: VecDeque::from(vec![Some(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            )]),
            written: Vec::new(),
        };
        let c = Connection::from_io(Box::new(script));
        let ep = Endpoint::parse("http://localhost:8080").unwrap();
        let resp = c
            .send(
                &ep,
                "POST",
                "/completion",
                &[("Content-Type", "application/json")],
                Some(b"{}"),
                &go,
            )
            .unwrap();
        assert_eq!(resp.status, 200);
        let c = conn(vec![]);
        let err = c
            .send(
                &ep,
                "GET",
                "/",
                &[("Authorization", "Bearer a\r\nX: y")],
                None,
                &go,
            )
            .unwrap_err();
        assert!(matches!(err, HttpError::Protocol(_)));
    }
}
