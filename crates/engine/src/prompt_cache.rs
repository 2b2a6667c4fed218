//! The KV caches the model thread keeps, each with the tokens whose keys and values it holds. A request
//! reuses the longest token prefix a cache shares with its prompt and computes only the rest. The thread
//! keeps several caches, one per prompt recently worked on, which in an editor means one per recently
//! edited document: switching to another file and back finds the first file's prompt still computed
//! instead of computing all of it again. The draft model keeps one cache of the same kind, which catches up
//! with the prompt by the same prefix reuse (after a switch between the model's caches, by computing it).

use super::model::KvCache;

/// Caches [`PromptCaches::auto_count`] keeps at most.
const MAX_AUTO_CACHES: usize = 4;

/// The memory [`PromptCaches::auto_count`] gives all caches together (each counted at its full window;
/// positions never written take no memory).
const AUTO_BUDGET_BYTES: usize = 512 << 20;

/// A KV cache and the tokens it holds. Between the calls of one decode step the cache may hold a few
/// positions more than `tokens` (a drafted guess being verified); [`forget_unverified`](Self::forget_unverified)
/// drops them.
pub(crate) struct CachedPrompt {
    kv: KvCache,
    tokens: Vec<u32>,
    /// The request count when a request last chose this cache (0: never).
    used: u64,
}

impl CachedPrompt {
    pub fn new(kv: KvCache) -> Self {
        CachedPrompt {
            kv,
            tokens: Vec::new(),
            used: 0,
        }
    }

    /// The tokens whose keys and values the cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
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

    /// Keeps the longest prefix the cache shares with `prompt`, at most `max` tokens, and forgets the rest;
    /// returns its length.
    pub fn keep_prefix(&mut self, prompt: &[u32], max: usize) -> usize {
        let keep = common_prefix(&self.tokens, prompt).min(max);
        self.kv.truncate(keep);
        self.tokens.truncate(keep);
        keep
    }

    /// `token` went through the model (its keys and values are in the cache).
    pub fn push(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// `tokens` went through the model.
    pub fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Drops positions computed past the recorded tokens (a draft's rejected guesses).
    pub fn forget_unverified(&mut self) {
        self.kv.truncate(self.tokens.len());
    }

    pub fn clear(&mut self) {
        self.kv.truncate(0);
        self.tokens.clear();
    }
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

    /// The cache a request for `prompt` works in: the one sharing the longest prefix with it, when that
    /// prefix is at least half of the prompt or half of what the cache holds (so a cache that was being
    /// filled for an earlier keystroke's prompt goes on being filled); otherwise the least recently used
    /// one (an unused one first), so that the caches of other prompts stay.
    pub fn choose(&mut self, prompt: &[u32]) -> usize {
        self.requests += 1;
        let held: Vec<(&[u32], u64)> = self.caches.iter().map(|c| (c.tokens(), c.used)).collect();
        let pick = pick(&held, prompt);
        self.caches[pick].used = self.requests;
        pick
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
fn pick(held: &[(&[u32], u64)], prompt: &[u32]) -> usize {
    let shared: Vec<usize> = held.iter().map(|(t, _)| common_prefix(t, prompt)).collect();
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
        assert_eq!(pick(&[(&a, 5), (&b, 3)], &b_edited), 1);
        // Equal shares: the more recently used.
        assert_eq!(pick(&[(&a, 5), (&a, 6)], &a), 1);
    }

    #[test]
    fn a_cache_being_filled_goes_on_being_filled() {
        // 256 of a 1,800-token prompt computed so far (under half of the prompt, all of the cache).
        let prompt: Vec<u32> = (0..1800).collect();
        let filling: Vec<u32> = (0..256).collect();
        let other: Vec<u32> = (5000..6000).collect();
        assert_eq!(pick(&[(&other, 1), (&filling, 2), (&[], 0)], &prompt), 1);
    }

    #[test]
    fn a_new_prompt_takes_an_unused_cache_then_the_least_recently_used() {
        let (a, b): (Vec<u32>, Vec<u32>) = ((0..100).collect(), (1000..1100).collect());
        let new: Vec<u32> = (0..20).chain(5000..5200).collect(); // shares 20 of a's 100: not worth it
        assert_eq!(pick(&[(&a, 4), (&[], 0), (&b, 3)], &new), 1);
        assert_eq!(pick(&[(&a, 4), (&b, 3)], &new), 1);
        assert_eq!(pick(&[(&a, 2), (&b, 3)], &new), 0);
    }
}
