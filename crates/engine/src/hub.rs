//! Downloads from the Hugging Face Hub into its standard cache (`$HF_HOME/hub`, the layout hf-hub and the
//! Python `huggingface_hub` share: `blobs/<etag>`, `snapshots/<commit>/<file>`, `refs/main`), so a file
//! fetched here is found offline by `hf_hub::Cache` afterwards. A download reports its bytes as they
//! arrive, stops as soon as the caller cancels it, goes on from a `.part` file left by an earlier
//! attempt (a `Range` request for the rest only), and is checked against the size and SHA-256 the Hub
//! announces (`x-linked-size`, `x-linked-etag`) before it takes its final name. One process at a time
//! downloads a file: the others wait on its lock in the cache's `.locks/` (where the Python tools lock too).
//!
//! Why our own transfer and not hf-hub's `download_with_progress`: hf-hub 0.4's sync API does resume a
//! `.part` file and reports through its `Progress` trait, but nothing can stop a transfer from outside (the
//! trait only observes), and it never checks the bytes against the announced size or hash. The transfer
//! runs on the HTTP stack of the remote engines (`backends::http`: reqwest, proxies from the environment)
//! as a task that hands the bytes to the calling thread, which writes and hashes them; cancelling drops
//! the task's response. hf-hub still provides the cache paths and repository listings.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION, RANGE};
use reqwest::Response;

use crate::http;
use crate::CancelToken;

/// The Hub's address unless `HF_ENDPOINT` names another (a mirror, or a local stand-in in tests).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A transfer that receives nothing for this long is abandoned (the `.part` file stays for a resume).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 8;

/// A file on the Hub, as its `resolve` URL describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub repo: String,
    pub file: String,
    /// Bytes, as the Hub announces them.
    pub size: u64,
    /// The SHA-256 the Hub announces for files kept in LFS/Xet (all model weights); `None` for small files
    /// kept in git, whose etag is a git hash.
    pub sha256: Option<String>,
    commit: String,
    etag: String,
    url: String,
}

impl HubFile {
    /// Where the finished file is linked: `snapshots/<commit>/<file>` in the repository's cache folder.
    pub fn cache_path(&self) -> PathBuf {
        repo_dir(&self.repo)
            .join("snapshots")
            .join(&self.commit)
            .join(&self.file)
    }

    fn blob_path(&self) -> PathBuf {
        repo_dir(&self.repo).join("blobs").join(&self.etag)
    }

    /// The partial download beside the blob, named as hf-hub names it so either can resume the other's.
    pub fn part_path(&self) -> PathBuf {
        let mut p = self.blob_path().into_os_string();
        p.push(".part");
        PathBuf::from(p)
    }

    /// The lock a process holds while it fetches the blob: `.locks/<repo folder>/<etag>.lock` in the cache,
    /// where the Python `huggingface_hub` takes its own (an exclusive `flock`, as ours), so that neither
    /// appends to the other's `.part` file.
    pub fn lock_path(&self) -> PathBuf {
        hf_hub::Cache::from_env()
            .path()
            .join(".locks")
            .join(hf_hub::Repo::model(self.repo.clone()).folder_name())
            .join(format!("{}.lock", self.etag))
    }
}

/// Why a download did not produce its file.
#[derive(Debug)]
pub enum HubError {
    /// The caller cancelled it; what had arrived stays in the `.part` file for a later resume.
    Cancelled,
    Failed(String),
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubError::Cancelled => write!(f, "the download was cancelled"),
            HubError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// What a download reports, in order: `Waiting` once if another process is downloading the same file,
/// then (unless that process finished it) `Start` once, `Progress` as bytes arrive (starting from what a
/// resumed `.part` file held), nothing after the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Another process (a second editor's server, the Hub's own tools) holds the file's download lock;
    /// this one waits for it, and can be cancelled meanwhile.
    Waiting {
        file: HubFile,
    },
    Start {
        file: HubFile,
        resumed_from: u64,
    },
    Progress {
        done: u64,
        total: u64,
    },
}

