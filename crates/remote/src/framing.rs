//! The two ways inference servers stream: server-sent events (llama.cpp, OpenAI-compatible servers) and
//! newline-delimited JSON (Ollama). Both parsers take bytes exactly as they come off the connection (a
//! piece may end in the middle of a line, or of a UTF-8 sequence) and hand back complete messages only.
//! What they hold while a message is incomplete is bounded by [`MAX_MESSAGE`]: a longer line or event is
//! a [`TooLong`] error, never more memory.
//!
//! Why our own and not an SSE crate (eventsource-stream, the one reqwest users reach for): it buffers an
//! unfinished line or event without limit, so an engine that never ends a line could grow our memory
//! without bound (the scripted engine's 100 MB line, and the fuzz target's memory check, would fail),
//! and NDJSON needs the same bounded line splitter anyway.

/// Longest line, and longest event, a stream may send: 1 MiB. A streamed message carries a token or two and
/// its counts; one near this size comes from a broken engine, and holding more of it would let the engine
/// grow our memory without bound.
pub const MAX_MESSAGE: usize = 1 << 20;

/// A line, event or answer longer than [`MAX_MESSAGE`]; says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a streamed {0} is over the {limit} MiB limit", limit = MAX_MESSAGE >> 20)]
pub struct TooLong(pub &'static str);

/// One server-sent event: its `event:` name, if any, and its `data:` lines joined with '\n'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Server-sent events parser (the WHATWG format): `data:` lines accumulate until a blank line; `:` lines
/// are comments (keep-alive pings); `event:` names the event; `id:` and `retry:` are ignored. Lines end
/// with `\n`, `\r\n` or `\r`.
#[derive(Default)]
pub struct SseParser {
    lines: LineSplitter,
    event: Option<String>,
    /// The event's `data:` lines joined with '\n' as they arrive (`None`: no `data:` line yet). One
    /// string, not one per line: a string per line costs its 24-byte header even when the line is empty,
    /// which let a stream of empty `data:` lines hold 25 times the limit (found by the fuzz tests).
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, TooLong> {
        let mut out = Vec::new();
        for line in self.lines.push(bytes)? {
            self.line(&line, &mut out)?;
        }
        Ok(out)
    }

    /// The stream ended: an event still waiting for its blank line is delivered.
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, TooLong> {
        let mut out = Vec::new();
        if let Some(line) = self.lines.finish() {
            self.line(&line, &mut out)?;
        }
        self.dispatch(&mut out);
        Ok(out)
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) -> Result<(), TooLong> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                // The joined data and one more byte, as when each line counted its line break.
                let joined = self.data.as_ref().map_or(0, |d| d.len() + 1) + value.len();
                if joined + 1 > MAX_MESSAGE {
                    return Err(TooLong("event"));
                }
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if let Some(data) = self.data.take() {
            out.push(SseEvent { event, data });
        }
    }
}

/// Newline-delimited JSON: one document per non-empty line.
#[derive(Default)]
pub struct NdjsonParser {
    lines: LineSplitter,
}

impl NdjsonParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, TooLong> {
        let mut lines = self.lines.push(bytes)?;
        lines.retain(|l| !l.trim().is_empty());
        Ok(lines)
    }

    /// A last line without its newline.
    pub fn finish(&mut self) -> Option<String> {
        self.lines.finish().filter(|l| !l.trim().is_empty())
    }
}

