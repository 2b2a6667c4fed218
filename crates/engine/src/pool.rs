//! The compute threads of the CPU forward pass.
//!
//! A forward pass launches hundreds of short parallel jobs (one per matrix product). Each job is a number
//! of independent work items; every thread, the caller included, claims items one at a time until none
//! are left, and the call returns when all items are done. No thread has to take part: if a helper is
//! descheduled (a busy machine, parallel tests), the others simply do its share, so a slow thread never
//! stalls a job. Idle helpers spin briefly on the job counter, so the next job starts within
//! microseconds, then sleep on a condition variable, so an idle editor costs no CPU. One job runs at a
//! time: a second caller waits on a lock the first holds for its whole job, and a job started from inside
//! an item of the same pool runs inline. A panic in an item, on any thread, is raised again in the caller
//! once every item has finished.

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

type Item<'a> = dyn Fn(usize) + Sync + 'a;
type Panic = Box<dyn Any + Send>;

struct Shared {
    /// `epoch:16 | items:24 | next:24` in one word, so claiming an item (a compare-and-swap) checks
    /// that the job is still the one whose size was read.
    state: AtomicU64,
    /// Items finished in the current job.
    done: AtomicUsize,
    /// Points at the caller's `&dyn Fn` for the current job (valid while items are unfinished).
    job: AtomicPtr<&'static Item<'static>>,
    /// The first panic of an item run by a helper in the current job, for the caller to raise.
    panic: Mutex<Option<Panic>>,
    sleepers: AtomicUsize,
    stop: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
    threads: usize,
}

thread_local! {
    /// The pool whose items this thread is running (a helper: always its own), so that a job started
    /// from inside an item runs inline instead of waiting for the job it is part of.
    static INSIDE: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

/// Physical cores, which on these machines is what helps; hyper-threads only contend for the same units.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16)
}

pub struct Pool {
    shared: Arc<Shared>,
    /// Held by a caller for its whole job: `state`, `done` and `job` describe one job at a time.
    running: Mutex<()>,
    helpers: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` threads in all (the caller plus `threads - 1` helpers).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            threads,
        });
        let mut helpers = Vec::new();
        for id in 1..threads {
            let s = shared.clone();
            helpers.push(
                std::thread::Builder::new()
                    .name(format!("codellama-compute-{id}"))
                    .spawn(move || helper(&s))?,
            );
        }
        Ok(Self {
            shared,
            running: Mutex::new(()),
            helpers,
        })
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f(i)` for every `i < n` on the pool's threads; returns when all are done. Callers on other
    /// threads wait for the current job to finish; a call from inside an item of this pool runs inline.
    /// If an item panics, the first panic is raised here after every item has finished.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if s.threads == 1 || n <= 1 || INSIDE.get() == std::ptr::from_ref(s) {
            (0..n).for_each(f);
            return;
        }
        assert!(n < MAX_ITEMS, "too many work items");
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: (lifetime erasure) `job` is read only by a helper that has claimed an unfinished item
        // of this job, this function does not return (nor unwind: items run under `catch_unwind`) before
        // every item is finished, and `running` keeps any other caller from replacing `job` until then.
        let erased: &&'static Item<'static> = unsafe { std::mem::transmute(&f) };
        s.job
            .store(std::ptr::from_ref(erased).cast_mut(), Ordering::Release);
        s.done.store(0, Ordering::Release);
        let epoch = (s.state.load(Ordering::Acquire) >> 48).wrapping_add(1) & 0xFFFF;
        s.state
            .store(epoch << 48 | (n as u64) << 24, Ordering::Release);
        if s.sleepers.load(Ordering::Acquire) > 0 {
            let _guard = s.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        let outer = INSIDE.replace(s);
        let mut panicked = None;
        while let Some(i) = claim(s, epoch) {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
                panicked.get_or_insert(p);
            }
            s.done.fetch_add(1, Ordering::AcqRel);
        }
        INSIDE.set(outer);
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            backoff(&mut spins);
        }
        let helper_panic = s
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(running);
        if let Some(p) = panicked.or(helper_panic) {
            std::panic::resume_unwind(p);
        }
    }
}

const MAX_ITEMS: usize = 1 << 24;

/// Claims the next item of job `epoch`, or `None` when the job has no unclaimed item (or is over).
fn claim(s: &Shared, epoch: u64) -> Option<usize> {
    let mut cur = s.state.load(Ordering::Acquire);
    loop {
        let (e, n, next) = unpack(cur);
        if e != epoch || next >= n {
            return None;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(next),
            Err(actual) => cur = actual,
        }
    }
}

