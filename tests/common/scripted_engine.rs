//! A scripted inference engine on 127.0.0.1 for the failures a real engine cannot be made to produce on
//! demand: endless keep-alive comments, one byte a second, a 100 MB line, a bogus chunk size, a connection
//! closed in the middle of a chunk, an HTML error page. It is a mock, and only stands in for those states:
//! everything an engine does when it works is tested against llama.cpp's real server.
//!
//! A small `std::net::TcpListener` thread answers `GET /v1/models` (OpenAI-compatible) and `POST /api/show`
//! (Ollama) so that a backend can connect, and answers every other request with the next scripted
//! [`Reply`] (or the fallback once the script is used up), writing exactly the reply's bytes, then closes
//! the connection unless the reply keeps it open ([`Conn::keep_open`]). It counts the connections it
//! accepts. Every connection runs on its own thread and gives up after [`LIMIT`], so no test can hang on it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest any scripted reply goes on.
pub const LIMIT: Duration = Duration::from_secs(60);

/// What the engine writes for one request; `Err` when the client went away.
pub type Reply = Arc<dyn Fn(&mut Conn) -> std::io::Result<()> + Send + Sync>;

/// One accepted connection, as a scripted reply sees it.
pub struct Conn {
    stream: TcpStream,
    started: Instant,
    written: Arc<AtomicUsize>,
    keep_open: bool,
}

