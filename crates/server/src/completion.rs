//! Answering a completion: from the typing-ahead cache, or from one generation per document.
//!
//! - A request takes a snapshot of its document and never holds the document lock afterwards.
//! - Per document at most one generation runs. A newer request at another place cancels it (the engine
//!   stops within one token; a request still queued is answered without touching the model). A request for
//!   the same place (an inline completion and a completion asked together) shares the running generation.
//! - A generation runs in its own task; the requests wait for its result. When the last waiting request goes
//!   away (`$/cancelRequest` drops the handler), the generation is cancelled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use super::cache::TypeAheadCache;
use super::model::ModelHost;
use super::pipeline::{self, Input};
use super::status::{Status, StatusTimings};
use crate::config::Config;
use codellama_engine::{Backend, CancelToken, StopReason};
use codellama_text::documents::{Document, Pos, PositionEncoding};
use codellama_text::prompt::ContextChunk;

/// Where the server looks for what a completion needs.
#[derive(Clone)]
pub struct Env {
    pub model: Arc<ModelHost>,
    pub config: Arc<Config>,
    pub status: Status,
    /// Other open documents, most recently edited first (empty unless `context_tokens` asks for them).
    pub context: Arc<[ContextChunk]>,
}

/// A suggestion to show at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// The text to insert, with the document's line breaks.
    pub text: String,
    /// The cursor, clamped into the document, in the negotiated encoding.
    pub at: Pos,
    pub from_cache: bool,
    /// The word (identifier characters) just before the cursor, for clients that filter completion items by it.
    pub word: String,
}

type Answer = Option<Arc<str>>;

struct Flight {
    id: u64,
    prefix: Arc<str>,
    suffix: Arc<str>,
    cancel: CancelToken,
    waiters: usize,
    result: watch::Receiver<Option<Answer>>,
}

struct Inner {
    flights: Mutex<HashMap<String, Flight>>,
    builders: pipeline::Builders,
    cache: Mutex<TypeAheadCache>,
    next_id: AtomicU64,
    closing: AtomicBool,
}

/// The completion machinery of one server. Cheap to clone.
#[derive(Clone)]
pub struct Completer {
    inner: Arc<Inner>,
}

/// Characters taken on each side of the cursor per token of context window: the prompt builder cuts to the
/// token budget and never looks further than this; it only bounds the text copied per request.
const CHARS_PER_TOKEN: usize = 24;