fn unpack(state: u64) -> (u64, usize, usize) {
    (
        state >> 48,
        ((state >> 24) & 0xFF_FFFF) as usize,
        (state & 0xFF_FFFF) as usize,
    )
}

/// Busy-waits politely: CPU pause hints at first, then yielding so that a machine with more runnable
/// threads than cores still makes progress.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 128 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn helper(s: &Shared) {
    INSIDE.set(s);
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !s.stop.load(Ordering::Acquire) {
        let state = s.state.load(Ordering::Acquire);
        let (epoch, n, next) = unpack(state);
        if next < n {
            if let Some(i) = claim(s, epoch) {
                // SAFETY: the item just claimed is unfinished, so its caller is still inside `for_each`
                // (holding `running`), and `job` points at that caller's closure.
                let f: &Item = unsafe { *s.job.load(Ordering::Acquire) };
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
                    let mut first = s.panic.lock().unwrap_or_else(PoisonError::into_inner);
                    first.get_or_insert(p);
                }
                s.done.fetch_add(1, Ordering::AcqRel);
                idle_since = Instant::now();
                spins = 0;
                continue;
            }
        }
        if idle_since.elapsed() < SPIN {
            backoff(&mut spins);
            continue;
        }
        let guard = s.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        s.sleepers.fetch_add(1, Ordering::AcqRel);
        if s.state.load(Ordering::Acquire) == state && !s.stop.load(Ordering::Acquire) {
            let _ = s.wake.wait_timeout(guard, Duration::from_millis(50));
        }
        s.sleepers.fetch_sub(1, Ordering::AcqRel);
        idle_since = Instant::now();
        spins = 0;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _guard = self
                .shared
                .sleep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once() {
        let pool = Pool::new(3).unwrap();
        for n in [0, 1, 2, 7, 100] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.for_each(n, &|i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 50),
                "n={n}"
            );
        }
    }

    #[test]
    fn sleeping_helpers_wake_up_and_share_work() {
        let pool = Pool::new(2).unwrap();
        std::thread::sleep(SPIN * 4);
        let threads = Mutex::new(std::collections::HashSet::new());
        pool.for_each(64, &|_| {
            std::thread::sleep(Duration::from_millis(1));
            threads.lock().unwrap().insert(std::thread::current().id());
        });
        assert_eq!(threads.lock().unwrap().len(), 2);
    }

    /// Two threads sharing a pool each see every item of their own job run exactly once. (Items take
    /// a few microseconds so that the two callers' jobs overlap.)
    #[test]
    fn concurrent_callers_do_not_mix_their_jobs() {
        let pool = Pool::new(3).unwrap();
        let n = 16;
        std::thread::scope(|scope| {
            for caller in 0..2usize {
                let pool = &pool;
                scope.spawn(move || {
                    for _ in 0..if cfg!(miri) { 10 } else { 200 } {
                        let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        let owner = AtomicUsize::new(0);
                        pool.for_each(n, &|i| {
                            let start = Instant::now();
                            seen[i].fetch_add(1, Ordering::Relaxed);
                            owner.fetch_add(caller + 1, Ordering::Relaxed);
                            while start.elapsed() < Duration::from_micros(20) {
                                std::hint::spin_loop();
                            }
                        });
                        let counts: Vec<usize> =
                            seen.iter().map(|s| s.load(Ordering::Relaxed)).collect();
                        assert!(
                            counts.iter().all(|&c| c == 1),
                            "caller {caller}: {counts:?}"
                        );
                        assert_eq!(owner.load(Ordering::Relaxed), n * (caller + 1));
                    }
                });
            }
        });
    }

    /// An item that panics on a helper thread makes the caller panic (with the item's message); the
    /// pool goes on working.
    #[test]
    fn a_panic_on_a_helper_reaches_the_caller() {
        let pool = Pool::new(2).unwrap();
        let helper_started = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.for_each(8, &|_| {
                if std::thread::current().name() == Some("codellama-compute-1") {
                    helper_started.store(true, Ordering::Release);
                    panic!("item failed on a helper");
                }
                // The caller waits (a bounded time) until the helper has taken an item.
                while !helper_started.load(Ordering::Acquire) && Instant::now() < deadline {
                    std::thread::yield_now();
                }
            });
        }));
        let payload = r.expect_err("the helper's panic was lost");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"item failed on a helper")
        );
        let count = AtomicUsize::new(0);
        pool.for_each(10, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }

    /// A job started from inside an item of the same pool runs inline rather than waiting for itself.
    #[test]
    fn a_job_inside_an_item_runs_inline() {
        let pool = Pool::new(2).unwrap();
        let count = AtomicUsize::new(0);
        pool.for_each(4, &|_| {
            pool.for_each(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }
}
