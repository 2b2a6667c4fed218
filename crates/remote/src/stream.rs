//! One generation against a remote engine: send the request, read the stream, and apply the request's
//! stop rules to what arrives exactly as the in-process engine's decode loop does (`engine/worker.rs`):
//! stop ids and end-of-generation ids end the answer and are left out, the text is cut before the first stop
//! string, the stop policy sees the text after every token, and nothing is streamed past a stop. When we
//! decide to stop, or the request is cancelled (its token, or nobody listening any more), the response is
//! dropped, which closes the connection and tells the engine to stop generating too; an answer the engine
//! finished is read to its end instead, so that its connection goes back to the keep-alive pool. Waiting is
//! bounded three ways, and only tokens count as progress: the first token within `first_token_timeout` of
//! the request, each later one within the same time of the one before, the whole answer within
//! `request_timeout`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, Response};

use tokio::sync::mpsc::UnboundedSender;

use codellama_engine::tokenizer::IncrementalDecoder;
use codellama_engine::{
    ms_since, stop_string_cut, Event, GenerateRequest, Outcome, StopReason, Timings, Tokenizer,
};

use super::client::Client;
use super::framing::{NdjsonParser, SseParser, TooLong, MAX_MESSAGE};
use codellama_engine::remote_error::{quote, RemoteError, RemoteErrorKind};

/// `Event::Token::id` for engines that stream text only (OpenAI-compatible servers, Ollama): the id is
/// not known. `Outcome::generated_ids` stays empty for those engines.
pub const UNKNOWN_TOKEN_ID: u32 = u32::MAX;

/// What one streamed message said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    /// Generated token ids (llama.cpp); their text is decoded locally.
    Ids(Vec<u32>),
    /// Generated text (engines that do not stream ids).
    Text(String),
    /// Counts the engine reports.
    Stats(Stats),
    /// The engine finished.
    Done(Finish),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Stats {
    /// Prompt tokens the engine took from its cache.
    pub cached_tokens: Option<usize>,
    /// Tokens generated so far.
    pub generated_tokens: Option<usize>,
    /// The engine's own clock: prompt processing and generation times (ms), when it reports them.
    pub prompt_ms: Option<f64>,
    pub generation_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Finish {
    /// An end-of-generation token.
    Eos,
    /// The token limit.
    Length,
    /// A stop string of the engine's own (we send none, but a model's defaults may have some).
    Stop,
    /// The engine's context is full.
    ContextFull,
    Other(String),
}

/// How a message stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Sse,
    Ndjson,
    /// Not streamed: the body is one message.
    Whole,
}

/// A streamed message after parsing: its pieces, or the end-of-stream marker (`[DONE]`).
#[derive(Debug)]
pub(crate) enum Parsed {
    Pieces(Vec<Piece>),
    EndOfStream,
}

/// Protocol-specific parts of a streamed generation.
pub(crate) trait StreamProtocol: Sync {
    fn framing(&self) -> Framing;
    /// Parses one message (an SSE `data` field or an NDJSON line). `Err`: the engine reported an error.
    fn parse(&self, data: &str) -> Result<Parsed, String>;
}

/// One HTTP request that streams a generation.
pub(crate) struct Call<'a> {
    pub client: &'a Client,
    pub protocol: &'a dyn StreamProtocol,
    pub path: &'a str,
    pub body: serde_json::Value,
}

/// A generation's outcome, and the rest of an answer the engine will finish at the same token limit as
/// ours (read by [`drain`] after the outcome is delivered, so that the connection can be used again).
pub(crate) struct Finished {
    pub outcome: Outcome,
    pub rest: Option<Response>,
}

/// The end of an answer the engine has finished is read within this long and this many bytes; beyond
/// them the connection is closed instead of reused.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 64 << 10;

/// Reads the end of a finished answer, so that its keep-alive connection returns to the pool.
pub(crate) async fn drain(mut rest: Response) {
    let mut read = 0;
    let until = tokio::time::Instant::now() + DRAIN_TIME;
    while let Ok(Ok(Some(piece))) = tokio::time::timeout_at(until, rest.chunk()).await {
        read += piece.len();
        if read > DRAIN_BYTES {
            return;
        }
    }
}