impl Completer {
    pub fn new(cache_size: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                flights: Mutex::new(HashMap::new()),
                builders: pipeline::Builders::default(),
                cache: Mutex::new(TypeAheadCache::new(cache_size)),
                next_id: AtomicU64::new(1),
                closing: AtomicBool::new(false),
            }),
        }
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<String, Flight>> {
        self.inner.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, TypeAheadCache> {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_cache_size(&self, size: usize) {
        self.cache().set_capacity(size);
    }

    /// Cancels the document's generation, if any.
    pub fn cancel(&self, uri: &str) {
        if let Some(f) = self.flights().remove(uri) {
            f.cancel.cancel();
        }
    }

    /// A document was closed.
    pub fn forget(&self, uri: &str) {
        self.cancel(uri);
        self.cache().forget(uri);
    }

    /// Cancels every generation and answers every later request empty (shutdown, or the client went away).
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        for (_, f) in self.flights().drain() {
            f.cancel.cancel();
        }
    }

    /// A suggestion at `pos` in `doc`, or `None` (no model yet, language off, nothing to suggest, superseded).
    pub async fn complete(
        &self,
        env: &Env,
        uri: &str,
        doc: &Document,
        pos: Pos,
        enc: PositionEncoding,
    ) -> Option<Suggestion> {
        let arrived = Instant::now();
        if self.inner.closing.load(Ordering::SeqCst) {
            return None;
        }
        if !env.config.language_enabled(&doc.language_id) {
            tracing::debug!(
                uri,
                language = doc.language_id,
                "suggestions are off for this language"
            );
            return None;
        }
        let max_chars = (env.config.context_window * CHARS_PER_TOKEN).max(4096);
        let split = doc.split(pos, enc, max_chars);
        let at = doc.position(split.cursor, enc);
        let prefix: Arc<str> = to_lf(split.prefix).into();
        let suffix: Arc<str> = to_lf(split.suffix).into();
        let with_eol = |text: &str| {
            if split.crlf {
                text.replace('\n', "\r\n")
            } else {
                text.to_string()
            }
        };
        let word = word_before(&prefix);

        let cached = self.cache().lookup(uri, &prefix, &suffix);
        if let Some(rest) = cached {
            self.cancel_other(uri, &prefix, &suffix);
            tracing::debug!(
                uri,
                chars = rest.chars().count(),
                "answered from the typing-ahead cache"
            );
            return (!rest.is_empty()).then(|| Suggestion {
                text: with_eol(&rest),
                at,
                from_cache: true,
                word,
            });
        }
        let Some(backend) = env.model.backend_or_retry() else {
            tracing::debug!(uri, "no model loaded yet: empty answer");
            return None;
        };

        let (mut result, _waiter) = self.join_or_start(
            env,
            backend,
            uri,
            doc,
            (prefix, split.first_line, suffix),
            arrived,
        );
        let answer = loop {
            if let Some(answer) = result.borrow_and_update().clone() {
                break answer;
            }
            if result.changed().await.is_err() {
                break None; // the generation task ended without an answer (it cannot, short of a bug)
            }
        };
        let text = answer?;
        (!text.is_empty()).then(|| Suggestion {
            text: with_eol(&text),
            at,
            from_cache: false,
            word,
        })
    }

    /// Cancels the document's generation unless it is for this place.
    fn cancel_other(&self, uri: &str, prefix: &str, suffix: &str) {
        let mut flights = self.flights();
        if flights
            .get(uri)
            .is_some_and(|f| &*f.prefix != prefix || &*f.suffix != suffix)
        {
            if let Some(f) = flights.remove(uri) {
                f.cancel.cancel();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join_or_start(
        &self,
        env: &Env,
        backend: Arc<dyn Backend>,
        uri: &str,
        doc: &Document,
        (prefix, first_line, suffix): (Arc<str>, usize, Arc<str>),
        arrived: Instant,
    ) -> (watch::Receiver<Option<Answer>>, Waiter) {
        let mut flights = self.flights();
        if let Some(f) = flights.get_mut(uri) {
            if f.prefix == prefix && f.suffix == suffix && !f.cancel.is_cancelled() {
                f.waiters += 1;
                tracing::debug!(uri, "joined the generation already running for this place");
                return (f.result.clone(), self.waiter(uri, f.id));
            }
        }
        if let Some(old) = flights.remove(uri) {
            old.cancel.cancel();
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancelToken::new();
        let (tx, rx) = watch::channel(None);
        flights.insert(
            uri.to_string(),
            Flight {
                id,
                prefix: prefix.clone(),
                suffix: suffix.clone(),
                cancel: cancel.clone(),
                waiters: 1,
                result: rx.clone(),
            },
        );
        drop(flights);

        let run = CompletionRun {
            completer: self.clone(),
            env: env.clone(),
            backend,
            uri: uri.to_string(),
            path: file_path(uri),
            language_id: doc.language_id.clone(),
            prefix,
            first_line,
            suffix,
            id,
            cancel,
            arrived,
        };
        tokio::spawn(async move {
            let answer = run.run().await;
            let _ = tx.send(Some(answer));
        });
        (rx, self.waiter(uri, id))
    }

    fn waiter(&self, uri: &str, id: u64) -> Waiter {
        Waiter {
            completer: self.clone(),
            uri: uri.to_string(),
            id,
        }
    }

    /// A generation ended: forget it unless a newer one took its place.
    fn landed(&self, uri: &str, id: u64) {
        let mut flights = self.flights();
        if flights.get(uri).is_some_and(|f| f.id == id) {
            flights.remove(uri);
        }
    }
}

/// A request waiting for a generation. Dropped (answered, or the handler dropped by `$/cancelRequest`), it
/// cancels the generation if nobody else waits for it.
struct Waiter {
    completer: Completer,
    uri: String,
    id: u64,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut flights = self.completer.flights();
        let Some(f) = flights.get_mut(&self.uri) else {
            return;
        };
        if f.id != self.id {
            return;
        }
        f.waiters = f.waiters.saturating_sub(1);
        if f.waiters == 0 {
            f.cancel.cancel();
            flights.remove(&self.uri);
        }
    }
}

/// One generation, run in its own task.
struct CompletionRun {
    completer: Completer,
    env: Env,
    backend: Arc<dyn Backend>,
    uri: String,
    path: Option<String>,
    language_id: String,
    prefix: Arc<str>,
    /// The document line `prefix` starts on.
    first_line: usize,
    suffix: Arc<str>,
    id: u64,
    cancel: CancelToken,
    arrived: Instant,
}

impl CompletionRun {
    async fn run(self) -> Answer {
        let answer = self.generate().await;
        if let Some(text) = &answer {
            self.completer
                .cache()
                .insert(&self.uri, &self.prefix, &self.suffix, text);
        }
        self.completer.landed(&self.uri, self.id);
        answer
    }

    async fn generate(&self) -> Answer {
        let (backend, config) = (self.backend.clone(), self.env.config.clone());
        let context = self.env.context.clone();
        let (prefix, suffix) = (self.prefix.clone(), self.suffix.clone());
        let first_line = self.first_line;
        let (path, language_id) = (self.path.clone(), self.language_id.clone());
        let (completer, cancel) = (self.completer.clone(), self.cancel.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            let input = Input {
                prefix: &prefix,
                first_line,
                suffix: &suffix,
                path: path.as_deref(),
                language_id: &language_id,
                context: &context,
            };
            pipeline::prepare(&completer.inner.builders, &backend, &config, &input, cancel)
        })
        .await;
        let prepared = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(uri = self.uri, "no prompt: {e}");
                return Some("".into());
            }
            Err(e) => {
                tracing::error!(uri = self.uri, "building the prompt failed: {e}");
                return None;
            }
        };
        // Queued only while this is still the document's current request, under the lock a newer request
        // takes to replace it: requests reach the model in the order they came.
        let prepare_ms = self.arrived.elapsed().as_secs_f64() * 1e3;
        let pending = {
            let flights = self.completer.flights();
            let current = flights.get(&self.uri).is_some_and(|f| f.id == self.id);
            if !current || self.cancel.is_cancelled() {
                tracing::debug!(uri = self.uri, "superseded before reaching the model");
                return None;
            }
            prepared.submit(&*self.backend)
        };

        let mut status = self.env.status.generation();
        let completion = pending.finish().await;
        let total_ms = self.arrived.elapsed().as_secs_f64() * 1e3;
        // A remote engine that stopped (or started again) answering says so once.
        self.env.model.report_notice().await;
        let completion = match completion {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(uri = self.uri, "generation failed: {e}");
                return None;
            }
        };
        let t = &completion.timings;
        tracing::debug!(
            uri = self.uri,
            prompt_tokens = t.prompt_tokens,
            shortened = t.shortened,
            reused_tokens = t.reused_tokens,
            moved_tokens = t.moved_tokens,
            computed_tokens = t.computed_tokens,
            discarded_tokens = t.discarded_tokens,
            generated_tokens = t.generated_tokens,
            prepare_ms = format!("{prepare_ms:.1}"),
            queue_ms = format!("{:.1}", t.queue_ms),
            prefill_ms = format!("{:.1}", t.prefill_ms),
            decode_ms = format!("{:.1}", t.decode_ms),
            total_ms = format!("{total_ms:.1}"),
            template = completion.template,
            truncated_lines = ?(completion.truncated.prefix_lines, completion.truncated.suffix_lines),
            context = ?completion.context_paths,
            stop = ?completion.stop_reason,
            "completion"
        );
        let timings = StatusTimings::new(t, total_ms);
        status.count(&timings, completion.stop_reason == StopReason::Cancelled);
        if completion.stop_reason == StopReason::Cancelled {
            // Nobody sees this one: the status keeps the timings of the last suggestion that was answered.
            return None;
        }
        status.set_timings(timings);
        Some(completion.completion.into())
    }
}

