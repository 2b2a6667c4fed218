//! The typing replay's other side: llama.cpp's server driven the way llama.vscode drives it, so that
//! `bench --lsp --replay` can set our server's figures next to what a llama.vscode user gets from the same
//! typing. Each keystroke aborts the previous `/infill` request (the connection is dropped, as llama.vscode's
//! `AbortController` does) and sends a new one, built by `eval::llama_vscode` from the document as the
//! replay's edits leave it; the answers come back from one thread per request. Prompt token figures come
//! from the answers' `timings` (`cache_n`, `prompt_n`) and the server's `/metrics` counters, which also count
//! the work of aborted requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use super::replay::{Answer, Keystroke, Report, Step, Target};
use crate::eval::llama_vscode::{Infilled, LlamaVscode, PromptCounters};
use codellama_server::status::PromptTotals;
use codellama_text::documents::{Document, PositionEncoding};

const ENC: PositionEncoding = PositionEncoding::Utf16;

/// One request's end: its id and what came back (`None`: aborted).
type Done = (i64, anyhow::Result<Option<Infilled>>);

/// llama.cpp's server under replay.
pub struct LlamaVscodeTarget {
    client: Arc<LlamaVscode>,
    docs: HashMap<String, Document>,
    next_id: i64,
    /// The abort flags of the requests still running.
    running: HashMap<i64, Arc<AtomicBool>>,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    /// Prompt tokens the answered requests computed.
    answered_computed: usize,
    answered: usize,
    aborted: usize,
    /// `/metrics` when the replay began (the server may have answered other requests before).
    start: PromptCounters,
}

impl LlamaVscodeTarget {
    pub fn new(client: LlamaVscode) -> anyhow::Result<Self> {
        let start = client.counters()?;
        let (tx, rx) = channel();
        Ok(Self {
            client: Arc::new(client),
            docs: HashMap::new(),
            next_id: 1,
            running: HashMap::new(),
            tx,
            rx,
            answered_computed: 0,
            answered: 0,
            aborted: 0,
            start,
        })
    }

    /// The prompt token totals in our server's terms: computed and reused over every request (from
    /// `/metrics`), and computed for the aborted ones (what the answered ones did not compute). The server
    /// does not say how much of an aborted batch was lost.
    pub fn totals(&self) -> anyhow::Result<PromptTotals> {
        let now = self.client.counters()?;
        let computed = now.computed_tokens - self.start.computed_tokens;
        Ok(PromptTotals {
            generations: self.answered + self.aborted,
            cancelled: self.aborted,
            reused_tokens: now.cached_tokens - self.start.cached_tokens,
            // `/metrics` does not count the tokens `--cache-reuse` shifted apart.
            moved_tokens: 0,
            computed_tokens: computed,
            cancelled_computed_tokens: computed.saturating_sub(self.answered_computed),
            discarded_tokens: 0,
            resumed_tokens: 0,
            shortened: 0,
            idle_tokens: 0,
        })
    }

    /// The answer, and the time it took to decode when the server said.
    fn reports(&mut self, (id, result): Done) -> Vec<Report> {
        self.running.remove(&id);
        let mut decoded = None;
        let answer = match result {
            Ok(Some(infilled)) => {
                self.answered += 1;
                self.answered_computed += infilled.computed_tokens;
                decoded = infilled.decode_ms.map(|ms| Report::Decoded {
                    ms,
                    tokens: infilled.generated_tokens,
                });
                Answer::Result(!infilled.suggestion.is_empty())
            }
            Ok(None) => {
                self.aborted += 1;
                Answer::Cancelled
            }
            Err(e) => {
                tracing::warn!("llama.cpp /infill: {e:#}");
                Answer::Error
            }
        };
        std::iter::once(Report::Answer { id, answer })
            .chain(decoded)
            .collect()
    }
}

impl Target for LlamaVscodeTarget {
    fn document(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Open { uri, text, .. } | Step::Reset { uri, text, .. } => {
                self.docs.insert(uri.clone(), Document::new(text, "", 1));
            }
            Step::Key(_) | Step::Pause(_) => {}
        }
        Ok(())
    }

    fn keystroke(&mut self, key: &Keystroke, running: Option<i64>) -> Result<i64, String> {
        let Keystroke {
            uri,
            start,
            end,
            text,
            cursor,
            ..
        } = key;
        if let Some(flag) = running.and_then(|id| self.running.get(&id)) {
            flag.store(true, Ordering::Relaxed);
        }
        let doc = self
            .docs
            .get_mut(uri)
            .ok_or_else(|| format!("a keystroke in {uri}, which is not open"))?;
        doc.edit(Some((*start, *end)), text, ENC);
        let whole = doc.text();
        let at = doc.byte_offset(*cursor, ENC);
        let (prefix, suffix) = (whole[..at].to_string(), whole[at..].to_string());
        let id = self.next_id;
        self.next_id += 1;
        let abort = Arc::new(AtomicBool::new(false));
        self.running.insert(id, abort.clone());
        let (client, tx) = (self.client.clone(), self.tx.clone());
        std::thread::Builder::new()
            .name("replay-infill".into())
            .spawn(move || {
                let result = client.infill_cancellable(&prefix, &suffix, abort);
                let _ = tx.send((id, result));
            })
            .map_err(|e| format!("cannot start a request thread: {e}"))?;
        Ok(id)
    }

    fn next_reports(&mut self, until: Instant) -> Result<Option<Vec<Report>>, String> {
        let left = until.saturating_duration_since(Instant::now());
        Ok(self
            .rx
            .recv_timeout(left)
            .ok()
            .map(|done| self.reports(done)))
    }
}