/// Completes once the request is cancelled or nobody listens for its events any more.
async fn given_up(cancel: &codellama_engine::CancelToken, events: &UnboundedSender<Event>) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = events.closed() => {}
    }
}

/// Runs `req` (already validated) and returns its outcome. Tokens go to `events` as they are accepted.
pub(crate) async fn run(
    call: Call<'_>,
    req: &mut GenerateRequest,
    tokenizer: &Tokenizer,
    eog: &HashSet<u32>,
    events: &UnboundedSender<Event>,
) -> Result<Finished, RemoteError> {
    let Call {
        client,
        protocol,
        path,
        body,
    } = call;
    let t_start = Instant::now();
    let mut timings = Timings {
        prompt_tokens: req.prompt.len(),
        ..Timings::default()
    };
    let cancel = req.cancel.clone();
    let cancelled = || cancel.is_cancelled() || events.is_closed();
    let gone = given_up(&cancel, events);
    tokio::pin!(gone);
    let finished = |outcome| {
        Ok(Finished {
            outcome,
            rest: None,
        })
    };
    if cancelled() {
        return finished(Outcome::cancelled(timings));
    }
    // The first token is due within `first_token_timeout` of the request, each later one within the same
    // time of the one before, and the whole answer within `request_timeout`. Only tokens count: keep-alive
    // comments and events without text move no deadline.
    let first_deadline = t_start + client.first_token_timeout;
    let whole_deadline = t_start + client.request_timeout;
    let over_time = |e: RemoteError, generated: usize| {
        if e.kind() == RemoteErrorKind::Timeout && Instant::now() >= whole_deadline {
            RemoteError::request_timeout(
                client.engine(),
                &client.at(),
                client.request_timeout.as_secs_f64(),
                generated,
            )
        } else {
            e
        }
    };
    let sent = client.request(
        Method::POST,
        path,
        Some(&body),
        first_deadline.min(whole_deadline),
        "waiting for the first token",
    );
    let mut resp = tokio::select! {
        biased;
        _ = &mut gone => {
            timings.queue_ms = ms_since(t_start);
            return finished(Outcome::cancelled(timings));
        }
        r = sent => r.map_err(|e| over_time(e, 0))?,
    };
    // When the request was written is not known here; the waiting time starts with the request.
    let t_sent = t_start;

    let mut gen = Decoding::new(req, tokenizer, eog, events);
    let mut sse = SseParser::new();
    let mut ndjson = NdjsonParser::new();
    // A server that ignores `stream: true` answers with one JSON document: read it whole.
    let framing = match resp.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()) {
        Some(t) if t.trim_ascii_start().starts_with(b"application/json") => Framing::Whole,
        _ => protocol.framing(),
    };
    let mut whole = Vec::new();
    let mut stats = Stats::default();
    let mut finish: Option<Finish> = None;
    let mut t_first: Option<Instant> = None;
    let mut last_token: Option<Instant> = None;
    let bad = |e: TooLong| RemoteError::bad_response(client.engine(), &client.at(), e);

    // Streams until the engine finishes, our rules stop the answer, or something fails.
    let stopped_by_us = 'read: loop {
        let token_deadline = last_token.map_or(first_deadline, |t| t + client.first_token_timeout);
        let deadline = token_deadline.min(whole_deadline);
        let read = tokio::select! {
            biased;
            _ = &mut gone => break 'read true,
            r = tokio::time::timeout_at(deadline.into(), resp.chunk()) => r,
        };
        let chunk = match read {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let e = client.transport_error(e, &waiting_for(&gen));
                return Err(over_time(e, gen.generated()));
            }
            Err(_) => {
                let e = client.timeout(&waiting_for(&gen));
                return Err(over_time(e, gen.generated()));
            }
        };
        let ended = chunk.is_none();
        let messages: Vec<String> = match (chunk, framing) {
            (Some(bytes), Framing::Sse) => sse
                .push(&bytes)
                .map_err(bad)?
                .into_iter()
                .map(|e| e.data)
                .collect(),
            (Some(bytes), Framing::Ndjson) => ndjson.push(&bytes).map_err(bad)?,
            (Some(bytes), Framing::Whole) => {
                whole.extend_from_slice(&bytes);
                if whole.len() > MAX_MESSAGE {
                    return Err(bad(TooLong("answer")));
                }
                Vec::new()
            }
            (None, Framing::Sse) => sse
                .finish()
                .map_err(bad)?
                .into_iter()
                .map(|e| e.data)
                .collect(),
            (None, Framing::Ndjson) => ndjson.finish().into_iter().collect(),
            (None, Framing::Whole) => vec![String::from_utf8_lossy(&whole).into_owned()],
        };
        let generated = gen.generated();
        for data in messages {
            let pieces = match protocol.parse(&data) {
                Ok(Parsed::Pieces(p)) => p,
                Ok(Parsed::EndOfStream) => {
                    if finish.is_none() {
                        finish = Some(Finish::Other("end of stream".into()));
                    }
                    continue;
                }
                Err(msg) => {
                    return Err(RemoteError::bad_response(
                        client.engine(),
                        &client.at(),
                        format!(
                            "error in the middle of the answer: {}",
                            quote(&msg, client.secret())
                        ),
                    ))
                }
            };
            for piece in pieces {
                match piece {
                    Piece::Ids(ids) => {
                        for id in ids {
                            t_first.get_or_insert_with(Instant::now);
                            if gen.id(id) == Flow::Stop {
                                break 'read true;
                            }
                        }
                    }
                    Piece::Text(text) => {
                        if text.is_empty() {
                            continue;
                        }
                        t_first.get_or_insert_with(Instant::now);
                        if gen.text(&text) == Flow::Stop {
                            break 'read true;
                        }
                    }
                    Piece::Stats(s) => {
                        stats.cached_tokens = s.cached_tokens.or(stats.cached_tokens);
                        stats.generated_tokens = s.generated_tokens.or(stats.generated_tokens);
                        stats.prompt_ms = s.prompt_ms.or(stats.prompt_ms);
                        stats.generation_ms = s.generation_ms.or(stats.generation_ms);
                    }
                    Piece::Done(f) => finish = Some(f),
                }
            }
        }
        if gen.generated() > generated {
            last_token = Some(Instant::now());
        }
        if finish.is_some() {
            break 'read false;
        }
        if ended {
            return Err(RemoteError::disconnected(
                client.engine(),
                &client.at(),
                &format!(
                    "after {} tokens, before the answer was complete",
                    gen.generated()
                ),
            ));
        }
    };
    let t_end = Instant::now();
    let t_first = t_first.unwrap_or(t_end);
    timings.prefill_ms = (t_first - t_sent).as_secs_f64() * 1e3;
    timings.decode_ms = (t_end - t_first).as_secs_f64() * 1e3;
    // A generation the engine finished itself: its own figures leave out HTTP and streaming, so they
    // compare with the in-process engine's.
    if let (false, Some(_), Some(p), Some(g)) =
        (stopped_by_us, &finish, stats.prompt_ms, stats.generation_ms)
    {
        timings.prefill_ms = p;
        timings.decode_ms = g;
    }
    timings.reused_tokens = stats.cached_tokens.unwrap_or(0).min(timings.prompt_tokens);
    let ids_streamed = !gen.out.generated_ids.is_empty();
    let text_pieces = gen.text_pieces;
    let mut out = gen.finish();
    if stopped_by_us {
        if cancelled() && out.stop_reason == StopReason::MaxTokens {
            out.stop_reason = StopReason::Cancelled;
        }
    } else if let Some(f) = finish {
        if out.stop_reason == StopReason::MaxTokens {
            out.stop_reason = match f {
                Finish::Eos | Finish::Stop => StopReason::EndOfGeneration,
                Finish::Length => StopReason::MaxTokens,
                Finish::ContextFull => StopReason::ContextFull,
                Finish::Other(_) => StopReason::EndOfGeneration,
            };
        }
    }
    timings.generated_tokens = if ids_streamed {
        out.generated_ids.len()
    } else {
        stats.generated_tokens.unwrap_or(text_pieces)
    };
    out.timings = timings;
    // Dropping the response closes the connection: an engine still generating stops. The end of an answer
    // the engine finished follows its last event at once and is read now, so that the connection is back
    // in the pool before the next request; one that stops at our token limit is read in the background.
    if !stopped_by_us {
        drain(resp).await;
        return finished(out);
    }
    Ok(Finished {
        rest: (out.stop_reason == StopReason::MaxTokens).then_some(resp),
        outcome: out,
    })
}