/// `\r\n` and lone `\r` become `\n`: the model sees the line breaks it was trained on.
fn to_lf(text: String) -> String {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text
    }
}

/// The identifier characters at the end of `text`.
fn word_before(text: &str) -> String {
    let start = text
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map_or(text.len(), |(i, _)| i);
    text[start..].to_string()
}

/// The path of a `file:` URI, percent-decoded, in the platform's form (`url` knows Windows drive letters and
/// UNC hosts; a hand-written decoder made `file:///c%3A/x.py` into `/c:/x.py`).
pub fn file_path(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    let path = url.to_file_path().ok()?;
    Some(path.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths() {
        assert_eq!(
            file_path("file:///a/b%20c.py").as_deref(),
            Some("/a/b c.py")
        );
        assert_eq!(
            file_path("file:///a/%E6%97%A5.rs").as_deref(),
            Some("/a/日.rs")
        );
        assert_eq!(file_path("file:///bad%zz%").as_deref(), Some("/bad%zz%"));
        assert_eq!(file_path("file:///%日本").as_deref(), Some("/%日本"));
        assert_eq!(file_path("untitled:Untitled-1"), None);
    }

    /// VS Code sends drive letters with the colon escaped.
    #[cfg(windows)]
    #[test]
    fn windows_file_paths() {
        assert_eq!(
            file_path("file:///c%3A/src/app.py").as_deref(),
            Some(r"c:\src\app.py")
        );
        assert_eq!(
            file_path("file://server/share/a.py").as_deref(),
            Some(r"\\server\share\a.py")
        );
    }

    #[test]
    fn words() {
        assert_eq!(word_before("    ret"), "ret");
        assert_eq!(word_before("x.日本"), "日本");
        assert_eq!(word_before("f("), "");
        assert_eq!(word_before(""), "");
    }

    #[test]
    fn line_breaks_for_the_model() {
        assert_eq!(to_lf("a\r\nb\rc\n".into()), "a\nb\nc\n");
    }
}
