//! The KV caches the model thread keeps, each with the tokens whose keys and values it holds. A request
//! reuses what a cache holds of its prompt and computes only the rest: the prefix they share, and (with
//! `GenerateRequest::cache_reuse`) long runs of the prompt the cache holds at other positions, moved into
//! place with their keys turned to the new positions, so that a line typed higher up, a fill-in-the-middle
//! prompt whose middle marker moved, or a window sliding down a long file computes only what is new. The
//! thread keeps several caches, one per prompt recently worked on, which in an editor means one per
//! recently edited document: switching to another file and back finds the first file's prompt still
//! computed. The draft model keeps caches of the same kind, one beside each of the model's.

use std::collections::HashMap;
use std::ops::Range;

use super::model::{KvCache, Move};

/// Caches [`PromptCaches::auto_count`] keeps at most.
const MAX_AUTO_CACHES: usize = 4;

/// The memory [`PromptCaches::auto_count`] gives all caches together (each counted at its full window;
/// positions never written take no memory).
const AUTO_BUDGET_BYTES: usize = 512 << 20;

/// The fewest tokens of a stopped pass worth going on with in a chunk of their own (unless the chunk
/// is that short anyway): a pass over a few tokens reads all the weights for little work, and
/// computing them again with the rest of the chunk costs less.
const MIN_RESUMED: usize = 16;

/// A position of [`CachedPrompt::held`] that holds nothing (no token has this id).
const HOLE: u32 = u32::MAX;

/// A KV cache and the tokens it holds: `tokens` from position 0 on, and after a gap, runs placed ahead by
/// [`keep`](CachedPrompt::keep) that the prompt's computation reaches one after another. Between the calls
/// of one decode step the cache may hold a few positions more than `tokens` (a drafted guess being
/// verified); [`forget_unverified`](Self::forget_unverified) drops them.
pub(crate) struct CachedPrompt {
    kv: KvCache,
    tokens: Vec<u32>,
    /// Runs held past `tokens` with a gap before each, in order: (first position, tokens).
    ahead: Vec<(usize, Vec<u32>)>,
    /// The request count when a request last chose this cache (0: never).
    used: u64,
}

impl CachedPrompt {
    pub fn new(kv: KvCache) -> Self {
        CachedPrompt {
            kv,
            tokens: Vec::new(),
            ahead: Vec::new(),
            used: 0,
        }
    }

    /// The tokens the cache holds from position 0 on, without a gap.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How many tokens the cache holds, runs held ahead included.
    pub fn held_count(&self) -> usize {
        self.tokens.len() + self.ahead.iter().map(|(_, run)| run.len()).sum::<usize>()
    }

    /// Every position held, [`HOLE`] where nothing is.
    fn held(&self) -> Vec<u32> {
        let mut held = self.tokens.clone();
        for (at, run) in &self.ahead {
            held.resize(*at, HOLE);
            held.extend_from_slice(run);
        }
        held
    }

    /// Positions the cache has room for.
    pub fn capacity(&self) -> usize {
        self.kv.capacity()
    }

    /// The cache itself, for a forward pass; the tokens run through it are recorded with
    /// [`push`](Self::push) or [`extend`](Self::extend) once the pass succeeded.
    pub fn kv(&mut self) -> &mut KvCache {
        &mut self.kv
    }

    /// Keeps what the cache holds of `prompt`'s first `max` tokens as [`plan`] finds it with `min_run`
    /// (with 0, or where the cache cannot move positions, only the shared prefix) and forgets the rest.
    pub fn keep(&mut self, prompt: &[u32], max: usize, min_run: usize) -> Kept {
        let plan = self.plan(prompt, max, min_run);
        let moved = self.kv.move_runs(&plan.runs);
        let runs = if moved { &plan.runs[..] } else { &[] };
        self.tokens.truncate(plan.prefix);
        self.kv.truncate(plan.prefix);
        self.ahead = runs
            .iter()
            .map(|m| (m.to, prompt[m.to..m.to + m.len].to_vec()))
            .collect();
        self.take_ahead();
        Kept {
            tokens: if moved { plan.held() } else { plan.prefix },
            moved: runs.iter().filter(|m| m.from != m.to).map(|m| m.len).sum(),
        }
    }