/// What the stream waits for, in messages.
fn waiting_for(gen: &Decoding) -> String {
    match gen.generated() {
        0 => "waiting for the first token".into(),
        n => format!("waiting for token {} of the answer", n + 1),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Go,
    Stop,
}

/// The decode loop's stop rules, applied to tokens or text as they arrive.
pub(crate) struct Decoding<'a> {
    req: &'a mut GenerateRequest,
    tokenizer: &'a Tokenizer,
    eog: &'a HashSet<u32>,
    events: &'a UnboundedSender<Event>,
    decoder: IncrementalDecoder,
    pub out: Outcome,
    /// Text pieces accepted (engines that stream text).
    pub text_pieces: usize,
}

impl<'a> Decoding<'a> {
    pub fn new(
        req: &'a mut GenerateRequest,
        tokenizer: &'a Tokenizer,
        eog: &'a HashSet<u32>,
        events: &'a UnboundedSender<Event>,
    ) -> Self {
        Self {
            req,
            tokenizer,
            eog,
            events,
            decoder: IncrementalDecoder::new(),
            out: Outcome {
                generated_ids: Vec::new(),
                text: String::new(),
                stop_reason: StopReason::MaxTokens,
                stop_token: None,
                timings: Timings::default(),
            },
            text_pieces: 0,
        }
    }

