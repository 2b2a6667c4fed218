//! A small, blocking JSON-RPC client for a language server process on stdio: what the latency benchmark and
//! the integration tests use to drive the real binary. Requests the server sends (such as
//! `window/workDoneProgress/create`) are recorded and answered with `null`, or with the result set for their
//! method with [`LspProcess::answer`] (e.g. `{"applied": true}` for `workspace/applyEdit`). The server's stderr
//! is kept. [`fixtures`] says where tests find models and fixtures.

#![forbid(unsafe_code)]

pub mod fixtures;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running server and the messages it sent.
pub struct LspProcess {
    child: Child,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    incoming: Receiver<Value>,
    next_id: i64,
    /// Responses that arrived while waiting for another one, by id.
    responses: HashMap<String, Value>,
    /// Every notification and request the server sent, in order.
    pub received: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    /// Results for the server's requests, by method (others are answered `null`).
    answers: Arc<Mutex<HashMap<String, Value>>>,
}

/// Frames one message (`Content-Length` header, then the body).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

fn id_key(id: &Value) -> String {
    id.to_string()
}

fn read_message(r: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = vec![0; length?];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl LspProcess {
    /// Starts `cmd` with piped stdio.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = Arc::new(Mutex::new(child.stdin.take()));
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let stderr_pipe = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no stderr"))?;
        let (tx, incoming) = channel();
        let replies = stdin.clone();
        let answers: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let results = answers.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(msg) = read_message(&mut reader) {
                if let Some(method) = msg.get("method").and_then(Value::as_str) {
                    if let Some(id) = msg.get("id") {
                        let result = results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(method)
                            .cloned()
                            .unwrap_or(Value::Null);
                        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
                        if let Some(w) = replies.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                        {
                            let _ = w.write_all(&frame(reply.to_string().as_bytes()));
                            let _ = w.flush();
                        }
                    }
                }
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr_pipe);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&line);
                line.clear();
            }
        });
        Ok(Self {
            child,
            stdin,
            incoming,
            next_id: 1,
            responses: HashMap::new(),
            received: Vec::new(),
            stderr,
            answers,
        })
    }

    /// Answers the server's requests of `method` with `result` from now on (instead of `null`).
    pub fn answer(&self, method: &str, result: Value) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(method.to_string(), result);
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until what the server wrote to stderr satisfies `pred`, and returns it. Stderr is read by its
    /// own thread, so a line the server logged before a message on stdout can still be on its way.
    pub fn wait_stderr(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr();
            if pred(&log) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                return Err(format!("the log never matched within {timeout:?}:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes raw bytes to the server's stdin (for malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let w = guard
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is closed"))?;
        w.write_all(bytes)?;
        w.flush()
    }

    pub fn send(&mut self, msg: &Value) -> std::io::Result<()> {
        self.send_raw(&frame(msg.to_string().as_bytes()))
    }

    /// Sends a request; returns its id.
    pub fn request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let _ = self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        let _ = self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Cancels a request with `$/cancelRequest`.
    pub fn cancel(&mut self, id: i64) {
        self.notify("$/cancelRequest", json!({"id": id}));
    }

    fn take_message(&mut self, deadline: Instant) -> Result<Value, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.incoming.recv_timeout(left) {
            Ok(msg) => Ok(msg),
            Err(RecvTimeoutError::Timeout) => Err("timed out".into()),
            Err(RecvTimeoutError::Disconnected) => Err("the server closed its output".into()),
        }
    }

    /// The next message the server sends, whatever it is, before `deadline` (`None` when none came). It is
    /// not recorded: for drivers that keep their own account, such as the typing replay, which must see every
    /// response, a second one for the same id included.
    pub fn next_message(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.incoming.recv_timeout(left) {
            Ok(msg) => Ok(Some(msg)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err("the server closed its output".into()),
        }
    }

    fn stash(&mut self, msg: Value) {
        if msg.get("method").is_some() {
            self.received.push(msg);
        } else if let Some(id) = msg.get("id") {
            self.responses.insert(id_key(id), msg);
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the response to request `id` (the whole message: `result` or `error`).
    pub fn response(&mut self, id: &Value, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(msg) = self.responses.remove(&id_key(id)) {
                return Ok(msg);
            }
            let msg = self
                .take_message(deadline)
                .map_err(|e| format!("waiting for the response to {id}: {e}"))?;
            self.stash(msg);
        }
    }

    /// Sends a request and waits for its result; a JSON-RPC error becomes `Err`.
    pub fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.request(method, params);
        let msg = self.response(&json!(id), timeout)?;
        match msg.get("error") {
            Some(e) => Err(format!("{method}: error {e}")),
            None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    /// Waits for a notification (or server request) with this method that `pred` accepts; earlier ones
    /// already received count too.
    pub fn wait_for(
        &mut self,
        method: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, String> {
        let matches = |m: &Value, pred: &mut dyn FnMut(&Value) -> bool| {
            m.get("method").and_then(Value::as_str) == Some(method)
                && pred(m.get("params").unwrap_or(&Value::Null))
        };
        if let Some(m) = self.received.iter().find(|m| matches(m, &mut pred)) {
            return Ok(m.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self
                .take_message(deadline)
                .map_err(|e| format!("waiting for {method}: {e}"))?;
            let hit = matches(&msg, &mut pred);
            self.stash(msg.clone());
            if hit {
                return Ok(msg);
            }
        }
    }

    /// Collects what arrived so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(msg) = self.incoming.try_recv() {
            self.stash(msg);
        }
    }

    /// The `initialize` request (with the given capabilities and options), then `initialized`; returns the
    /// initialize result.
    pub fn initialize(&mut self, capabilities: Value, options: Value) -> Result<Value, String> {
        let params = json!({
            "processId": std::process::id(),
            "rootUri": null,
            "capabilities": capabilities,
            "initializationOptions": options,
            "clientInfo": {"name": "codellama-lsp stdio_client"},
        });
        let result = self.call("initialize", params, Duration::from_secs(30))?;
        self.notify("initialized", json!({}));
        Ok(result)
    }

    /// Waits for `codellama/status` to say the (completion) model is ready (or failed: `Err`). Notifications
    /// about the chat model (`role: "chat"`) do not count.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Value, String> {
        let status = self.wait_for("codellama/status", timeout, |p| {
            p.get("role").is_none() && matches!(p["state"].as_str(), Some("ready") | Some("error"))
        })?;
        match status["params"]["state"].as_str() {
            Some("ready") => Ok(status),
            _ => Err(format!(
                "the model did not load: {}",
                status["params"]["message"]
            )),
        }
    }

    /// `shutdown`, `exit`, and the exit status.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        self.call("shutdown", Value::Null, timeout)?;
        self.notify("exit", Value::Null);
        self.wait_exit(timeout)
    }

    /// Closes the server's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => return Err("the server did not exit in time".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for LspProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