    /// How many of `prompt`'s tokens a request for it would compute: what [`keep`](Self::keep) would
    /// not keep of them (all but its last token), with the same `min_run`.
    pub fn lacks(&self, prompt: &[u32], min_run: usize) -> usize {
        let max = prompt.len().saturating_sub(1);
        prompt.len() - self.plan(prompt, max, min_run).held()
    }

    /// [`plan`] for this cache (runs moved only where its keys can be).
    fn plan(&self, prompt: &[u32], max: usize, min_run: usize) -> Plan {
        let min_run = if self.kv.can_move() { min_run } else { 0 };
        plan(&self.held(), prompt, min_run, max)
    }

    /// The next positions of `prompt` to compute, at most `chunk` of them: from the end of
    /// [`tokens`](Self::tokens) to the next run held ahead, `stop` or the prompt's end; or only as
    /// many as a pass the cache kept when it was stopped had begun with, at least [`MIN_RESUMED`], so
    /// that the pass goes on from the layer it had reached.
    pub fn next_chunk(&self, prompt: &[u32], chunk: usize, stop: usize) -> Range<usize> {
        let start = self.tokens.len();
        let mut end = (start + chunk).min(prompt.len());
        if start < stop {
            end = end.min(stop);
        }
        if let Some((at, _)) = self.ahead.first() {
            end = end.min(*at);
        }
        let resumed = self.kv.stopped_prefix(&prompt[start..end]);
        if resumed > 0 && resumed >= MIN_RESUMED.min(end - start) {
            end = start + resumed;
        }
        start..end
    }

    /// `token` went through the model (its keys and values are in the cache).
    pub fn push(&mut self, token: u32) {
        debug_assert!(self.ahead.is_empty(), "decoding over runs held ahead");
        self.tokens.push(token);
    }

    /// `tokens` went through the model; a run held ahead that they reach joins them.
    pub fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
        self.take_ahead();
    }

    /// Runs held ahead that start where `tokens` ends join it.
    fn take_ahead(&mut self) {
        while self
            .ahead
            .first()
            .is_some_and(|(at, _)| *at == self.tokens.len())
        {
            let (_, run) = self.ahead.remove(0);
            self.tokens.extend_from_slice(&run);
            self.kv.set_len(self.tokens.len());
        }
    }

    /// Drops positions computed past the recorded tokens (a draft's rejected guesses).
    pub fn forget_unverified(&mut self) {
        self.kv.truncate(self.tokens.len());
    }

    pub fn clear(&mut self) {
        self.kv.truncate(0);
        self.tokens.clear();
        self.ahead.clear();
    }
}

/// What [`CachedPrompt::keep`] kept of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Tokens of the prompt the cache holds.
    pub tokens: usize,
    /// How many of them were moved from other positions.
    pub moved: usize,
}

/// How a cache comes to hold parts of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The shared prefix, kept where it is.
    pub prefix: usize,
    /// Runs of the prompt taken from the cache after it, in the prompt's order, each `to` past the end of
    /// the one before (`from == to`: already in place).
    pub runs: Vec<Move>,
}

impl Plan {
    /// Tokens of the prompt the cache holds after the moves.
    pub fn held(&self) -> usize {
        self.prefix + self.runs.iter().map(|m| m.len).sum::<usize>()
    }
}

/// Tokens that start a run [`plan`] looks up: a run is found from its first few tokens.
const KEY_TOKENS: usize = 4;

/// The most places a run's first tokens are tried at (repeated code starts the same way in many).
const MAX_CANDIDATES: usize = 64;

