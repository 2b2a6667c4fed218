//! A fuzzer that needs only the stable toolchain, so that CI can run it: each target is a function of
//! `&[u8]`, run on a corpus of seeds and on mutations of it (bit flips, byte changes, inserted and deleted
//! ranges, duplicated ranges, splices of two inputs, interesting integers, words of a per-target
//! dictionary) for a time budget. It is not coverage-guided (that takes a nightly build of every
//! dependency with instrumentation, longer than CI can give); instead each target returns a short
//! description of what the input did (the error it got, the messages it produced), and an input whose
//! description is new joins the corpus, so that mutations build on inputs that got somewhere new.
//!
//! `CODELLAMA_FUZZ_SECONDS` sets the budget per target (default [`DEFAULT_SECONDS`]),
//! `CODELLAMA_FUZZ_SEED` the random seed (default: from the clock; printed, so a run can be repeated).
//! A panic in a target fails the test with the input in hex and saves it under `target/fuzz-crashes/`;
//! an input that runs longer than [`HANG`] is saved there too, and the process is aborted.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds per target when `CODELLAMA_FUZZ_SECONDS` is not set: the six targets cost about 15 s of
/// `cargo test`.
const DEFAULT_SECONDS: f64 = 3.0;
/// One input running this long is a hang.
const HANG: Duration = Duration::from_secs(30);
/// Corpus entries kept (seeds included); a new entry past this replaces a random one.
const MAX_CORPUS: usize = 1000;

pub struct Target {
    pub name: &'static str,
    /// The target: panics on a failed invariant; returns what the input did (see [`class_of`] for what
    /// counts as new).
    pub run: fn(&[u8]) -> String,
    pub seeds: Vec<Vec<u8>>,
    /// Words the mutator inserts (keywords and delimiters of the format).
    pub dictionary: &'static [&'static [u8]],
    pub max_len: usize,
    /// Half the mutations fall in the first this many bytes (a file header), the rest anywhere.
    pub hot_prefix: usize,
}

/// Runs `target` for the budget; panics with the input on the first failure.
pub fn fuzz(target: Target) {
    let seconds: f64 = env("CODELLAMA_FUZZ_SECONDS").map_or(DEFAULT_SECONDS, |s| {
        s.parse()
            .expect("CODELLAMA_FUZZ_SECONDS is a number of seconds")
    });
    let seed: u64 = env("CODELLAMA_FUZZ_SEED").map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        },
        |s| s.parse().expect("CODELLAMA_FUZZ_SEED is an integer"),
    );
    let mut rng = Rng(seed | 1);
    let watchdog = Watchdog::start(target.name);
    let start = Instant::now();
    let mut seen = HashSet::new();
    let mut corpus = Vec::new();
    for s in &target.seeds {
        seen.insert(class_of(&exec(&target, &watchdog, s)));
        corpus.push(s.clone());
    }
    let mut executions = target.seeds.len() as u64;
    let deadline = start + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(8) {
            mutate(&mut input, &corpus, &target, &mut rng);
        }
        input.truncate(target.max_len);
        let class = class_of(&exec(&target, &watchdog, &input));
        executions += 1;
        if seen.insert(class) {
            if corpus.len() < MAX_CORPUS {
                corpus.push(input);
            } else {
                let victim = target.seeds.len() + rng.below(MAX_CORPUS - target.seeds.len());
                corpus[victim] = input;
            }
        }
    }
    watchdog.stop();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {}: {executions} executions in {secs:.1} s ({:.0}/s), {} distinct outcomes, no crash (seed {seed})",
        target.name,
        executions as f64 / secs,
        seen.len(),
    );
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// Inputs with the same description, digits and anything after a quote left out (messages quote the
/// input), did the same thing.
fn class_of(description: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    description
        .chars()
        .take_while(|&c| c != '"')
        .filter(|c| !c.is_ascii_digit())
        .for_each(|c| c.hash(&mut h));
    h.finish()
}