/// Splits bytes into lines (`\n`, `\r\n`, `\r`), keeping an unfinished line for later. A `\r` at the very
/// end of the input waits for the next byte, which may be its `\n`. A line over [`MAX_MESSAGE`] is an error.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
    /// How far `pending` has been searched for a line break (an unfinished line is not searched again).
    scanned: usize,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, TooLong> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.pending.len() {
            match self.pending[i] {
                b'\n' => {
                    out.push(self.line(start, i)?);
                    i += 1;
                    start = i;
                }
                b'\r' => {
                    if i + 1 == self.pending.len() {
                        break;
                    }
                    out.push(self.line(start, i)?);
                    i += if self.pending[i + 1] == b'\n' { 2 } else { 1 };
                    start = i;
                }
                _ => i += 1,
            }
        }
        self.pending.drain(..start);
        self.scanned = i - start;
        if self.pending.len() > MAX_MESSAGE {
            return Err(TooLong("line"));
        }
        Ok(out)
    }

    fn line(&self, start: usize, end: usize) -> Result<String, TooLong> {
        if end - start > MAX_MESSAGE {
            return Err(TooLong("line"));
        }
        Ok(lossy(&self.pending[start..end]))
    }

    fn finish(&mut self) -> Option<String> {
        self.scanned = 0;
        let mut rest = std::mem::take(&mut self.pending);
        if rest.last() == Some(&b'\r') {
            rest.pop();
        }
        (!rest.is_empty()).then(|| lossy(&rest))
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_splits(input: &[u8]) -> Vec<Vec<SseEvent>> {
        let mut results = Vec::new();
        for cut in 0..=input.len() {
            let mut p = SseParser::new();
            let mut events = p.push(&input[..cut]).unwrap();
            events.extend(p.push(&input[cut..]).unwrap());
            events.extend(p.finish().unwrap());
            results.push(events);
        }
        results
    }

    #[test]
    fn sse_events_are_the_same_wherever_the_bytes_are_cut() {
        let input = ": ping\r\n\r\ndata: {\"content\":\"é\"}\r\n\r\nevent: error\ndata: a\ndata: b\n\ndata: [DONE]\n\n";
        let expected = vec![
            SseEvent {
                event: None,
                data: "{\"content\":\"é\"}".into(),
            },
            SseEvent {
                event: Some("error".into()),
                data: "a\nb".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for events in all_splits(input.as_bytes()) {
            assert_eq!(events, expected);
        }
        // Byte by byte, with CR-only line endings.
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for b in b"data:x\r\rdata:y\r\r" {
            events.extend(p.push(&[*b]).unwrap());
        }
        events.extend(p.finish().unwrap());
        let data: Vec<_> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["x", "y"]);
    }

    #[test]
    fn sse_comments_and_unknown_fields_are_ignored_and_a_last_event_without_blank_line_counts() {
        let mut p = SseParser::new();
        assert!(p.push(b":\n\nid: 3\nretry: 10\n\n").unwrap().is_empty());
        assert!(p.push(b"data: {\"stop\":true}").unwrap().is_empty());
        assert_eq!(p.finish().unwrap()[0].data, "{\"stop\":true}");
    }

    #[test]
    fn ndjson_lines_whatever_the_chunking() {
        let input = b"{\"response\":\"a\",\"done\":false}\n\n{\"response\":\"\xc3\xa9\",\"done\":false}\r\n{\"done\":true}";
        for cut in 0..=input.len() {
            let mut p = NdjsonParser::new();
            let mut lines = p.push(&input[..cut]).unwrap();
            lines.extend(p.push(&input[cut..]).unwrap());
            lines.extend(p.finish());
            assert_eq!(
                lines,
                [
                    "{\"response\":\"a\",\"done\":false}",
                    "{\"response\":\"é\",\"done\":false}",
                    "{\"done\":true}"
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_line_or_event_over_the_limit_is_an_error_and_one_at_the_limit_is_not() {
        // Lines and events up to the limit pass, in pieces of any size.
        let mut at_limit = b"data: ".to_vec();
        at_limit.extend(vec![b'x'; MAX_MESSAGE - 1 - 6]);
        at_limit.extend(b"\n\n");
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for piece in at_limit.chunks(4096) {
            events.extend(p.push(piece).unwrap());
        }
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.len(), MAX_MESSAGE - 7);

        // One line without an end, fed in small pieces: an error once it passes the limit.
        let mut p = SseParser::new();
        let err = (0..)
            .map(|_| p.push(&[b'y'; 1000]))
            .take(2 * MAX_MESSAGE / 1000)
            .find_map(Result::err);
        assert_eq!(err, Some(TooLong("line")));
        assert_eq!(
            TooLong("line").to_string(),
            "a streamed line is over the 1 MiB limit"
        );

        // Short `data:` lines that never end their event.
        let mut p = SseParser::new();
        let err = (0..)
            .map(|_| p.push(b"data: 0123456789\n"))
            .take(MAX_MESSAGE)
            .find_map(Result::err);
        assert_eq!(err, Some(TooLong("event")));

        // NDJSON lines.
        let mut p = NdjsonParser::new();
        assert!(p.push(&vec![b'z'; MAX_MESSAGE + 1]).is_err());
        let mut p = NdjsonParser::new();
        assert_eq!(
            p.push(&vec![b'z'; MAX_MESSAGE]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(p.push(b"\n").unwrap().len(), 1);
    }
}