/// What a cache holding `held` ([`HOLE`] where nothing is) keeps of the first `max` tokens of `prompt`:
/// their shared prefix, then runs of at least `min_run` tokens that the cache holds anywhere, longest
/// first from each position of the prompt in turn. A line typed or deleted higher up, a fill-in-the-middle
/// prompt whose middle moved, or a window sliding down a long file leave most of the prompt as text the
/// cache holds at other positions (llama.cpp's server reuses runs the same way with `--cache-reuse`, but
/// only runs that move towards the start in the order they are held). `min_run` 0: only the prefix.
pub fn plan(held: &[u32], prompt: &[u32], min_run: usize, max: usize) -> Plan {
    let max = max.min(prompt.len());
    let prefix = common_prefix(held, &prompt[..max]);
    let mut plan = Plan {
        prefix,
        runs: Vec::new(),
    };
    let key = min_run.min(KEY_TOKENS);
    if key == 0 || held.len() < min_run {
        return plan;
    }
    let mut starts: HashMap<&[u32], Vec<usize>> = HashMap::new();
    for (i, w) in held.windows(key).enumerate() {
        if !w.contains(&HOLE) {
            starts.entry(w).or_default().push(i);
        }
    }
    let mut at = prefix;
    while at + min_run <= max {
        let best = starts
            .get(&prompt[at..at + key])
            .into_iter()
            .flat_map(|c| c.iter().take(MAX_CANDIDATES))
            .map(|&from| (common_prefix(&held[from..], &prompt[at..max]), from))
            .max_by_key(|&(len, from)| (len, std::cmp::Reverse(from.abs_diff(at))));
        match best {
            Some((len, from)) if len >= min_run => {
                plan.runs.push(Move { from, to: at, len });
                at += len;
            }
            _ => at += 1,
        }
    }
    plan
}

/// The model's caches, and which one each request works in.
pub(crate) struct PromptCaches {
    caches: Vec<CachedPrompt>,
    /// Requests that chose a cache so far.
    requests: u64,
}

impl PromptCaches {
    /// Caches made by `make` (one call per cache); at least one.
    pub fn new(
        count: usize,
        mut make: impl FnMut() -> crate::Result<KvCache>,
    ) -> crate::Result<Self> {
        let caches = (0..count.max(1))
            .map(|_| make().map(CachedPrompt::new))
            .collect::<crate::Result<_>>()?;
        Ok(PromptCaches {
            caches,
            requests: 0,
        })
    }

    /// How many caches fit [`AUTO_BUDGET_BYTES`] when one takes `bytes_each` at its full window: at least
    /// one, at most [`MAX_AUTO_CACHES`]. A Code Llama 7B cache of 2,048 f16 positions takes 1 GiB, so it
    /// gets one; a Qwen2.5-Coder 1.5B one takes 57 MiB, so it gets four.
    pub fn auto_count(bytes_each: usize) -> usize {
        (AUTO_BUDGET_BYTES / bytes_each.max(1)).clamp(1, MAX_AUTO_CACHES)
    }

    pub fn len(&self) -> usize {
        self.caches.len()
    }

    /// Positions each cache has room for.
    pub fn capacity(&self) -> usize {
        self.caches[0].capacity()
    }

    /// The cache a request for `prompt` works in: the one holding the most of it (the shared prefix and the
    /// runs [`plan`] would move, with `min_run`), when that is at least half of the prompt or half of what the cache holds (so a cache that was being
    /// filled for an earlier keystroke's prompt goes on being filled); otherwise the least recently used
    /// one (an unused one first), so that the caches of other prompts stay.
    pub fn choose(&mut self, prompt: &[u32], min_run: usize) -> usize {
        self.requests += 1;
        let min_run = self.min_run(min_run);
        let held: Vec<(Vec<u32>, u64)> = self.caches.iter().map(|c| (c.held(), c.used)).collect();
        let held: Vec<(&[u32], u64)> = held.iter().map(|(t, u)| (&t[..], *u)).collect();
        let pick = pick(&held, prompt, min_run);
        self.caches[pick].used = self.requests;
        pick
    }