    pub fn generated(&self) -> usize {
        self.out.generated_ids.len().max(self.text_pieces)
    }

    /// A generated token id, as `engine/worker.rs` handles a sampled one.
    pub fn id(&mut self, id: u32) -> Flow {
        if self.req.cancel.is_cancelled() {
            self.out.stop_reason = StopReason::Cancelled;
            return Flow::Stop;
        }
        if self.generated() >= self.req.max_tokens {
            return Flow::Stop;
        }
        if self.req.stop_ids.contains(&id) || (self.req.stop_at_eog && self.eog.contains(&id)) {
            self.out.stop_reason = StopReason::EndOfGeneration;
            self.out.stop_token = Some(id);
            return Flow::Stop;
        }
        self.out.generated_ids.push(id);
        let delta = self.decoder.push(self.tokenizer, id);
        self.accept(id, delta)
    }

    /// Generated text from an engine that does not stream ids; handled like one token.
    pub fn text(&mut self, delta: &str) -> Flow {
        if self.req.cancel.is_cancelled() {
            self.out.stop_reason = StopReason::Cancelled;
            return Flow::Stop;
        }
        if self.generated() >= self.req.max_tokens {
            return Flow::Stop;
        }
        self.text_pieces += 1;
        self.accept(UNKNOWN_TOKEN_ID, delta.to_string())
    }

    fn accept(&mut self, id: u32, delta: String) -> Flow {
        self.out.text.push_str(&delta);
        if let Some(cut) = stop_string_cut(&self.out.text, &self.req.stop_strings, delta.len()) {
            self.out.text.truncate(cut);
            self.out.stop_reason = StopReason::StopString;
            return Flow::Stop;
        }
        if let Some(policy) = self.req.policy.as_mut() {
            if let Some(cut) = policy.check(&self.out.text) {
                self.out.text.truncate(cut.min(self.out.text.len()));
                self.out.stop_reason = StopReason::Policy;
                return Flow::Stop;
            }
        }
        if self.events.send(Event::Token { id, text: delta }).is_err() {
            // Nobody listens any more: stop the engine.
            self.out.stop_reason = StopReason::Cancelled;
            return Flow::Stop;
        }
        if self.generated() >= self.req.max_tokens {
            return Flow::Stop;
        }
        Flow::Go
    }

    pub fn finish(self) -> Outcome {
        self.out
    }
}
