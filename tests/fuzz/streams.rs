//! Fuzz targets for byte streams: the LSP input framing (`server::transport`) and the SSE and NDJSON
//! parsers of remote engines (`backends::framing`). HTTP itself is parsed by hyper (through reqwest),
//! which is fuzzed upstream.
//!
//! Streams arrive in pieces of any size, so each target also checks that the pieces do not matter: the
//! same bytes read whole and read in random pieces give the same result. The SSE/NDJSON target checks
//! that memory stays bounded by the parsers' 1 MiB limits, with a per-thread count of live heap bytes
//! (the global allocator below); its input is a small program whose steps can repeat a piece thousands
//! of times, so that a few KiB of input can make lines and events of several MiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use codellama_remote::framing::{NdjsonParser, SseParser, MAX_MESSAGE};
use codellama_server::transport::CheckedInput;
use tokio::io::{AsyncRead, ReadBuf};

use crate::harness::{Rng, Target};

// ---------------------------------------------------------------------------------------------------------
// LSP input framing.

pub fn lsp_framing() -> Target {
    let msg = |body: &str| format!("Content-Length: {}\r\n\r\n{body}", body.len());
    let seed = [
        msg(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#),
        msg(r#"{"jsonrpc":"2.0","method":"textDocument/didChange","params":{"textDocument":{"uri":"file:///a","version":2},"contentChanges":[{"text":"x\ud800y"}]}}"#),
        msg(r#"{"jsonrpc":"2.0","id":"c","method":"$/cancelRequest","params":{"id":1}}"#),
        msg(r#"{"jsonrpc":"2.0","id":3,"result":null}"#),
        "Content-Length: 30\n\n{\"jsonrpc\":\"2.0\",\"method\":\"a\"}".into(),
        "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}".into(),
        "Content-Length: 600000000\r\n\r\n{\"jsonrpc\":".into(),
    ]
    .concat();
    Target {
        name: "lsp_framing",
        run: lsp_framing_target,
        seeds: vec![
            [&[0u8][..], seed.as_bytes()].concat(),
            [&[7u8][..], seed.as_bytes()].concat(),
        ],
        dictionary: &[
            b"Content-Length: ",
            b"content-length:",
            b"\r\n",
            b"\n",
            b"\r\n\r\n",
            b"\\ud800",
            b"\\udc00",
            b"\\\\",
            b"\"jsonrpc\":\"2.0\",",
            b"\"id\":",
            b"\"method\":\"$/x\"",
            b"{",
            b"}",
            b"[]",
            b"99999999999",
            b"536870913",
            b"\xff",
        ],
        max_len: 64 << 10,
        hot_prefix: 1,
    }
}

/// The first byte seeds the piece sizes; the rest is the input.
fn lsp_framing_target(data: &[u8]) -> String {
    let Some((&cuts, input)) = data.split_first() else {
        return "empty".into();
    };
    let whole = read_checked(Pieces::new(input, None));
    let pieces = read_checked(Pieces::new(input, Some(Rng(cuts as u64 + 1))));
    assert!(
        whole == pieces,
        "read whole and in pieces, the same input gives different messages:\n{}\n{}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&pieces)
    );
    // What comes out is framed messages, each JSON-RPC 2.0.
    let mut rest = &whole[..];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a header block");
        let header = std::str::from_utf8(&rest[..end]).expect("an ASCII header");
        let len: usize = header
            .strip_prefix("Content-Length: ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a bad header comes out: {header:?}"));
        let body = &rest[end + 4..end + 4 + len];
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "a body that is not JSON comes out ({e}): {:?}",
                String::from_utf8_lossy(body)
            )
        });
        assert_eq!(value["jsonrpc"], "2.0", "{value}");
        seen.push(value["method"].as_str().unwrap_or("response").to_string());
        rest = &rest[end + 4 + len..];
    }
    seen.truncate(4);
    seen.join(" ")
}

/// Everything the checked input hands to the LSP library, read to the end (which it must report).
fn read_checked(source: Pieces) -> Vec<u8> {
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let mut input = CheckedInput::new(source, Box::new(move || flag.store(true, Ordering::SeqCst)));
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut input).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            other => panic!("reading from memory gave {other:?}"),
        }
    }
    assert!(
        ended.load(Ordering::SeqCst),
        "the end of the input was not reported"
    );
    out
}

/// Bytes handed out in pieces: all at once, or in sizes drawn from `rng`.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    rng: Option<Rng>,
}