/// The caller's side of a download: where events go, and the token that stops it.
pub struct Hooks<'a> {
    pub on_event: &'a mut dyn FnMut(Event),
    pub cancel: &'a CancelToken,
}

/// The configured Hub address (`HF_ENDPOINT`), without a trailing slash.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string()
}

fn repo_dir(repo: &str) -> PathBuf {
    hf_hub::Cache::from_env()
        .path()
        .join(hf_hub::Repo::model(repo.to_string()).folder_name())
}

/// Asks the Hub what `repo`'s `file` is (size, hash, commit) with a one-byte request, as hf-hub does.
pub fn probe(repo: &str, file: &str) -> Result<HubFile, HubError> {
    let url = format!("{}/{repo}/resolve/main/{file}", endpoint());
    let Answer {
        resp,
        hub_headers,
        url: final_url,
    } = http::wait(get(url.clone(), "bytes=0-0", CancelToken::new()))?;
    let header = |name: &str| {
        hub_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| header_text(resp.headers(), name))
    };
    let commit = header("x-repo-commit").ok_or_else(|| {
        HubError::Failed(format!(
            "{url} answered without x-repo-commit: is {} the Hugging Face Hub?",
            endpoint()
        ))
    })?;
    let etag = header("x-linked-etag")
        .or_else(|| header("etag"))
        .map(|e| e.trim_start_matches("W/").replace('"', ""))
        .ok_or_else(|| HubError::Failed(format!("{url} answered without an etag")))?;
    let size = header("x-linked-size")
        .or_else(|| header("content-range").and_then(|r| r.rsplit('/').next().map(str::to_string)))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| HubError::Failed(format!("{url} did not say how large {file} is")))?;
    let is_sha256 = etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    if etag.contains(['/', '\\']) || commit.contains(['/', '\\']) || commit.is_empty() {
        return Err(HubError::Failed(format!(
            "{url} answered with an etag or commit that is not a plain name"
        )));
    }
    Ok(HubFile {
        repo: repo.to_string(),
        file: file.to_string(),
        size,
        sha256: is_sha256.then(|| etag.to_ascii_lowercase()),
        commit,
        etag,
        url: final_url,
    })
}

/// Downloads `f` (unless its blob is already complete) and links it into the cache; returns the path.
pub fn fetch(f: &HubFile, hooks: &mut Hooks<'_>) -> Result<PathBuf, HubError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        HubError::Failed(format!("{what} {}: {e}", path.display()))
    };
    let blob = f.blob_path();
    if !blob.is_file() {
        let _lock = lock_download(f, hooks)?;
        // The process that held the lock may have finished the file meanwhile.
        if !blob.is_file() {
            let part = f.part_path();
            if let Some(dir) = part.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
            }
            download(f, &part, hooks)?;
            std::fs::rename(&part, &blob).map_err(|e| io("cannot rename", &part, e))?;
        }
    }
    let link = f.cache_path();
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    }
    if !link.exists() {
        place_link(&blob, &link).map_err(|e| io("cannot link", &link, e))?;
    }
    hf_hub::Cache::from_env()
        .model(f.repo.clone())
        .create_ref(&f.commit)
        .map_err(|e| io("cannot write the ref of", &repo_dir(&f.repo), e))?;
    Ok(link)
}

/// How often a download waiting for another process's lock looks again (and at its cancel token).
const LOCK_POLL: Duration = Duration::from_millis(200);

