//! llama.cpp's server for the tests that need a real engine: the binary from `LLAMA_SERVER` or from the cache
//! that `scripts/fetch-llama-server` fills, started on a loopback port with the small SmolLM2 model and killed
//! when dropped. Tests take [`serial`] so that only one of them drives a server at a time (the machines are
//! small).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const LLAMA_CPP_VERSION: &str = "11434.0.0";

static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn llama_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LLAMA_SERVER") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "LLAMA_SERVER={} does not exist", p.display());
        return p;
    }
    let cached = super::checkout()
        .join(".cache/llama.cpp")
        .join(LLAMA_CPP_VERSION)
        .join("build/bin/llama-server");
    assert!(
        cached.is_file(),
        "llama.cpp's server is needed for these tests: run scripts/fetch-llama-server (builds it once \
         into {}), or set LLAMA_SERVER to a llama-server binary",
        cached.display()
    );
    cached
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running llama-server; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    args: Vec<String>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_on(free_port(), extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> Server {
        let bin = llama_server_binary();
        let log = std::env::temp_dir().join(format!(
            "codellama-lsp-llama-server-{}-{port}.log",
            std::process::id()
        ));
        let mut args: Vec<String> = [
            "-m",
            &super::small_model().display().to_string(),
            "-c",
            "2048",
            "-np",
            "1",
            "-t",
            "2",
            "-fa",
            "off",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--metrics",
            "--no-webui",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap().try_clone().unwrap());
        if let Some(dir) = bin.parent() {
            // A shared-library build finds its libraries beside it.
            let mut paths = vec![dir.to_path_buf()];
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                paths.extend(std::env::split_paths(&old));
            }
            cmd.env("LD_LIBRARY_PATH", std::env::join_paths(paths).unwrap());
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut server = Server {
            child: Some(child),
            port,
            log,
            args,
        };
        server.wait_ready();
        server
    }

    pub fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("llama-server exited ({status}):\n{}", self.log_tail());
            }
            if let Ok((200, _)) = http_get(self.port, "/health", None) {
                return;
            }
            assert!(
                Instant::now() < until,
                "llama-server not ready after 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `GET /slots`: whether the (only) slot is processing.
    pub fn slot_busy(&self, key: Option<&str>) -> bool {
        let (status, body) = http_get(self.port, "/slots", key).unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v[0]["is_processing"].as_bool().unwrap()
    }

    /// A counter or gauge from `GET /metrics`.
    pub fn metric(&self, name: &str, key: Option<&str>) -> f64 {
        let (status, body) = http_get(self.port, "/metrics", key).unwrap();
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }

    /// Waits (bounded) until the slot is idle, asking every `every`; returns how long that took.
    ///
    /// While a prompt is being processed, llama.cpp checks whether a streaming client went away only when
    /// its wait for results sees no result at all for a whole second (HTTP_POLLING_SECONDS); every answer
    /// to a `/slots` request counts as a result and restarts that second. So asking more often than once a
    /// second hides the closed connection from the engine: ask slowly there.
    pub fn wait_idle(&self, key: Option<&str>, within: Duration, every: Duration) -> Duration {
        let t = Instant::now();
        loop {
            std::thread::sleep(every);
            if !self.slot_busy(key) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "the engine still processes after {within:?}"
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "llama-server {:?}, log {}:\n{}",
                self.args,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

/// A plain GET for the test's own observations of the engine (`/health`, `/slots`, `/metrics`).
pub fn http_get(port: u16, path: &str, key: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Good enough for the small bodies read here: strip chunk-size lines if chunked.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