impl Conn {
    /// After this reply, the connection stays open for the client's next request (keep-alive).
    pub fn keep_open(&mut self) {
        self.keep_open = true;
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.started.elapsed() > LIMIT {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        self.written.fetch_add(bytes.len(), Ordering::SeqCst);
        Ok(())
    }

    /// Waits until the client closes the connection (bounded by [`LIMIT`]).
    pub fn wait_for_close(&mut self) {
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 1024];
        while self.started.elapsed() < LIMIT {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => return,
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

pub struct ScriptedEngine {
    pub port: u16,
    script: Arc<Mutex<VecDeque<Reply>>>,
    /// Scripted requests answered so far, and bytes written by scripted replies.
    answered: Arc<AtomicUsize>,
    written: Arc<AtomicUsize>,
    /// Connections whose client closed them while a [`ScriptedEngine::hang`] reply waited.
    closed: Arc<AtomicUsize>,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ScriptedEngine {
    /// Answers scripted requests with `fallback` once `script` is used up.
    pub fn start(script: Vec<Reply>, fallback: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let engine = ScriptedEngine {
            port: listener.local_addr().unwrap().port(),
            script: Arc::new(Mutex::new(script.into())),
            answered: Arc::default(),
            written: Arc::default(),
            closed: Arc::default(),
            accepted: Arc::default(),
            stop: Arc::default(),
        };
        let (script, answered, written, stop, accepted) = (
            engine.script.clone(),
            engine.answered.clone(),
            engine.written.clone(),
            engine.stop.clone(),
            engine.accepted.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if is_timeout(&e) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (script, answered, written, fallback) = (
                    script.clone(),
                    answered.clone(),
                    written.clone(),
                    fallback.clone(),
                );
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut conn = Conn {
                        stream,
                        started: Instant::now(),
                        written,
                        keep_open: true,
                    };
                    // One request after another for as long as the replies keep the connection open.
                    while std::mem::take(&mut conn.keep_open) {
                        let Some(request_line) = read_request(&mut conn.stream) else {
                            return;
                        };
                        let _ = match builtin(&request_line) {
                            Some(bytes) => conn.stream.write_all(&bytes),
                            None => {
                                let reply = script
                                    .lock()
                                    .unwrap()
                                    .pop_front()
                                    .unwrap_or(fallback.clone());
                                answered.fetch_add(1, Ordering::SeqCst);
                                reply(&mut conn)
                            }
                        };
                    }
                });
            }
        });
        engine
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds replies to the end of the script.
    pub fn then(&self, replies: Vec<Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn bytes_written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` connections held by [`ScriptedEngine::hang`] have been closed by the client.
    pub fn wait_closed(&self, n: usize, within: Duration) {
        let until = Instant::now() + within;
        while self.closed.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < until,
                "the client did not close the connection"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A reply that sends the response head and then nothing, until the client closes the connection
    /// (counted for [`ScriptedEngine::wait_closed`]).
    pub fn hang(&self) -> Reply {
        let closed = self.closed.clone();
        Arc::new(move |c: &mut Conn| {
            c.write(&sse_head())?;
            c.wait_for_close();
            closed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

impl Drop for ScriptedEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one request (head and `Content-Length` body); its request line.
fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    // A request sent to a proxy names the whole URL ("GET http://host:port/v1/models"): the path only.
    let head = match head.split_once(" http://") {
        Some((method, rest)) if !method.contains('\n') => {
            let path_at = rest.find('/').unwrap_or(rest.len());
            format!("{method} {}", &rest[path_at..])
        }
        _ => head,
    };
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&buf[..n]);
    }
    head.lines().next().map(str::to_string)
}

/// The answers that let a backend connect.
fn builtin(request_line: &str) -> Option<Vec<u8>> {
    let body = if request_line.starts_with("GET /v1/models ") {
        r#"{"object":"list","data":[{"id":"scripted","object":"model","meta":{"n_ctx":2048}}]}"#
    } else if request_line.starts_with("POST /api/show ") {
        r#"{"parameters":"num_ctx 2048","model_info":{"general.architecture":"llama"}}"#
    } else {
        return None;
    };
    Some(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// The head of a streamed answer that lasts until the connection closes.
pub fn sse_head() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n".to_vec()
}

/// An OpenAI-compatible streamed event carrying `text`.
pub fn openai_event(text: &str, finish: Option<&str>) -> Vec<u8> {
    let v = serde_json::json!({"choices": [{"text": text, "index": 0, "finish_reason": finish}]});
    format!("data: {v}\n\n").into_bytes()
}

/// A reply of exactly these bytes, then the connection closes.
pub fn bytes(b: impl Into<Vec<u8>>) -> Reply {
    let b = b.into();
    Arc::new(move |c: &mut Conn| c.write(&b))
}

/// A complete, well-formed OpenAI-compatible answer: `tokens` as text pieces, then `finish_reason: length`.
pub fn answer(tokens: &[&str]) -> Reply {
    let mut b = sse_head();
    for t in tokens {
        b.extend(openai_event(t, None));
    }
    b.extend(openai_event("", Some("length")));
    b.extend(b"data: [DONE]\n\n");
    bytes(b)
}

/// [`answer`] as a server that keeps connections alive sends it: its length announced, no
/// `Connection: close`, and the connection left open for the next request.
pub fn answer_keeping_alive(tokens: &[&str]) -> Reply {
    let mut body = Vec::new();
    for t in tokens {
        body.extend(openai_event(t, None));
    }
    body.extend(openai_event("", Some("length")));
    body.extend(b"data: [DONE]\n\n");
    let mut b = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    b.extend(body);
    Arc::new(move |c: &mut Conn| {
        c.write(&b)?;
        c.keep_open();
        Ok(())
    })
}

/// The head, `first` at once, then `piece` every `every` until the client goes away.
pub fn trickle(first: Vec<u8>, piece: Vec<u8>, every: Duration) -> Reply {
    Arc::new(move |c: &mut Conn| {
        c.write(&sse_head())?;
        c.write(&first)?;
        loop {
            std::thread::sleep(every);
            c.write(&piece)?;
        }
    })
}

/// The head, then `piece` repeated as fast as the client takes it, at most `total` bytes.
pub fn flood(first: Vec<u8>, piece: Vec<u8>, total: usize) -> Reply {
    Arc::new(move |c: &mut Conn| {
        c.write(&sse_head())?;
        c.write(&first)?;
        let mut sent = 0;
        while sent < total {
            c.write(&piece)?;
            sent += piece.len();
        }
        Ok(())
    })
}