impl Pieces {
    fn new(data: &[u8], rng: Option<Rng>) -> Self {
        Self {
            data: data.to_vec(),
            at: 0,
            rng,
        }
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let left = this.data.len() - this.at;
        let size = match &mut this.rng {
            Some(rng) => rng.length(11),
            None => left,
        };
        let n = size.min(left).min(buf.remaining());
        buf.put_slice(&this.data[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// SSE and NDJSON.

pub fn sse_ndjson() -> Target {
    let step = |piece: &[u8], repeat: u8| [&[piece.len() as u8, repeat][..], piece].concat();
    let sse = [
        &[0u8][..],
        &step(b": ping\r\n\r\n", 0),
        &step(b"data: {\"content\":\"x\",\"tokens\":[42]}\n\n", 205),
        &step(
            b"event: error\ndata: {\"error\":{\"message\":\"boom\"}}\n\n",
            0,
        ),
        &step(b"data: [DONE]\n\n", 0),
    ]
    .concat();
    let ndjson = [
        &[1u8][..],
        &step(b"{\"response\":\"a\",\"done\":false}\n", 206),
        &step(b"{\"response\":\"\xc3", 0),
        &step(b"\xa9\",\"done\":false}\r\n{\"done\":true}", 0),
    ]
    .concat();
    Target {
        name: "sse_ndjson",
        run: sse_ndjson_target,
        seeds: vec![sse, ndjson],
        dictionary: &[
            b"data:",
            b"data: ",
            b"event:",
            b":",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\n",
            b"id: 1",
            b"\xff\xfe",
        ],
        max_len: 4 << 10,
        hot_prefix: 1,
    }
}

/// The first byte picks the parser; then steps `[length, repeat, piece...]`, each pushing its piece once,
/// or 2^(repeat - 200) times (at most 4096) when `repeat` is over 200.
pub fn sse_ndjson_target(data: &[u8]) -> String {
    let Some((&mode, mut program)) = data.split_first() else {
        return "empty".into();
    };
    let mut pushes: Vec<(&[u8], usize)> = Vec::new();
    while let [len, repeat, rest @ ..] = program {
        let piece = &rest[..(*len as usize).min(rest.len())];
        let times = match repeat {
            201.. => 1 << (repeat - 200).min(12),
            _ => 1,
        };
        pushes.push((piece, times));
        program = &rest[piece.len()..];
    }
    let sse = mode % 2 == 0;
    let largest_piece = pushes.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let in_pieces = parse_stream(
        sse,
        pushes.iter().flat_map(|&(p, n)| std::iter::repeat_n(p, n)),
        largest_piece,
    );
    let whole: Vec<u8> = pushes.iter().flat_map(|&(p, n)| p.repeat(n)).collect();
    let at_once = parse_stream(sse, std::iter::once(&whole[..]), whole.len());
    assert_eq!(
        in_pieces, at_once,
        "the same stream pushed whole and in pieces parses differently"
    );
    let (messages, error) = at_once;
    format!(
        "{} {} messages {:?}",
        if sse { "sse" } else { "ndjson" },
        messages.len().min(4),
        error
    )
}

/// The messages of a stream and its error, if any (after which a connection is dropped). Checks after each
/// push that what the parser holds stays within a few times [`MAX_MESSAGE`] (plus the piece it was given):
/// a partial line, the event's data and its name, each up to the limit in a buffer up to twice its length.
fn parse_stream<'a>(
    sse: bool,
    pushes: impl Iterator<Item = &'a [u8]>,
    largest_piece: usize,
) -> (Vec<String>, Option<String>) {
    let bound = 6 * MAX_MESSAGE as isize + 4 * largest_piece as isize;
    let mut messages = Vec::new();
    let mut sse_parser = SseParser::new();
    let mut ndjson_parser = NdjsonParser::new();
    let base = live_bytes();
    for piece in pushes {
        let pushed = match sse {
            true => sse_parser.push(piece).map(|events| {
                events
                    .into_iter()
                    .map(|e| format!("{:?}: {}", e.event, e.data))
                    .collect()
            }),
            false => ndjson_parser.push(piece),
        };
        match pushed {
            Ok(new) => messages.extend(new),
            Err(e) => return (messages, Some(e.to_string())),
        }
        let held = live_bytes()
            - base
            - messages
                .iter()
                .map(|m| m.capacity() as isize)
                .sum::<isize>()
            - (messages.capacity() * std::mem::size_of::<String>()) as isize;
        assert!(
            held <= bound,
            "the parser holds {held} bytes (bound {bound}) after {} messages",
            messages.len()
        );
    }
    match sse {
        true => match sse_parser.finish() {
            Ok(events) => messages.extend(
                events
                    .into_iter()
                    .map(|e| format!("{:?}: {}", e.event, e.data)),
            ),
            Err(e) => return (messages, Some(e.to_string())),
        },
        false => messages.extend(ndjson_parser.finish()),
    }
    (messages, None)
}

/// Counts live heap bytes per thread, for the memory bound above: the count for the fuzzing thread is
/// what that thread allocated and has not freed. A crate would count for the whole process, where other
/// tests run beside this one.
struct CountingAllocator;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: allocations made while the thread's locals are torn down are not counted.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

fn live_bytes() -> isize {
    LIVE.with(Cell::get)
}

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `GlobalAlloc::alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which got it from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller's contract for the new size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;