    /// For each of `prompts`, the most of it any cache holds (its shared prefix and the runs [`plan`]
    /// would move, with `min_run`): what a request for it would not compute.
    pub fn most_held<'p>(
        &self,
        prompts: impl Iterator<Item = &'p [u32]>,
        min_run: usize,
    ) -> Vec<usize> {
        let min_run = self.min_run(min_run);
        let held: Vec<Vec<u32>> = self.caches.iter().map(CachedPrompt::held).collect();
        prompts
            .map(|prompt| {
                held.iter()
                    .map(|h| plan(h, prompt, min_run, prompt.len()).held())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// `min_run`, or 0 where the caches cannot move runs.
    fn min_run(&self, min_run: usize) -> usize {
        if self.caches[0].kv.can_move() {
            min_run
        } else {
            0
        }
    }

    pub fn get(&mut self, i: usize) -> &mut CachedPrompt {
        &mut self.caches[i]
    }

    /// Forgets what every cache holds (after a panic, whose cache may be half written).
    pub fn clear(&mut self) {
        self.caches.iter_mut().for_each(CachedPrompt::clear);
    }
}

/// [`PromptCaches::choose`]'s rule over what each cache holds and when it was last chosen.
fn pick(held: &[(&[u32], u64)], prompt: &[u32], min_run: usize) -> usize {
    let shared: Vec<usize> = held
        .iter()
        .map(|(t, _)| plan(t, prompt, min_run, prompt.len()).held())
        .collect();
    tracing::trace!(
        ?shared,
        prompt = prompt.len(),
        "what each prompt cache holds of the prompt"
    );
    let worth = |i: usize| {
        shared[i] > 0 && (2 * shared[i] >= prompt.len() || 2 * shared[i] >= held[i].0.len())
    };
    let best = (0..held.len())
        .filter(|&i| worth(i))
        .max_by_key(|&i| (shared[i], held[i].1));
    best.unwrap_or_else(|| {
        (0..held.len())
            .min_by_key(|&i| held[i].1)
            .expect("at least one cache")
    })
}

pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_length() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }

    #[test]
    fn a_prompt_goes_to_the_cache_it_shares_most_with() {
        let (a, b): (Vec<u32>, Vec<u32>) = ((0..100).collect(), (1000..1100).collect());
        // b's document edited further: its cache is chosen, not the more recent one of a.
        let b_edited: Vec<u32> = (1000..1090).chain(7..9).collect();
        assert_eq!(pick(&[(&a, 5), (&b, 3)], &b_edited, 0), 1);
        // Equal shares: the more recently used.
        assert_eq!(pick(&[(&a, 5), (&a, 6)], &a, 0), 1);
    }

    #[test]
    fn a_cache_being_filled_goes_on_being_filled() {
        // 256 of a 1,800-token prompt computed so far (under half of the prompt, all of the cache).
        let prompt: Vec<u32> = (0..1800).collect();
        let filling: Vec<u32> = (0..256).collect();
        let other: Vec<u32> = (5000..6000).collect();
        assert_eq!(pick(&[(&other, 1), (&filling, 2), (&[], 0)], &prompt, 0), 1);
    }

    #[test]
    fn a_cache_holding_the_prompt_further_on_is_chosen_with_reuse() {
        // The window slid down a long file: the prompt starts 300 tokens later than the cached one.
        let held: Vec<u32> = (0..1000).collect();
        let slid: Vec<u32> = (300..1000).chain(5000..5100).collect();
        let other: Vec<u32> = (9000..9010).collect();
        assert_eq!(
            pick(&[(&other, 1), (&held, 5)], &slid, 0),
            0,
            "nothing shared: the least recently used"
        );
        assert_eq!(pick(&[(&other, 1), (&held, 5)], &slid, 256), 1);
    }

    #[test]
    fn runs_held_elsewhere_are_kept_at_their_new_places() {
        // held: marker, lines A (300), marker, B (200), marker, C (40); prompt: marker, B, C, marker, new.
        let a: Vec<u32> = (100..400).collect();
        let b: Vec<u32> = (1000..1200).collect();
        let c: Vec<u32> = (2000..2040).collect();
        let held: Vec<u32> = [&[1][..], &a, &[2], &b, &[3], &c].concat();
        let prompt: Vec<u32> = [&[1][..], &b, &c, &[2], &[7; 50]].concat();
        let run = |from, to, len| Move { from, to, len };
        let p = plan(&held, &prompt, 64, prompt.len());
        // B moves from 302 to 1; C (40 tokens) is shorter than a run worth taking.
        assert_eq!((p.prefix, &p.runs[..]), (1, &[run(302, 1, 200)][..]));
        assert_eq!(p.held(), 201);
        let p = plan(&held, &prompt, 32, prompt.len());
        assert_eq!(p.runs, vec![run(302, 1, 200), run(503, 201, 40)]);
        // Never past `max`, and only the prefix with `min_run` 0.
        assert_eq!(plan(&held, &prompt, 32, 150).held(), 150);
        assert_eq!(
            plan(&held, &prompt, 0, prompt.len()),
            Plan {
                prefix: 1,
                runs: vec![]
            }
        );
        // A token typed near the start: what follows it moves one position on.
        let typed: Vec<u32> = [&[1][..], &a[..10], &[99], &a[10..], &[2], &b].concat();
        let p = plan(&held, &typed, 64, typed.len());
        assert_eq!((p.prefix, &p.runs[..]), (11, &[run(11, 12, 491)][..]));
        // Ten deleted: what follows moves ten back.
        let cut: Vec<u32> = [&[1][..], &a[..10], &a[20..], &[2], &b].concat();
        assert_eq!(
            plan(&held, &cut, 64, cut.len()).runs,
            vec![run(21, 11, 481)]
        );
        // A token replaced by another: what follows stays where it is.
        let replaced: Vec<u32> = [&[1][..], &a[..10], &[99], &a[11..]].concat();
        assert_eq!(
            plan(&held, &replaced, 64, replaced.len()).runs,
            vec![run(12, 12, 289)]
        );
    }

    #[test]
    fn a_middle_marker_that_moved_leaves_the_suffix_to_reuse() {
        // PSM: <pre> A <suf> S <mid> M, then the cursor's line crosses a step: <pre> A M <suf> S <mid> N.
        let (pre, suf, mid) = (1, 2, 3);
        let a: Vec<u32> = (100..600).collect();
        let sfx: Vec<u32> = (1000..1400).collect();
        let m: Vec<u32> = (2000..2150).collect();
        let held: Vec<u32> = [&[pre][..], &a, &[suf], &sfx, &[mid], &m].concat();
        let prompt: Vec<u32> = [&[pre][..], &a, &m, &[suf], &sfx, &[mid], &[5, 6]].concat();
        let p = plan(&held, &prompt, 64, prompt.len() - 1);
        let run = |from, to, len| Move { from, to, len };
        // M from the end of the old prompt, and the suffix (with its markers) 150 positions on.
        assert_eq!(
            (p.prefix, &p.runs[..]),
            (501, &[run(903, 501, 150), run(501, 651, 402)][..])
        );
        assert_eq!(
            prompt.len() - 1 - p.held(),
            1,
            "only the new middle token is computed"
        );
    }

    #[test]
    fn a_new_prompt_takes_an_unused_cache_then_the_least_recently_used() {
        let (a, b): (Vec<u32>, Vec<u32>) = ((0..100).collect(), (1000..1100).collect());
        let new: Vec<u32> = (0..20).chain(5000..5200).collect(); // shares 20 of a's 100: not worth it
        assert_eq!(pick(&[(&a, 4), (&[], 0), (&b, 3)], &new, 0), 1);
        assert_eq!(pick(&[(&a, 4), (&b, 3)], &new, 0), 1);
        assert_eq!(pick(&[(&a, 2), (&b, 3)], &new, 0), 0);
    }
}