/// Runs one input; a panic fails the test, naming the input and where it was saved.
fn exec(target: &Target, watchdog: &Watchdog, input: &[u8]) -> String {
    watchdog.arm(input);
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    watchdog.disarm();
    match result {
        Ok(description) => description,
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let saved = save_crash(target.name, "crash", input);
            panic!(
                "fuzz target {} failed: {why}\ninput ({} bytes, saved to {}): {}",
                target.name,
                input.len(),
                saved.display(),
                hex(input)
            );
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn save_crash(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    let path = dir.join(format!("{target}-{kind}-{:016x}", h.finish()));
    let _ = std::fs::write(&path, input);
    path
}

/// Aborts the process when one input runs longer than [`HANG`], after saving it (a hang cannot be
/// unwound from outside the thread).
struct Watchdog {
    current: Arc<Mutex<Option<Running>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

/// The running input and when it started.
type Running = (Instant, Vec<u8>);

impl Watchdog {
    fn start(name: &'static str) -> Self {
        let current: Arc<Mutex<Option<Running>>> = Arc::default();
        let done: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (c, d) = (current.clone(), done.clone());
        std::thread::spawn(move || {
            while !d.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let guard = c.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((since, input)) = guard.as_ref().filter(|(s, _)| s.elapsed() > HANG) {
                    let saved = save_crash(name, "hang", input);
                    eprintln!(
                        "fuzz target {name} hangs: one input has run for {:?}; saved to {}: {}",
                        since.elapsed(),
                        saved.display(),
                        hex(input)
                    );
                    std::process::abort();
                }
            }
        });
        Self { current, done }
    }

    fn arm(&self, input: &[u8]) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), input.to_vec()));
    }

    fn disarm(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn stop(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// xorshift64*: small, fast, and reproducible from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A length in `1..=2^max_log2`, short ones likelier (the power of two is uniform).
    pub fn length(&mut self, max_log2: usize) -> usize {
        let limit = 1 << self.below(max_log2 + 1);
        1 + self.below(limit)
    }
}

/// Integers at the edges where size and offset arithmetic goes wrong.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    16,
    32,
    64,
    255,
    256,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], target: &Target, rng: &mut Rng) {
    let len = input.len();
    let pos = |rng: &mut Rng, len: usize| match len {
        0 => 0,
        _ if rng.below(2) == 0 => rng.below(len.min(target.hot_prefix.max(1))),
        _ => rng.below(len),
    };
    match rng.below(8) {
        0 if len > 0 => {
            let at = pos(rng, len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = pos(rng, len);
            input[at] = rng.next() as u8;
        }
        2 => {
            let at = pos(rng, len + 1).min(len);
            let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = pos(rng, len);
            let n = rng.length(9).min(len - at);
            input.drain(at..at + n);
        }
        4 if len > 0 => {
            let from = rng.below(len);
            let n = rng.length(9).min(len - from);
            let copy = input[from..from + n].to_vec();
            let at = pos(rng, len + 1).min(len);
            input.splice(at..at, copy);
        }
        5 => {
            let width = 1 << rng.below(4);
            let value = INTERESTING[rng.below(INTERESTING.len())];
            let value = if rng.below(4) == 0 {
                value.wrapping_add(rng.below(3) as u64).wrapping_sub(1)
            } else {
                value
            };
            let at = pos(rng, len + 1).min(len);
            let bytes = &value.to_le_bytes()[..width];
            if at + width > input.len() {
                input.resize(at + width, 0);
            }
            input[at..at + width].copy_from_slice(bytes);
        }
        6 if !target.dictionary.is_empty() => {
            let word = target.dictionary[rng.below(target.dictionary.len())];
            let at = pos(rng, len + 1).min(len);
            input.splice(at..at, word.iter().copied());
        }
        7 => {
            let other = &corpus[rng.below(corpus.len())];
            if other.is_empty() {
                return;
            }
            let from = rng.below(other.len());
            let n = rng.length(11).min(other.len() - from);
            let at = pos(rng, len + 1).min(len);
            if rng.below(2) == 0 {
                input.splice(at..at, other[from..from + n].iter().copied());
            } else {
                let end = (at + n).min(input.len());
                input.splice(at..end, other[from..from + n].iter().copied());
            }
        }
        _ => input.push(rng.next() as u8),
    }
}
