//! The two ways inference servers stream: server-sent events (llama.cpp, OpenAI-compatible servers) and
//! newline-delimited JSON (Ollama). Both parsers take bytes exactly as they come off the connection (a
//! piece may end in the middle of a line, or of a UTF-8 sequence) and hand back complete messages only.

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
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for line in self.lines.push(bytes) {
            self.line(&line, &mut out);
        }
        out
    }

    /// The stream ended: an event still waiting for its blank line is delivered.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if let Some(line) = self.lines.finish() {
            self.line(&line, &mut out);
        }
        self.dispatch(&mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.data.is_empty() {
            self.event = None;
            return;
        }
        out.push(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data).join("\n"),
        });
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

    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.lines
            .push(bytes)
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// A last line without its newline.
    pub fn finish(&mut self) -> Option<String> {
        self.lines.finish().filter(|l| !l.trim().is_empty())
    }
}

/// Splits bytes into lines (`\n`, `\r\n`, `\r`), keeping an unfinished line for later. A `\r` at the very
/// end of the input waits for the next byte, which may be its `\n`.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i] {
                b'\n' => {
                    out.push(lossy(&self.pending[start..i]));
                    i += 1;
                    start = i;
                }
                b'\r' => {
                    if i + 1 == self.pending.len() {
                        break;
                    }
                    out.push(lossy(&self.pending[start..i]));
                    i += if self.pending[i + 1] == b'\n' { 2 } else { 1 };
                    start = i;
                }
                _ => i += 1,
            }
        }
        self.pending.drain(..start);
        out
    }

    fn finish(&mut self) -> Option<String> {
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
            let mut events = p.push(&input[..cut]);
            events.extend(p.push(&input[cut..]));
            events.extend(p.finish());
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
            events.extend(p.push(&[*b]));
        }
        events.extend(p.finish());
        let data: Vec<_> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["x", "y"]);
    }

    #[test]
    fn sse_comments_and_unknown_fields_are_ignored_and_a_last_event_without_blank_line_counts() {
        let mut p = SseParser::new();
        assert!(p.push(b":\n\nid: 3\nretry: 10\n\n").is_empty());
        assert!(p.push(b"data: {\"stop\":true}").is_empty());
        assert_eq!(p.finish()[0].data, "{\"stop\":true}");
    }

    #[test]
    fn ndjson_lines_whatever_the_chunking() {
        let input = b"{\"response\":\"a\",\"done\":false}\n\n{\"response\":\"\xc3\xa9\",\"done\":false}\r\n{\"done\":true}";
        for cut in 0..=input.len() {
            let mut p = NdjsonParser::new();
            let mut lines = p.push(&input[..cut]);
            lines.extend(p.push(&input[cut..]));
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
}