/// Takes `f`'s download lock (`HubFile::lock_path`), waiting while another process holds it: two processes
/// appending to one `.part` file would interleave their bytes, and each would check only the ones it
/// received, so a corrupt file could take the blob's name. The lock goes with the returned file; `None`
/// where the file system cannot lock (the download then goes ahead unguarded, as before).
fn lock_download(f: &HubFile, hooks: &mut Hooks<'_>) -> Result<Option<std::fs::File>, HubError> {
    let path = f.lock_path();
    let failed =
        |what: &str, e: std::io::Error| HubError::Failed(format!("{what} {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed("cannot create the folder of", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| failed("cannot open", e))?;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    (hooks.on_event)(Event::Waiting { file: f.clone() });
                    told = true;
                }
                if hooks.cancel.is_cancelled() {
                    return Err(HubError::Cancelled);
                }
                std::thread::sleep(LOCK_POLL);
            }
            Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                return Ok(None)
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed("cannot lock", e)),
        }
    }
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>` (relative, as the Hub's tools write it).
#[cfg(unix)]
fn place_link(blob: &Path, link: &Path) -> std::io::Result<()> {
    let depth = link
        .strip_prefix(blob.parent().and_then(Path::parent).unwrap_or(blob))
        .map(|p| p.components().count().saturating_sub(1))
        .unwrap_or(2);
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn place_link(blob: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, link).map(|_| ())
}

/// Fills `part` up to `f.size` (from where it stopped), then checks size and hash; a file that fails the
/// check is removed, so the next attempt starts clean.
fn download(f: &HubFile, part: &Path, hooks: &mut Hooks<'_>) -> Result<(), HubError> {
    let io = |path: &Path, e: std::io::Error| HubError::Failed(format!("{}: {e}", path.display()));
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > f.size {
        std::fs::remove_file(part).map_err(|e| io(part, e))?;
        have = 0;
    }
    (hooks.on_event)(Event::Start {
        file: f.clone(),
        resumed_from: have,
    });
    // The bytes already on disk are hashed from the disk, not fetched again.
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    if have > 0 {
        let mut r = std::fs::File::open(part).map_err(|e| io(part, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(|e| io(part, e))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
        }
    }
    (hooks.on_event)(Event::Progress {
        done: have,
        total: f.size,
    });
    if have < f.size {
        let cancel = hooks.cancel.clone();
        let resp = http::wait(get(f.url.clone(), format!("bytes={have}-"), cancel.clone()))?.resp;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(|e| io(part, e))?;
        if resp.status() == reqwest::StatusCode::OK && have > 0 {
            // The server ignored the range: start over.
            out.set_len(0).map_err(|e| io(part, e))?;
            sha = ring::digest::Context::new(&ring::digest::SHA256);
            have = 0;
        }
        let mut pieces = pump(resp, f.url.clone(), cancel);
        while let Some(piece) = pieces.blocking_recv() {
            let piece = piece?;
            out.write_all(&piece).map_err(|e| io(part, e))?;
            sha.update(&piece);
            have += piece.len() as u64;
            if have > f.size {
                break;
            }
            (hooks.on_event)(Event::Progress {
                done: have,
                total: f.size,
            });
        }
        out.flush().map_err(|e| io(part, e))?;
    }
    let corrupted = |why: String| {
        let _ = std::fs::remove_file(part);
        HubError::Failed(format!(
            "{} from {} is corrupted: {why}; the download was removed, so the next attempt starts over",
            f.file, f.repo
        ))
    };
    if have != f.size {
        return Err(corrupted(format!(
            "{have} bytes arrived, the Hub announced {}",
            f.size
        )));
    }
    if let Some(want) = &f.sha256 {
        let got = hex(sha.finish().as_ref());
        if got != *want {
            return Err(corrupted(format!(
                "its SHA-256 is {got}, the Hub announced {want}"
            )));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The body of `resp` as it arrives, read by a task on the HTTP runtime for the calling thread: pieces,
/// then an error if the transfer failed, stalled for [`STALL_TIMEOUT`] or was cancelled. Dropping the
/// receiver (the caller gave up) ends the task and closes the connection.
fn pump(
    mut resp: Response,
    url: String,
    cancel: CancelToken,
) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>, HubError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    http::runtime().spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(HubError::Cancelled),
                r = tokio::time::timeout(STALL_TIMEOUT, resp.chunk()) => match r {
                    Ok(Ok(Some(piece))) => Ok(piece.to_vec()),
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => Err(transfer_error(&url, e)),
                    Err(_) => Err(HubError::Failed(format!(
                        "{}: nothing arrived for {} s",
                        redact_query(&url),
                        STALL_TIMEOUT.as_secs()
                    ))),
                },
            };
            let failed = next.is_err();
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

fn transfer_error(url: &str, e: reqwest::Error) -> HubError {
    HubError::Failed(format!("{}: {}", redact_query(url), http::describe(&e)))
}

/// A response header as text.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The one client of the downloads (its connections are reused from the probe to the transfer).
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        http::client_builder(CONNECT_TIMEOUT)
            .build()
            .expect("the HTTP client's settings are valid")
    })
}

/// A CDN address without its query (signed URLs carry credentials there).
fn redact_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// A successful answer of [`get`].
struct Answer {
    resp: Response,
    /// The headers of the Hub's own answers along the way (they carry `x-repo-commit` and `x-linked-*`
    /// before a redirect to a CDN).
    hub_headers: Vec<(String, String)>,
    /// The final URL.
    url: String,
}

/// A GET of `range` (`bytes=A-` or `bytes=A-B`), following redirects, until the answer's head.
async fn get(url: String, range: impl AsRef<str>, cancel: CancelToken) -> Result<Answer, HubError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(HubError::Cancelled),
        r = tokio::time::timeout(STALL_TIMEOUT, follow(&url, range.as_ref())) => r.unwrap_or_else(|_| {
            Err(HubError::Failed(format!("the Hub did not answer within {} s", STALL_TIMEOUT.as_secs())))
        }),
    }
}

async fn follow(url: &str, range: &str) -> Result<Answer, HubError> {
    let hub_host = url::Url::parse(&endpoint())
        .ok()
        .and_then(|u| u.host_str().map(str::to_string));
    let token = hf_hub::Cache::from_env().token();
    let mut url = url.to_string();
    let mut seen: Vec<(String, String)> = Vec::new();
    for _ in 0..MAX_REDIRECTS {
        let parsed = url::Url::parse(&url)
            .map_err(|e| HubError::Failed(format!("{} is not a URL: {e}", redact_query(&url))))?;
        let mut req = client().get(parsed.clone()).header(RANGE, range);
        // The token goes to the Hub only, never to the CDN it redirects to.
        if let (Some(t), true) = (&token, parsed.host_str() == hub_host.as_deref()) {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = http::send(req).await.map_err(|e| transfer_error(&url, e))?;
        for name in ["x-repo-commit", "x-linked-etag", "x-linked-size", "etag"] {
            if let Some(v) = header_text(resp.headers(), name) {
                if !seen.iter().any(|(n, _)| n == name) {
                    seen.push((name.to_string(), v));
                }
            }
        }
        let status = resp.status();
        let reason = status.canonical_reason().unwrap_or("");
        match status.as_u16() {
            200 | 206 => {
                return Ok(Answer {
                    resp,
                    hub_headers: seen,
                    url,
                })
            }
            301 | 302 | 303 | 307 | 308 => {
                let location = header_text(resp.headers(), LOCATION.as_str()).ok_or_else(|| {
                    HubError::Failed(format!("{} redirected nowhere", redact_query(&url)))
                })?;
                url = parsed
                    .join(&location)
                    .map_err(|e| HubError::Failed(format!("bad redirect {location:?}: {e}")))?
                    .to_string();
            }
            401 | 403 => {
                return Err(HubError::Failed(format!(
                    "{} answered {} {reason}: a gated or private repository needs a token (HF_TOKEN, or `huggingface-cli login`)",
                    redact_query(&url),
                    status.as_u16(),
                )))
            }
            404 => {
                return Err(HubError::Failed(format!(
                    "{} does not exist (404): check the repository and file name",
                    redact_query(&url)
                )))
            }
            s => {
                return Err(HubError::Failed(format!(
                    "{} answered {s} {reason}",
                    redact_query(&url),
                )))
            }
        }
    }
    Err(HubError::Failed(format!(
        "{} redirected more than {MAX_REDIRECTS} times",
        redact_query(&url)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_left_out_of_messages() {
        assert_eq!(
            redact_query("https://cdn/x.gguf?X-Amz-Signature=secret"),
            "https://cdn/x.gguf"
        );
    }
}
