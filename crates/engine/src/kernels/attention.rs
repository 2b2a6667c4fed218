//! Causal grouped-query attention over the KV cache, computed one query row at a time with an online
//! softmax (no score matrix is materialised, so memory does not grow with the context). The cache of a
//! layer (`KvLayer`) holds its keys and values as f16, or as q8_0 (blocks of 32 signed bytes and an f16
//! scale: 34 bytes per 32 values instead of 64, which halves the cache's memory and the bytes decode reads).
//!
//! Numerics follow llama.cpp's CPU flash-attention kernels, whose greedy outputs our tests compare with.
//! With an f16 cache, for short query batches (decode) the query is rounded to f16 and the weighted sum of
//! values is accumulated in f16; for batches of `TILE_ROWS` or more queries (prompt processing) queries and
//! accumulators stay f32. With a q8_0 cache every batch takes one path: the query is quantized to q8_0,
//! scores are q8_0 dot products (integer sums per block, scaled and summed in llama.cpp's AVX2 order), and
//! values are dequantized and accumulated in f32. Scores and the softmax are f32 throughout.
//!
//! Before a q8_0 cache stores them, keys and values are rotated by an orthonormal Walsh–Hadamard transform
//! (as llama.cpp does for quantized caches, heads of a multiple of 64 values): the transform spreads the
//! few huge components some models have in their keys (Qwen2's key biases) over the whole head, so that
//! they no longer set the scale of a block and flush its other values to zero. The query gets the same
//! rotation as the keys, which leaves every score as it was, and the output is rotated back.
use std::ops::Range;

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::q8::{Q8Act, QK};
use super::{glibc_exp, size, Exec, SharedOut};

/// Query batches at least this long use the f32 ("tiled") numerics.
pub const TILE_ROWS: usize = 64;

/// Query rows of one head processed together in prompt processing: each such block converts the head's
/// cached keys and values to f32 once, so a 7B's prompt chunk of 64 rows does it once (32 rows: 10% slower
/// attention at depth 448; 128 rows gave a chunk of 256 nothing more).
const BLOCK_ROWS: usize = 64;

/// What the KV cache stores per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// 2 bytes per value.
    #[default]
    F16,
    /// Blocks of 32 values as 32 signed bytes and one f16 scale (`value = q · d`): 34 bytes per 32.
    Q8_0,
}

impl KvType {
    /// The name the `kv_cache_type` setting and llama.cpp's `--cache-type-k` use.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// Whether heads of `head_dim` values can be stored (q8_0 needs whole blocks of 32).
    pub fn fits(self, head_dim: usize) -> bool {
        head_dim > 0 && (self == KvType::F16 || head_dim.is_multiple_of(QK))
    }

    /// Bytes that `values` cached values take (whole blocks for q8_0).
    pub fn bytes(self, values: usize) -> usize {
        match self {
            KvType::F16 => values * 2,
            KvType::Q8_0 => values.div_ceil(QK) * (QK + 2),
        }
    }
}

/// The keys and the values of one layer, `[kv_heads][capacity][head_dim]` each, in a `KvType`. The fields
/// are private so that the kernels can rely on their sizes. Allocated zeroed, which the allocator maps
/// lazily: only the positions written become resident.
pub struct KvLayer {
    data: KvData,
    /// Values in each of the keys and the values.
    values: usize,
}

enum KvData {
    /// f16 bits.
    F16 {
        k: Vec<u16>,
        v: Vec<u16>,
    },
    Q8_0 {
        k: Q8Values,
        v: Q8Values,
    },
}

/// q8_0 values: the quants of every 32 values in `qs`, their scale (f16 bits) in `d`. Planar rather than
/// interleaved 34-byte blocks, so that both are plain vectors (zeroed lazily) and a row's quants are
/// contiguous for 32-byte loads.
struct Q8Values {
    qs: Vec<i8>,
    d: Vec<u16>,
}

impl Q8Values {
    fn zeroed(values: usize) -> Self {
        Q8Values {
            qs: vec![0; values],
            d: vec![0; values / QK],
        }
    }

    /// Positions `first..first + n` of rows of `hd` values (`hd` a multiple of 32).
    fn rows(&self, first: usize, n: usize, hd: usize) -> Q8Rows<'_> {
        let nb = hd / QK;
        Q8Rows {
            qs: &self.qs[first * hd..(first + n) * hd],
            d: self.d[first * nb..(first + n) * nb].reinterpret_cast(),
        }
    }

    /// Quantizes `rows` (rows of `hd` values, a multiple of 32) into positions `first..`.
    fn write(&mut self, first: usize, rows: &Q8Act, row: usize, hd: usize) {
        let nb = hd / QK;
        self.qs[first * hd..(first + 1) * hd].copy_from_slice(rows.row(row));
        for (dst, d) in self.d[first * nb..(first + 1) * nb]
            .iter_mut()
            .zip(rows.d(row))
        {
            // `d` was rounded through f16 when quantized: this conversion is exact.
            *dst = f16::from_f32(*d).to_bits();
        }
    }
}

/// Values per Walsh–Hadamard rotation of the keys (and queries) of a q8_0 cache with heads of `hd`
/// values: 64, doubled while it divides the head (llama.cpp's `n_rot_k`); `None` when 64 does not.
fn key_rotation(hd: usize) -> Option<usize> {
    let mut n = 64;
    if !hd.is_multiple_of(n) {
        return None;
    }
    while hd.is_multiple_of(2 * n) {
        n *= 2;
    }
    Some(n)
}

/// The same for the values (and the output): always 64 (llama.cpp's `n_rot_v`, smaller rotations
/// being better for values).
fn value_rotation(hd: usize) -> Option<usize> {
    hd.is_multiple_of(64).then_some(64)
}

/// Rotates every run of `n` values (a power of two) of `x` by the orthonormal Walsh–Hadamard transform,
/// its own inverse: scaled by 1/√n first, then butterflies `(u + v, u − v)` over strides 1, 2, 4, …, in
/// llama.cpp's order so that the rotated values are the same to the bit.
fn rotate(x: &mut [f32], n: usize) {
    let scale = 1.0 / (n as f32).sqrt();
    for run in x.chunks_exact_mut(n) {
        run.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        while len < n {
            for pair in run.chunks_exact_mut(2 * len) {
                let (lo, hi) = pair.split_at_mut(len);
                for (u, v) in lo.iter_mut().zip(hi) {
                    (*u, *v) = (*u + *v, *u - *v);
                }
            }
            len *= 2;
        }
    }
}

/// `x` rotated by `rotation`, when there is one.
fn rotated(x: &[f32], rotation: Option<usize>) -> std::borrow::Cow<'_, [f32]> {
    match rotation {
        Some(n) => {
            let mut x = x.to_vec();
            rotate(&mut x, n);
            std::borrow::Cow::Owned(x)
        }
        None => std::borrow::Cow::Borrowed(x),
    }
}

/// Cached q8_0 rows: `qs.len() / 32 == d.len()`.
#[derive(Clone, Copy)]
struct Q8Rows<'a> {
    qs: &'a [i8],
    d: &'a [f16],
}

impl KvLayer {
    /// Room for `values` keys and as many values. Panics unless q8_0 gets whole blocks of 32.
    pub fn zeroed(ty: KvType, values: usize) -> Self {
        let data = match ty {
            KvType::F16 => KvData::F16 {
                k: vec![0; values],
                v: vec![0; values],
            },
            KvType::Q8_0 => {
                assert!(
                    values.is_multiple_of(QK),
                    "a q8_0 cache of {values} values (not whole blocks of {QK})"
                );
                KvData::Q8_0 {
                    k: Q8Values::zeroed(values),
                    v: Q8Values::zeroed(values),
                }
            }
        };
        KvLayer { data, values }
    }

    pub fn kv_type(&self) -> KvType {
        match self.data {
            KvData::F16 { .. } => KvType::F16,
            KvData::Q8_0 { .. } => KvType::Q8_0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Positions per KV head in the cache (`k[h][p][d]` has stride `capacity * head_dim` per head).
    pub capacity: usize,
}

/// How a batch of per-head vectors is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[heads][seq][head_dim]` (the tensor path, after its transposes).
    HeadMajor,
    /// `[seq][heads][head_dim]` (straight out of a matrix product).
    TokenMajor,
}

impl Layout {
    fn offset(self, head: usize, heads: usize, i: usize, seq: usize, hd: usize) -> usize {
        match self {
            Layout::HeadMajor => (head * seq + i) * hd,
            Layout::TokenMajor => (i * heads + head) * hd,
        }
    }
}

impl AttnShape {
    /// Panics unless the shape is usable (heads and head size non-zero, query heads a multiple of KV
    /// heads, a head size the cache's type can store), positions `pos..pos + seq` fit the cache, and the
    /// cache holds `n_kv_head × capacity × head_dim` values: the one check before the kernels index the
    /// cache without checks.
    fn check(&self, cache: &KvLayer, pos: usize, seq: usize) {
        assert!(
            self.n_kv_head > 0
                && self.n_head.is_multiple_of(self.n_kv_head)
                && cache.kv_type().fits(self.head_dim),
            "unusable attention shape {self:?} for a {} cache",
            cache.kv_type().name()
        );
        assert!(
            pos.checked_add(seq).is_some_and(|end| end <= self.capacity),
            "positions {pos}..+{seq} outside a cache of {}",
            self.capacity
        );
        let values = size(
            size(self.n_kv_head, self.capacity, "KV cache"),
            self.head_dim,
            "KV cache",
        );
        assert!(
            cache.values >= values,
            "a KV cache of {} values for {self:?}",
            cache.values
        );
    }

    /// The scale of the scores, 1/√head_dim.
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Writes `seq` new keys and values (f32, in `layout`) at positions `pos..`. Panics unless the shape fits
/// the cache (`AttnShape::check`) and `k` and `v` hold `seq × n_kv_head × head_dim` values.
pub fn store(
    cache: &mut KvLayer,
    k: &[f32],
    v: &[f32],
    layout: Layout,
    s: AttnShape,
    pos: usize,
    seq: usize,
) {
    s.check(cache, pos, seq);
    let hd = s.head_dim;
    let n_rows = size(s.n_kv_head, seq, "KV rows");
    let values = size(n_rows, hd, "KV rows");
    assert!(
        k.len() >= values && v.len() >= values,
        "{} keys and {} values to store, {values} expected",
        k.len(),
        v.len()
    );
    // Row `(h, i)` of the input and where it goes.
    let rows = (0..s.n_kv_head).flat_map(|h| {
        (0..seq).map(move |i| {
            (
                layout.offset(h, s.n_kv_head, i, seq, hd),
                h * s.capacity + pos + i,
            )
        })
    });
    match &mut cache.data {
        KvData::F16 { k: kc, v: vc } => {
            let (kc, vc): (&mut [f16], &mut [f16]) =
                (kc.reinterpret_cast_mut(), vc.reinterpret_cast_mut());
            for (src, dst) in rows {
                for d in 0..hd {
                    kc[dst * hd + d] = f16::from_f32(k[src + d]);
                    vc[dst * hd + d] = f16::from_f32(v[src + d]);
                }
            }
        }
        KvData::Q8_0 { k: kc, v: vc } => {
            // Every row of `hd` values is whole blocks, in either layout: rotate and quantize the batch at
            // once, the way llama.cpp's copy into a q8_0 cache does (`quantize_row_q8_0`).
            let (k, v) = (&k[..values], &v[..values]);
            let (k, v) = (rotated(k, key_rotation(hd)), rotated(v, value_rotation(hd)));
            let (kq, vq) = (
                Q8Act::quantize(&k, n_rows, hd),
                Q8Act::quantize(&v, n_rows, hd),
            );
            for (src, dst) in rows {
                kc.write(dst, &kq, src / hd, hd);
                vc.write(dst, &vq, src / hd, hd);
            }
        }
    }
}

/// The key of KV head `head` at position `at`, as f32 in the model's basis (a q8_0 cache's rotation undone).
/// Panics unless the shape fits the cache (`AttnShape::check`).
#[cfg(test)]
pub fn key(cache: &KvLayer, s: AttnShape, head: usize, at: usize) -> Vec<f32> {
    s.check(cache, at, 1);
    assert!(head < s.n_kv_head, "KV head {head} of {}", s.n_kv_head);
    let row = head * s.capacity + at;
    keys(cache, s.head_dim, row..row + 1)
}

/// The keys and values of a run of positions of one layer, taken out of the cache ([`take`]) to be put
/// back at other positions ([`put`]): keys as f32 in the model's basis (to be turned to their new
/// positions), values as stored.
pub struct Run {
    /// `[kv_heads][n][head_dim]`.
    pub keys: Vec<f32>,
    values: StoredValues,
    n: usize,
}

enum StoredValues {
    F16(Vec<u16>),
    Q8_0 { qs: Vec<i8>, d: Vec<u16> },
}

/// Positions `from..from + n` of every KV head. Panics unless the shape fits the cache there.
pub fn take(cache: &KvLayer, s: AttnShape, from: usize, n: usize) -> Run {
    s.check(cache, from, n);
    let hd = s.head_dim;
    let rows = |h: usize| (h * s.capacity + from)..(h * s.capacity + from + n);
    // Each head's rows of `per_row` stored items, one head after another.
    fn gather<T: Copy>(
        data: &[T],
        heads: usize,
        rows: impl Fn(usize) -> Range<usize>,
        per_row: usize,
    ) -> Vec<T> {
        (0..heads)
            .flat_map(|h| {
                data[rows(h).start * per_row..rows(h).end * per_row]
                    .iter()
                    .copied()
            })
            .collect()
    }
    let keys = (0..s.n_kv_head)
        .flat_map(|h| keys(cache, hd, rows(h)))
        .collect();
    let values = match &cache.data {
        KvData::F16 { v, .. } => StoredValues::F16(gather(v, s.n_kv_head, rows, hd)),
        KvData::Q8_0 { v, .. } => StoredValues::Q8_0 {
            qs: gather(&v.qs, s.n_kv_head, rows, hd),
            d: gather(&v.d, s.n_kv_head, rows, hd / QK),
        },
    };
    Run { keys, values, n }
}

/// Writes `run` at positions `to..to + run.n` of every KV head, its keys rounded again into the cache's
/// type. Panics unless the shape fits the cache there and `run` came from a cache of the same type and
/// shape.
pub fn put(cache: &mut KvLayer, s: AttnShape, to: usize, run: &Run) {
    let n = run.n;
    s.check(cache, to, n);
    let hd = s.head_dim;
    assert_eq!(
        run.keys.len(),
        s.n_kv_head * n * hd,
        "a run of another shape"
    );
    for h in 0..s.n_kv_head {
        let (dst, src) = (h * s.capacity + to, h * n);
        let keys = &run.keys[src * hd..(src + n) * hd];
        match (&mut cache.data, &run.values) {
            (KvData::F16 { k, v }, StoredValues::F16(values)) => {
                v[dst * hd..(dst + n) * hd].copy_from_slice(&values[src * hd..(src + n) * hd]);
                let out: &mut [f16] = k[dst * hd..(dst + n) * hd].reinterpret_cast_mut();
                out.convert_from_f32_slice(keys);
            }
            (KvData::Q8_0 { k, v }, StoredValues::Q8_0 { qs, d }) => {
                let nb = hd / QK;
                v.qs[dst * hd..(dst + n) * hd].copy_from_slice(&qs[src * hd..(src + n) * hd]);
                v.d[dst * nb..(dst + n) * nb].copy_from_slice(&d[src * nb..(src + n) * nb]);
                let keys = rotated(keys, key_rotation(hd));
                let q = Q8Act::quantize(&keys, n, hd);
                for i in 0..n {
                    k.write(dst + i, &q, i, hd);
                }
            }
            _ => panic!("a run taken from a cache of another type"),
        }
    }
}

/// Rows `rows` (head-major indices, of one head) of the keys, as f32 in the model's basis.
fn keys(cache: &KvLayer, hd: usize, rows: Range<usize>) -> Vec<f32> {
    let mut out = vec![0f32; rows.len() * hd];
    match &cache.data {
        KvData::F16 { k, .. } => {
            let stored: &[f16] = k[rows.start * hd..rows.end * hd].reinterpret_cast();
            stored.convert_to_f32_slice(&mut out);
        }
        KvData::Q8_0 { k, .. } => {
            let stored = k.rows(rows.start, rows.len(), hd);
            for ((dst, qs), d) in out
                .chunks_exact_mut(QK)
                .zip(stored.qs.chunks_exact(QK))
                .zip(stored.d)
            {
                for (x, &q) in dst.iter_mut().zip(qs) {
                    *x = q as f32 * d.to_f32();
                }
            }
            if let Some(n) = key_rotation(hd) {
                rotate(&mut out, n); // its own inverse
            }
        }
    }
    out
}

/// `out[i][h*hd..]` = attention of query `(h, i)` (at position `pos + i`) over positions `0..=pos+i`.
/// `q` is in `layout`, `out` is `[seq][n_head * head_dim]`. Rows are spread over `exec`'s threads.
/// Panics unless the shape fits the cache (`AttnShape::check`) and `q` and `out` hold
/// `seq × n_head × head_dim` values.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    exec: Exec,
    q: &[f32],
    layout: Layout,
    cache: &KvLayer,
    s: AttnShape,
    pos: usize,
    seq: usize,
    out: &mut [f32],
) {
    s.check(cache, pos, seq);
    let rows = size(s.n_head, seq, "attention rows");
    let values = size(rows, s.head_dim, "attention");
    assert!(
        out.len() >= values && q.len() >= values,
        "attention: {} queries and {} outputs for {values} values",
        q.len(),
        out.len()
    );
    let out = SharedOut::new(out);
    match &cache.data {
        KvData::F16 { k, v } => attend_f16(
            exec,
            q,
            layout,
            k.reinterpret_cast(),
            v.reinterpret_cast(),
            s,
            pos,
            seq,
            out,
        ),
        KvData::Q8_0 { k, v } => attend_q8(exec, q, layout, k, v, s, pos, seq, out),
    }
}

/// Spreads the `rows` query rows over `exec` when the work is worth waking threads for.
fn for_rows(exec: Exec, rows: usize, keys: usize, row: &(dyn Fn(usize) + Sync)) {
    if keys * rows > 4096 {
        exec.for_each(rows, row);
    } else {
        (0..rows).for_each(row);
    }
}

/// The inputs and output of one attention over an f16 cache, as the vector kernels split it: into blocks
/// of query rows of one head for a prompt (`simd::attend_block`, `simd512::attend_block`), into groups of
/// the rows that read one KV head for a decoding step (`attend_groups`). `new` checks the shape against
/// the cache, the queries and the output, so the accessors below stay inside them.
#[cfg(target_arch = "x86_64")]
struct F16Batch<'a> {
    q: &'a [f32],
    layout: Layout,
    k: &'a [f16],
    v: &'a [f16],
    s: AttnShape,
    pos: usize,
    seq: usize,
    scale: f32,
    out: SharedOut<'a>,
}

#[cfg(target_arch = "x86_64")]
impl<'a> F16Batch<'a> {
    /// Panics unless the caches hold `n_kv_head × capacity × head_dim` values, positions up to
    /// `pos + seq` fit the capacity, and `q` and `out` hold `seq × n_head × head_dim` values.
    #[allow(clippy::too_many_arguments)]
    fn new(
        q: &'a [f32],
        layout: Layout,
        k: &'a [f16],
        v: &'a [f16],
        s: AttnShape,
        pos: usize,
        seq: usize,
        out: SharedOut<'a>,
    ) -> Self {
        let cached = size(s.n_kv_head * s.capacity, s.head_dim, "cache");
        let rows = size(s.n_head * seq, s.head_dim, "attention");
        assert!(k.len() >= cached && v.len() >= cached && pos + seq <= s.capacity);
        assert!(q.len() >= rows && out.len() >= rows, "attention rows");
        let scale = s.scale();
        Self {
            q,
            layout,
            k,
            v,
            s,
            pos,
            seq,
            scale,
            out,
        }
    }

    /// Head `h`'s cached keys and values at positions up to that of query row `rows_end - 1`: the only
    /// cache reads of its block.
    fn head(&self, h: usize, rows_end: usize) -> (&'a [f16], &'a [f16]) {
        let hd = self.s.head_dim;
        let base = h / (self.s.n_head / self.s.n_kv_head) * self.s.capacity * hd;
        let end = base + (self.pos + rows_end) * hd;
        (&self.k[base..end], &self.v[base..end])
    }

    /// Query row `i` of head `h`.
    fn query(&self, h: usize, i: usize) -> &'a [f32] {
        let hd = self.s.head_dim;
        let at = self.layout.offset(h, self.s.n_head, i, self.seq, hd);
        &self.q[at..at + hd]
    }

    /// The output of query row `i` of head `h`.
    ///
    /// # Safety
    /// No other task writes it at the same time.
    unsafe fn output(&self, h: usize, i: usize) -> &'a mut [f32] {
        let hd = self.s.head_dim;
        // SAFETY: the caller's promise; `slice` checks the range against the output.
        unsafe { self.out.slice(i * self.s.n_head * hd + h * hd, hd) }
    }
}

/// `attend` over an f16 cache (the shape was checked).
#[allow(clippy::too_many_arguments)]
fn attend_f16(
    exec: Exec,
    q: &[f32],
    layout: Layout,
    k_cache: &[f16],
    v_cache: &[f16],
    s: AttnShape,
    pos: usize,
    seq: usize,
    out: SharedOut,
) {
    let hd = s.head_dim;
    let group = s.n_head / s.n_kv_head;
    let scale = s.scale();
    let low_precision = seq < TILE_ROWS;
    #[cfg(target_arch = "x86_64")]
    if !low_precision && simd::fits(hd) && super::cpu::has_avx2() {
        // Blocks of query rows of one head: keys and values converted to f32 once per block.
        let blocks = seq.div_ceil(BLOCK_ROWS);
        let b = F16Batch::new(q, layout, k_cache, v_cache, s, pos, seq, out);
        exec.for_each(s.n_head * blocks, &|item| {
            let (h, blk) = (item / blocks, item % blocks);
            let rows = blk * BLOCK_ROWS..((blk + 1) * BLOCK_ROWS).min(seq);
            if simd512::fits(hd) && super::cpu::has_avx512_vnni() {
                // SAFETY: the CPU has AVX-512 F besides AVX2, FMA and F16C (`has_avx512_vnni`), and
                // each item writes the outputs of its own (head, rows).
                unsafe { simd512::attend_block(&b, h, rows) }
                return;
            }
            // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`), and each item writes the outputs of
            // its own (head, rows).
            unsafe { simd::attend_block(&b, h, rows) }
        });
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if low_precision && simd512::fits_row(hd) && super::cpu::has_avx512_vnni() {
        let b = F16Batch::new(q, layout, k_cache, v_cache, s, pos, seq, out);
        attend_groups(exec, &b);
        return;
    }
    let row = |r: usize| {
        let (h, i) = (r / seq, r % seq);
        let kvh = h / group;
        let base = kvh * s.capacity * hd;
        let n = pos + i + 1;
        let qo = layout.offset(h, s.n_head, i, seq, hd);
        // SAFETY: every (h, i) writes its own head_dim values of the output.
        let dst = unsafe { out.slice(i * s.n_head * hd + h * hd, hd) };
        attend_row(
            &q[qo..qo + hd],
            &k_cache[base..base + n * hd],
            &v_cache[base..base + n * hd],
            hd,
            scale,
            low_precision,
            dst,
        );
    };
    for_rows(exec, s.n_head * seq, pos + seq, &row);
}

/// `attend_f16` for decode-sized batches on AVX-512: the query rows that read the same KV head (the heads
/// of its group, at every position of the batch) attend up to `simd512::ROWS` at a time, so that each
/// cached key and value is converted once for all of them. A KV head's rows are taken position by
/// position (all heads of the group at the batch's first position, then at the next), so rows that
/// attend together mostly attend over as many positions.
#[cfg(target_arch = "x86_64")]
fn attend_groups(exec: Exec, b: &F16Batch) {
    let (s, seq) = (b.s, b.seq);
    let group = s.n_head / s.n_kv_head;
    let per_kv = group * seq;
    // As even as they can be, each of at most `ROWS` rows.
    let chunks = per_kv.div_ceil(simd512::ROWS);
    let chunk = |item: usize| {
        let (kvh, c) = (item / chunks, item % chunks);
        let (keys, values) = b.head(kvh * group, seq);
        let mut rows: Vec<simd512::Row> = (c * per_kv / chunks..(c + 1) * per_kv / chunks)
            .map(|r| {
                let (h, i) = (kvh * group + r % group, r / group);
                simd512::Row {
                    query: b.query(h, i),
                    len: b.pos + i + 1,
                    // SAFETY: every (h, i) is in one chunk of one item, which alone writes its output.
                    out: unsafe { b.output(h, i) },
                }
            })
            .collect();
        // SAFETY: the CPU has AVX-512 F besides AVX2, FMA and F16C (`has_avx512_vnni`, checked by the
        // caller); `attend_rows` checks the rest.
        unsafe { simd512::attend_rows(&mut rows, keys, values, b.scale) }
    };
    let positions = (b.pos + seq) * per_kv / chunks;
    for_rows(exec, s.n_kv_head * chunks, positions, &chunk);
}

/// `attend` over a q8_0 cache (the shape was checked): one row at a time for every batch size, as
/// llama.cpp does for quantized caches.
#[allow(clippy::too_many_arguments)]
fn attend_q8(
    exec: Exec,
    q: &[f32],
    layout: Layout,
    k: &Q8Values,
    v: &Q8Values,
    s: AttnShape,
    pos: usize,
    seq: usize,
    out: SharedOut,
) {
    let hd = s.head_dim;
    let group = s.n_head / s.n_kv_head;
    let scale = s.scale();
    // Each query row is `hd` contiguous values in either layout: rotate them like the keys and quantize
    // them all at once.
    let rows = s.n_head * seq;
    let queries = Q8Act::quantize(&rotated(&q[..rows * hd], key_rotation(hd)), rows, hd);
    let row = |r: usize| {
        let (h, i) = (r / seq, r % seq);
        let first = h / group * s.capacity;
        let n = pos + i + 1;
        let qr = layout.offset(h, s.n_head, i, seq, hd) / hd;
        let query = (queries.row(qr), queries.d(qr));
        // SAFETY: every (h, i) writes its own head_dim values of the output.
        let dst = unsafe { out.slice(i * s.n_head * hd + h * hd, hd) };
        attend_row_q8(
            query,
            k.rows(first, n, hd),
            v.rows(first, n, hd),
            scale,
            dst,
        );
        if let Some(n) = value_rotation(hd) {
            rotate(dst, n);
        }
    };
    for_rows(exec, rows, pos + seq, &row);
}

/// One quantized query row (quants and per-block scales) against the cached rows `keys` and `values`.
fn attend_row_q8(
    query: (&[i8], &[f32]),
    keys: Q8Rows,
    values: Q8Rows,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd512::fits_row(out.len()) && super::cpu::has_avx512_vnni() {
            // SAFETY: the CPU has AVX-512 F besides AVX2, FMA and F16C (`has_avx512_vnni`).
            return unsafe { simd512::attend_row_q8(query, keys, values, scale, out) };
        }
        if simd::fits(out.len()) && super::cpu::has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`), all `attend_row_q8` needs.
            return unsafe { simd::attend_row_q8(query, keys, values, scale, out) };
        }
    }
    attend_row_q8_scalar(query, keys, values, scale, out)
}

/// The scalar `attend_row_q8`, bit for bit the same as the vector one: llama.cpp's online softmax over
/// q8_0 keys and values with an f32 accumulator. Panics unless the query and the output hold `hd`
/// values (a multiple of 32) and the rows are whole rows of `hd`.
fn attend_row_q8_scalar(
    (qq, qd): (&[i8], &[f32]),
    keys: Q8Rows,
    values: Q8Rows,
    scale: f32,
    out: &mut [f32],
) {
    let hd = out.len();
    let nb = hd / QK;
    assert!(hd.is_multiple_of(QK) && qq.len() == hd && qd.len() == nb);
    assert!(keys.qs.len() == values.qs.len() && keys.qs.len().is_multiple_of(hd));
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    let mut acc = vec![0f32; hd];
    let key_rows = keys.qs.chunks_exact(hd).zip(keys.d.chunks_exact(nb));
    let value_rows = values.qs.chunks_exact(hd).zip(values.d.chunks_exact(nb));
    for ((kq, kd), (vq, vd)) in key_rows.zip(value_rows) {
        let score = dot_q8_0(kq, kd, qq, qd) * scale;
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if score > m {
            ms = glibc_exp::exp(m - score);
            m = score;
            acc.iter_mut().for_each(|a| *a *= ms);
        } else {
            vs = glibc_exp::exp(score - m);
        }
        for ((a32, q32), d) in acc.chunks_exact_mut(QK).zip(vq.chunks_exact(QK)).zip(vd) {
            let d = d.to_f32();
            for (a, q) in a32.iter_mut().zip(q32) {
                // `q · d` is exact in f32 (8 by 11 significant bits), as in llama.cpp's dequantization.
                *a = (*q as f32 * d).mul_add(vs, *a);
            }
        }
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = a * inv;
    }
}

/// `k · q` over q8_0 blocks in the order of llama.cpp's AVX2 `ggml_vec_dot_q8_0_q8_0`: eight lanes, lane
/// `j` of block `b` the exact integer sum of values `4j..4j + 4`, multiplied by both scales and added
/// with one rounding (a fused multiply-add), then the lanes summed pairwise.
fn dot_q8_0(kq: &[i8], kd: &[f16], qq: &[i8], qd: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for ((k32, q32), (kd, qd)) in kq
        .chunks_exact(QK)
        .zip(qq.chunks_exact(QK))
        .zip(kd.iter().zip(qd))
    {
        let d = kd.to_f32() * qd;
        for ((lane, k4), q4) in lanes
            .iter_mut()
            .zip(k32.chunks_exact(4))
            .zip(q32.chunks_exact(4))
        {
            let sum: i32 = k4.iter().zip(q4).map(|(a, b)| *a as i32 * *b as i32).sum();
            *lane = d.mul_add(sum as f32, *lane);
        }
    }
    let half: [f32; 4] = std::array::from_fn(|i| lanes[i] + lanes[i + 4]);
    (half[0] + half[2]) + (half[1] + half[3])
}

/// One query row against `n = keys.len() / hd` cached positions.
fn attend_row(
    query: &[f32],
    keys: &[f16],
    values: &[f16],
    hd: usize,
    scale: f32,
    low_precision: bool,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::fits(hd) && super::cpu::has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`), all `attend_row` needs.
            return unsafe { simd::attend_row(query, keys, values, hd, scale, low_precision, out) };
        }
    }
    attend_row_scalar(query, keys, values, hd, scale, low_precision, out)
}

fn attend_row_scalar(
    query: &[f32],
    keys: &[f16],
    values: &[f16],
    hd: usize,
    scale: f32,
    low_precision: bool,
    out: &mut [f32],
) {
    let round = |x: f32| {
        if low_precision {
            f16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let q: Vec<f32> = query.iter().map(|&x| round(x)).collect();
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    let mut acc = vec![0f32; hd];
    for (kr, vr) in keys.chunks_exact(hd).zip(values.chunks_exact(hd)) {
        let score: f32 = kr.iter().zip(&q).map(|(a, b)| a.to_f32() * b).sum::<f32>() * scale;
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if score > m {
            let old = m;
            m = score;
            ms = glibc_exp::exp(old - m);
            acc.iter_mut().for_each(|a| *a = round(*a * ms));
        } else {
            vs = glibc_exp::exp(score - m);
        }
        for (a, x) in acc.iter_mut().zip(vr) {
            *a = round(*a + x.to_f32() * vs);
        }
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = a * inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::activation::expf8;
    use super::super::float::x86::hsum;
    use super::{glibc_exp, QK};

    /// Whether heads of `hd` values suit the vector code (whole vectors of 8, at most 32 of them).
    pub fn fits(hd: usize) -> bool {
        hd > 0 && hd.is_multiple_of(8) && hd <= 256
    }

    /// 8 f16 as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load16(v: &[f16; 8]) -> __m256 {
        // SAFETY: 8 f16 are 16 bytes, one unaligned 128-bit load.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load(v: &[f32; 8]) -> __m256 {
        // SAFETY: 8 f32, one unaligned 256-bit load.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store(dst: &mut [f32; 8], v: __m256) {
        // SAFETY: 8 f32, one unaligned 256-bit store.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
    }

    /// Rounds 8 lanes to f16 precision and back.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round16(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT))
    }

    /// `k · q` summed in the order of llama.cpp's 512-bit f16 dot product: four 16-lane accumulators over
    /// chunks of 64, folded pairwise, then a tree reduction; the remainder added in f64. Bit-identical
    /// results keep greedy outputs comparable with llama.cpp (an 8-bit activation quantization
    /// downstream turns any last-bit difference into a different integer now and then).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_like_ggml(k: &[[f16; 8]], q: &[__m256]) -> f32 {
        let chunks = q.len() / 8;
        let mut acc = [_mm256_setzero_ps(); 8]; // accumulator j, half h at 2j + h
        for (kc, qc) in k.chunks_exact(8).zip(q.chunks_exact(8)).take(chunks) {
            for ((slot, kl), ql) in acc.iter_mut().zip(kc).zip(qc) {
                *slot = _mm256_fmadd_ps(load16(kl), *ql, *slot);
            }
        }
        // x0 = acc0 + acc2, x1 = acc1 + acc3, x0 += x1 (16 lanes as two halves)
        let x0 = [_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[1], acc[5])];
        let x1 = [_mm256_add_ps(acc[2], acc[6]), _mm256_add_ps(acc[3], acc[7])];
        let x = [_mm256_add_ps(x0[0], x1[0]), _mm256_add_ps(x0[1], x1[1])];
        let t3 = _mm256_add_ps(x[1], x[0]);
        let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
        let t8 = _mm_add_ps(t6, _mm_shuffle_ps(t6, t6, 0b01_00_11_10));
        let mut total = (_mm_cvtss_f32(t8) + _mm_cvtss_f32(_mm_shuffle_ps(t8, t8, 1))) as f64;
        let mut qv = [0f32; 8];
        for (kl, ql) in k.iter().zip(q).skip(chunks * 8) {
            store(&mut qv, *ql);
            for (ke, qe) in kl.iter().zip(&qv) {
                total += (ke.to_f32() * qe) as f64;
            }
        }
        total as f32
    }

    /// Keys per block of the prompt attention.
    pub const KB: usize = 64;

    /// One step of a row's online softmax over a block of scores: `sc[..kv]` become the weights
    /// `exp(score - m_new)` (the rest of the block is masked out), the row's running maximum `m` and
    /// sum `l` move on, and the factor to rescale the row's output by is returned. Both prompt
    /// attention kernels take it, so their results agree bit for bit.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn softmax_step(sc: &mut [[f32; 8]; KB / 8], kv: usize, m: &mut f32, l: &mut f32) -> f32 {
        let sc_flat = sc.as_flattened_mut();
        let block_max = sc_flat[..kv]
            .iter()
            .fold(f32::NEG_INFINITY, |x, y| x.max(*y));
        let m_new = m.max(block_max);
        let alpha = glibc_exp::exp(*m - m_new);
        for v in sc_flat[kv..].iter_mut() {
            *v = f32::NEG_INFINITY;
        }
        let mv = _mm256_set1_ps(m_new);
        let mut total = _mm256_setzero_ps();
        for c in sc.iter_mut().take(kv.div_ceil(8)) {
            let e = expf8(_mm256_sub_ps(load(c), mv));
            store(c, e);
            total = _mm256_add_ps(total, e);
        }
        *l = *l * alpha + hsum(total);
        *m = m_new;
        alpha
    }

    /// Prompt attention for query rows `rows` of head `h`, flash-attention style: keys and values are
    /// taken 64 positions at a time, converted once to f32 (keys transposed to `[head_dim][64]`, so eight
    /// scores come from one multiply-add per dimension), and every row keeps a running maximum, sum and
    /// output, rescaled when the maximum grows. The block stays in L1 while all rows use it. Panics
    /// unless `fits(head_dim)`; the caller checked the shape against the caches (`AttnShape::check`).
    ///
    /// # Safety
    /// No other task writes the outputs of rows `rows` of head `h` at the same time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_block(b: &super::F16Batch, h: usize, rows: std::ops::Range<usize>) {
        let (s, pos, scale) = (b.s, b.pos, b.scale);
        let hd = s.head_dim;
        assert!(fits(hd), "head size {hd}");
        let lanes = hd / 8;
        let n_rows = rows.len();
        let keys = pos + rows.end;
        let (k_head, v_head) = b.head(h, rows.end);
        let (k_head, _) = k_head.as_chunks::<8>();
        let (v_head, _) = v_head.as_chunks::<8>();
        let mut kt = vec![[0f32; KB]; hd];
        let mut vb = vec![[0f32; 8]; KB * lanes];
        let mut o = vec![[0f32; 8]; n_rows * lanes];
        let mut m = vec![f32::NEG_INFINITY; n_rows];
        let mut l = vec![0f32; n_rows];
        let mut sc = [[0f32; 8]; KB / 8];
        for k0 in (0..keys).step_by(KB) {
            let kn = KB.min(keys - k0);
            let k_block = k_head[k0 * lanes..(k0 + kn) * lanes].chunks_exact(lanes);
            let v_block = v_head[k0 * lanes..(k0 + kn) * lanes].chunks_exact(lanes);
            for (p, (k_pos, v_pos)) in k_block.zip(v_block).enumerate() {
                for (c, (k8, v8)) in k_pos.iter().zip(v_pos).enumerate() {
                    let mut lanes8 = [0f32; 8];
                    store(&mut lanes8, load16(k8));
                    for (e, v) in lanes8.iter().enumerate() {
                        kt[c * 8 + e][p] = *v;
                    }
                    store(&mut vb[p * lanes + c], load16(v8));
                }
            }
            for (r, i) in rows.clone().enumerate() {
                let n = pos + i + 1;
                if k0 >= n {
                    continue;
                }
                let kv = kn.min(n - k0);
                let mut acc = [_mm256_setzero_ps(); KB / 8];
                for (kt_d, qd) in kt.iter().zip(b.query(h, i)) {
                    let qd = _mm256_set1_ps(*qd);
                    for (a, k8) in acc.iter_mut().zip(kt_d.as_chunks::<8>().0) {
                        *a = _mm256_fmadd_ps(qd, load(k8), *a);
                    }
                }
                let sv = _mm256_set1_ps(scale);
                for (c, a) in sc.iter_mut().zip(&acc) {
                    store(c, _mm256_mul_ps(*a, sv));
                }
                let alpha = softmax_step(&mut sc, kv, &mut m[r], &mut l[r]);
                let orow = &mut o[r * lanes..(r + 1) * lanes];
                let w = &sc.as_flattened()[..kv];
                for (part, out) in orow.chunks_mut(8).enumerate() {
                    let first = 8 * part;
                    add_weighted(
                        out,
                        alpha,
                        Weighted {
                            w,
                            vb: &vb,
                            lanes,
                            first,
                        },
                    );
                }
            }
        }
        for ((r, i), o_row) in rows.enumerate().zip(o.chunks_exact(lanes)) {
            let inv = _mm256_set1_ps(if l[r] == 0.0 { 0.0 } else { 1.0 / l[r] });
            // SAFETY: row i of head h is this call's alone (our caller's promise).
            let dst = unsafe { b.output(h, i) };
            for (d8, o8) in dst.as_chunks_mut::<8>().0.iter_mut().zip(o_row) {
                store(d8, _mm256_mul_ps(load(o8), inv));
            }
        }
    }

    /// What `add_weighted` adds: the values `vb` (`lanes` vectors per position) weighted by `w`, from
    /// vector `first` of each position.
    struct Weighted<'a> {
        w: &'a [f32],
        vb: &'a [[f32; 8]],
        lanes: usize,
        first: usize,
    }

    /// Rescales a row's output vectors `o` (up to 8 of its head's, from vector `v.first`) by `alpha` and
    /// adds the weighted values `v`, in the order of the positions.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn add_weighted(o: &mut [[f32; 8]], alpha: f32, v: Weighted) {
        // One form per count, with the accumulators in registers: with a length known only at run time
        // they lived on the stack, each multiply-add a load and a store.
        match o.len() {
            1 => add_weighted_of::<1>(o, alpha, v),
            2 => add_weighted_of::<2>(o, alpha, v),
            3 => add_weighted_of::<3>(o, alpha, v),
            4 => add_weighted_of::<4>(o, alpha, v),
            5 => add_weighted_of::<5>(o, alpha, v),
            6 => add_weighted_of::<6>(o, alpha, v),
            7 => add_weighted_of::<7>(o, alpha, v),
            8 => add_weighted_of::<8>(o, alpha, v),
            n => panic!("{n} output vectors at once"),
        }
    }

    /// `add_weighted` for `N` output vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn add_weighted_of<const N: usize>(o: &mut [[f32; 8]], alpha: f32, v: Weighted) {
        let o: &mut [[f32; 8]; N] = o.try_into().expect("N output vectors");
        let av = _mm256_set1_ps(alpha);
        let mut acc: [__m256; N] = std::array::from_fn(|c| _mm256_mul_ps(load(&o[c]), av));
        for (w, v_pos) in v.w.iter().zip(v.vb.chunks_exact(v.lanes)) {
            let vs: &[[f32; 8]; N] = v_pos[v.first..v.first + N]
                .try_into()
                .expect("N value vectors");
            let wv = _mm256_set1_ps(*w);
            for c in 0..N {
                acc[c] = _mm256_fmadd_ps(load(&vs[c]), wv, acc[c]);
            }
        }
        for c in 0..N {
            store(&mut o[c], acc[c]);
        }
    }

    /// One query row against `keys.len() / hd` cached positions (see `attend_row_scalar`). Panics
    /// unless `fits(hd)`, the query and the output hold `hd` values and there are as many values as
    /// keys.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn attend_row(
        query: &[f32],
        keys: &[f16],
        values: &[f16],
        hd: usize,
        scale: f32,
        low_precision: bool,
        out: &mut [f32],
    ) {
        assert!(fits(hd) && query.len() == hd && out.len() == hd);
        assert_eq!(keys.len(), values.len());
        let lanes = hd / 8;
        let mut q = [_mm256_setzero_ps(); 32];
        let mut acc = [_mm256_setzero_ps(); 32];
        for (qv, v) in q.iter_mut().zip(query.as_chunks::<8>().0) {
            let v = load(v);
            *qv = if low_precision { round16(v) } else { v };
        }
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        let (k8, _) = keys.as_chunks::<8>();
        let (v8, _) = values.as_chunks::<8>();
        for (kp, vp) in k8.chunks_exact(lanes).zip(v8.chunks_exact(lanes)) {
            let score = if low_precision {
                dot_like_ggml(kp, &q[..lanes])
            } else {
                let mut dot = _mm256_setzero_ps();
                for (qv, k) in q.iter().zip(kp) {
                    dot = _mm256_fmadd_ps(load16(k), *qv, dot);
                }
                hsum(dot)
            } * scale;
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if score > m {
                let old = m;
                m = score;
                ms = glibc_exp::exp(old - m);
                let msv = _mm256_set1_ps(ms);
                for a in acc.iter_mut().take(lanes) {
                    let y = _mm256_mul_ps(*a, msv);
                    *a = if low_precision { round16(y) } else { y };
                }
            } else {
                vs = glibc_exp::exp(score - m);
            }
            let vsv = _mm256_set1_ps(vs);
            for (a, v) in acc.iter_mut().zip(vp) {
                let y = _mm256_fmadd_ps(load16(v), vsv, *a);
                *a = if low_precision { round16(y) } else { y };
            }
            sum = sum.mul_add(ms, vs);
        }
        let inv = _mm256_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
        for (o, a) in out.as_chunks_mut::<8>().0.iter_mut().zip(&acc) {
            store(o, _mm256_mul_ps(*a, inv));
        }
    }

    /// `super::attend_row_q8_scalar` on AVX2, bit for bit: the scores as llama.cpp's AVX2
    /// `ggml_vec_dot_q8_0_q8_0` computes them (per block, `|k|` times `q` with `k`'s sign in byte pairs,
    /// then pairs of pairs, so lane `j` holds the exact sum of values `4j..4j + 4`). Panics unless
    /// `fits(hd)`, `hd` is a multiple of 32, the query and the output hold `hd` values and the rows are
    /// whole rows of `hd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn attend_row_q8(
        (qq, qd): (&[i8], &[f32]),
        keys: super::Q8Rows,
        values: super::Q8Rows,
        scale: f32,
        out: &mut [f32],
    ) {
        let hd = out.len();
        let (nb, lanes) = (hd / QK, hd / 8);
        assert!(fits(hd) && hd.is_multiple_of(QK) && qq.len() == hd && qd.len() == nb);
        assert!(keys.qs.len() == values.qs.len() && keys.qs.len().is_multiple_of(hd));
        let (k_blocks, _) = keys.qs.as_chunks::<QK>();
        let (v_runs, _) = values.qs.as_chunks::<8>();
        let mut q = [_mm256_setzero_si256(); 8];
        for (qv, block) in q.iter_mut().zip(qq.as_chunks::<QK>().0) {
            *qv = load_i8x32(block);
        }
        let mut acc = [_mm256_setzero_ps(); 32];
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        let rows = k_blocks
            .chunks_exact(nb)
            .zip(keys.d.chunks_exact(nb))
            .zip(v_runs.chunks_exact(lanes).zip(values.d.chunks_exact(nb)));
        for ((kb, kd), (vr, vd)) in rows {
            let score = score_q8(kb, kd, &q[..nb], qd) * scale;
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if score > m {
                ms = glibc_exp::exp(m - score);
                m = score;
                let msv = _mm256_set1_ps(ms);
                for a in acc.iter_mut().take(lanes) {
                    *a = _mm256_mul_ps(*a, msv);
                }
            } else {
                vs = glibc_exp::exp(score - m);
            }
            let vsv = _mm256_set1_ps(vs);
            for ((a4, runs), d) in acc.chunks_exact_mut(4).zip(vr.chunks_exact(4)).zip(vd) {
                let d = _mm256_cvtph_ps(_mm_set1_epi16(d.to_bits() as i16));
                for (a, run) in a4.iter_mut().zip(runs) {
                    let x = _mm256_mul_ps(load_i8x8(run), d);
                    *a = _mm256_fmadd_ps(x, vsv, *a);
                }
            }
            sum = sum.mul_add(ms, vs);
        }
        let inv = _mm256_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
        for (o, a) in out.as_chunks_mut::<8>().0.iter_mut().zip(&acc) {
            store(o, _mm256_mul_ps(*a, inv));
        }
    }

    /// One key's score before scaling, `k · q` over the q8_0 blocks `kb` (scales `kd`) and the query's
    /// (`q`, scales `qd`), in llama.cpp's AVX2 order (see `attend_row_q8`). The 512-bit decode row takes
    /// it too, so that their scores agree bit for bit.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn score_q8(kb: &[[i8; QK]], kd: &[f16], q: &[__m256i], qd: &[f32]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut dot = _mm256_setzero_ps();
        for (((block, kd), qv), qd) in kb.iter().zip(kd).zip(q).zip(qd) {
            let x = load_i8x32(block);
            let ax = _mm256_sign_epi8(x, x);
            let sy = _mm256_sign_epi8(*qv, x);
            let pairs = _mm256_maddubs_epi16(ax, sy);
            let quads = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            dot = _mm256_fmadd_ps(_mm256_set1_ps(scale16(*kd) * qd), quads, dot);
        }
        hsum(dot)
    }

    /// An f16 scale as f32, in one instruction (`half`'s conversion checks the CPU on every call).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn scale16(d: f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d.to_bits() as i32)))
    }

    /// 32 quants.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn load_i8x32(v: &[i8; QK]) -> __m256i {
        // SAFETY: 32 bytes, one unaligned 256-bit load.
        unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
    }

    /// 8 quants as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_i8x8(v: &[i8; 8]) -> __m256 {
        // SAFETY: 8 bytes, one unaligned 64-bit load.
        let bytes = unsafe { _mm_loadl_epi64(v.as_ptr().cast()) };
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
    }
}

/// The prompt attention of `simd::attend_block` on 512-bit vectors, four query rows at a time: each block of
/// keys read from L1 serves four rows' scores, and each value vector sixteen outputs. Every score, weight
/// and output is computed with the same operations in the same order as there (one lane of a wider
/// vector is the same multiply-add), and the softmax step is the same function, so the two agree bit for
/// bit (tested); only the speed differs. The decode rows (`attend_row`, `attend_row_q8`) likewise give
/// `simd`'s results bit for bit, for heads of 64 and 128 values: the query and the output stay in
/// registers, and the scores of eight positions are computed before their values are added, so that
/// their dot products and exponentials overlap (the AVX2 rows, one position at a time, kept half of each
/// position's work waiting; decode at depth 2,000 of a 7B ran at half the memory's speed).
#[cfg(target_arch = "x86_64")]
mod simd512 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::packed::x86::prefetch_ahead;
    use super::simd::{self, softmax_step, KB};
    use super::{glibc_exp, QK};

    /// Query rows whose scores are computed together.
    const RB: usize = 4;

    /// Whether heads of `hd` values suit this code: whole 512-bit vectors, at most 16 of them.
    pub fn fits(hd: usize) -> bool {
        hd > 0 && hd.is_multiple_of(16) && hd <= 256
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(v: &[f32; 16]) -> __m512 {
        // SAFETY: 16 f32, one unaligned 512-bit load.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }

    /// 16 f16 as f32.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    fn load16(v: &[f16; 16]) -> __m512 {
        // SAFETY: 16 f16 are 32 bytes, one unaligned 256-bit load.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(v.as_ptr().cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(dst: &mut [f32; 16], v: __m512) {
        // SAFETY: 16 f32, one unaligned 512-bit store.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
    }

    /// A 16 × 16 block of f32 transposed: `out[j][i] = rows[i][j]` (pairs of rows interleaved, then
    /// quads within 128-bit lanes, then the lanes themselves in two steps).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        let t: [__m512; 16] = std::array::from_fn(|k| {
            let (a, b) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
            if k % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // u[4i + j], lane k: column 4k + j of rows 4i..4i + 4.
        let u: [__m512; 16] = std::array::from_fn(|k| {
            let (i, j) = (k / 4, k % 4);
            let (a, b) = (t[4 * i + j / 2], t[4 * i + 2 + j / 2]);
            if j % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            }
        });
        // v[j], v[8 + j]: columns j and 8 + j of rows 0..8 and 8..16; v[4 + j], v[12 + j]: 4 + j, 12 + j.
        let v: [__m512; 16] = std::array::from_fn(|k| {
            let (half, odd, j) = (k / 8, k / 4 % 2, k % 4);
            let (a, b) = (u[8 * half + j], u[8 * half + 4 + j]);
            if odd == 0 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            }
        });
        std::array::from_fn(|k| {
            let (high, odd, j) = (k / 8, k / 4 % 2, k % 4);
            let (a, b) = (v[4 * odd + j], v[8 + 4 * odd + j]);
            if high == 0 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            }
        })
    }

    /// Rescales each of up to two rows' outputs `o[i]` (vectors of 16 values) by `alpha[i]` and adds the
    /// values `vb` (`o[i].len()` vectors per position) weighted by `w[i]`, in the order of the positions
    /// (as `simd::attend_block` does for one row). The second row, when there is one (`o[1]` not
    /// empty), has at least as many weights as the first and as many vectors, at most 8.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add_weighted_pair(
        o: [&mut [[f32; 16]]; 2],
        alpha: [f32; 2],
        w: [&[f32]; 2],
        vb: &[[f32; 16]],
    ) {
        // One form per head size, with the accumulators in registers: with a length known only at run
        // time they lived on the stack, each multiply-add a load and a store (the prompt attention of a
        // 7B's layer, 32 heads of 128, 64 rows at depth 448, one thread: 9.6 ms against 6.5).
        match o[0].len() {
            1 => add_weighted_pair_of::<1>(o, alpha, w, vb),
            2 => add_weighted_pair_of::<2>(o, alpha, w, vb),
            3 => add_weighted_pair_of::<3>(o, alpha, w, vb),
            4 => add_weighted_pair_of::<4>(o, alpha, w, vb),
            5 => add_weighted_pair_of::<5>(o, alpha, w, vb),
            6 => add_weighted_pair_of::<6>(o, alpha, w, vb),
            7 => add_weighted_pair_of::<7>(o, alpha, w, vb),
            8 => add_weighted_pair_of::<8>(o, alpha, w, vb),
            9 => add_weighted_pair_of::<9>(o, alpha, w, vb),
            10 => add_weighted_pair_of::<10>(o, alpha, w, vb),
            11 => add_weighted_pair_of::<11>(o, alpha, w, vb),
            12 => add_weighted_pair_of::<12>(o, alpha, w, vb),
            13 => add_weighted_pair_of::<13>(o, alpha, w, vb),
            14 => add_weighted_pair_of::<14>(o, alpha, w, vb),
            15 => add_weighted_pair_of::<15>(o, alpha, w, vb),
            16 => add_weighted_pair_of::<16>(o, alpha, w, vb),
            lanes => panic!("heads of {lanes} vectors"),
        }
    }

    /// `add_weighted_pair` for heads of `L` vectors of 16 values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add_weighted_pair_of<const L: usize>(
        o: [&mut [[f32; 16]]; 2],
        alpha: [f32; 2],
        w: [&[f32]; 2],
        vb: &[[f32; 16]],
    ) {
        let two = !o[1].is_empty();
        assert!(!two || (o[1].len() == L && L <= 8 && w[1].len() >= w[0].len()));
        let [o0, o1] = o;
        let o0: &mut [[f32; 16]; L] = o0.try_into().expect("a head's outputs");
        let o1: Option<&mut [[f32; 16]; L]> = two.then(|| o1.try_into().expect("a head's outputs"));
        let (vb, _) = vb.as_chunks::<L>();
        let scaled = |o: &[[f32; 16]; L], alpha: f32| -> [__m512; L] {
            let av = _mm512_set1_ps(alpha);
            std::array::from_fn(|c| _mm512_mul_ps(load(&o[c]), av))
        };
        let mut acc0 = scaled(o0, alpha[0]);
        let mut acc1 = match &o1 {
            Some(o1) => scaled(o1, alpha[1]),
            None => [_mm512_setzero_ps(); L],
        };
        let both = if two { w[0].len() } else { 0 };
        for (p, v_pos) in vb.iter().take(both).enumerate() {
            let (w0, w1) = (_mm512_set1_ps(w[0][p]), _mm512_set1_ps(w[1][p]));
            for c in 0..L {
                let v = load(&v_pos[c]);
                acc0[c] = _mm512_fmadd_ps(v, w0, acc0[c]);
                acc1[c] = _mm512_fmadd_ps(v, w1, acc1[c]);
            }
        }
        // What one row sees beyond the other's keys (or, for a single row, all of it).
        let (last, acc_last) = if two { (1, &mut acc1) } else { (0, &mut acc0) };
        for (p, v_pos) in vb.iter().enumerate().take(w[last].len()).skip(both) {
            let wv = _mm512_set1_ps(w[last][p]);
            for c in 0..L {
                acc_last[c] = _mm512_fmadd_ps(load(&v_pos[c]), wv, acc_last[c]);
            }
        }
        for c in 0..L {
            store(&mut o0[c], acc0[c]);
        }
        if let Some(o1) = o1 {
            for c in 0..L {
                store(&mut o1[c], acc1[c]);
            }
        }
    }

    /// As `simd::attend_block` (same contract), on a CPU with AVX-512 F as well. Panics unless
    /// `fits(head_dim)`.
    ///
    /// # Safety
    /// No other task writes the outputs of rows `rows` of head `h` at the same time.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn attend_block(b: &super::F16Batch, h: usize, rows: std::ops::Range<usize>) {
        let (s, pos, scale) = (b.s, b.pos, b.scale);
        let hd = s.head_dim;
        assert!(fits(hd), "head size {hd}");
        let lanes = hd / 16;
        let n_rows = rows.len();
        let keys = pos + rows.end;
        let (k_head, v_head) = b.head(h, rows.end);
        // Keys transposed to [head_dim][KB], values as they are, both as f32.
        let mut kt = vec![[0f32; KB]; hd];
        let mut vb = vec![[0f32; 16]; KB * lanes];
        let mut o = vec![[0f32; 16]; n_rows * lanes];
        let mut m = vec![f32::NEG_INFINITY; n_rows];
        let mut l = vec![0f32; n_rows];
        let mut sc = [[[0f32; 8]; KB / 8]; RB];
        let (k_head, _) = k_head.as_chunks::<16>();
        let (v_head, _) = v_head.as_chunks::<16>();
        for k0 in (0..keys).step_by(KB) {
            let kn = KB.min(keys - k0);
            let k_block = k_head[k0 * lanes..(k0 + kn) * lanes].chunks_exact(lanes);
            let v_block = v_head[k0 * lanes..(k0 + kn) * lanes].chunks_exact(lanes);
            // Keys sixteen at a time by a transposition in registers, the rest one by one (a 7B's layer,
            // 64 rows at depth 1,984, one thread: 30.8 ms one value at a time, 28.6 so).
            let whole = kn / 16 * 16;
            for p0 in (0..whole).step_by(16) {
                for c in 0..lanes {
                    let rows = std::array::from_fn(|i| load16(&k_head[(k0 + p0 + i) * lanes + c]));
                    for (e, col) in transpose16(rows).into_iter().enumerate() {
                        store((&mut kt[c * 16 + e][p0..p0 + 16]).try_into().unwrap(), col);
                    }
                }
            }
            for (p, (k_pos, v_pos)) in k_block.zip(v_block).enumerate() {
                for (c, (k16, v16)) in k_pos.iter().zip(v_pos).enumerate() {
                    if p >= whole {
                        let mut lanes16 = [0f32; 16];
                        store(&mut lanes16, load16(k16));
                        for (e, v) in lanes16.iter().enumerate() {
                            kt[c * 16 + e][p] = *v;
                        }
                    }
                    store(&mut vb[p * lanes + c], load16(v16));
                }
            }
            for g0 in (0..n_rows).step_by(RB) {
                // The group's rows (the last one repeated where the block of rows ends early).
                let row = |j: usize| (g0 + j).min(n_rows - 1);
                if k0 > pos + rows.start + row(RB - 1) {
                    continue; // no row of the group sees this block
                }
                let qs: [&[f32]; RB] = std::array::from_fn(|j| b.query(h, rows.start + row(j)));
                let mut acc = [[_mm512_setzero_ps(); KB / 16]; RB];
                for (d, kt_d) in kt.iter().enumerate() {
                    let k: [__m512; KB / 16] =
                        std::array::from_fn(|c| load(kt_d[c * 16..][..16].try_into().unwrap()));
                    for (acc, q) in acc.iter_mut().zip(&qs) {
                        let qd = _mm512_set1_ps(q[d]);
                        for (a, k) in acc.iter_mut().zip(&k) {
                            *a = _mm512_fmadd_ps(qd, *k, *a);
                        }
                    }
                }
                let sv = _mm512_set1_ps(scale);
                for (sc, acc) in sc.iter_mut().zip(&acc) {
                    let flat: &mut [[f32; 16]] = sc.as_flattened_mut().as_chunks_mut::<16>().0;
                    for (c, a) in flat.iter_mut().zip(acc) {
                        store(c, _mm512_mul_ps(*a, sv));
                    }
                }
                // Weights and rescaling of the rows that see the block (kv 0: a row that does not).
                let in_group = RB.min(n_rows - g0);
                let mut kvs = [0usize; RB];
                let mut alphas = [0f32; RB];
                for (j, sc) in sc.iter_mut().enumerate().take(in_group) {
                    let r = g0 + j;
                    let n = pos + rows.start + r + 1;
                    if k0 < n {
                        kvs[j] = kn.min(n - k0);
                        alphas[j] = softmax_step(sc, kvs[j], &mut m[r], &mut l[r]);
                    }
                }
                // Outputs two rows at a time where their accumulators fit the registers, so each value
                // vector read serves both; a later row sees at least the keys an earlier one does.
                let mut j = 0;
                while j < in_group {
                    let r = g0 + j;
                    let (a, b) = o[r * lanes..].split_at_mut(lanes);
                    let w = |j: usize| &sc[j].as_flattened()[..kvs[j]];
                    if kvs[j] == 0 {
                        j += 1;
                    } else if j + 1 < in_group && lanes <= 8 {
                        let b = &mut b[..lanes];
                        add_weighted_pair(
                            [a, b],
                            [alphas[j], alphas[j + 1]],
                            [w(j), w(j + 1)],
                            &vb,
                        );
                        j += 2;
                    } else {
                        add_weighted_pair([a, &mut []], [alphas[j], 0.0], [w(j), &[]], &vb);
                        j += 1;
                    }
                }
            }
        }
        for ((r, i), o_row) in rows.enumerate().zip(o.chunks_exact(lanes)) {
            let inv = _mm512_set1_ps(if l[r] == 0.0 { 0.0 } else { 1.0 / l[r] });
            // SAFETY: row i of head h is this call's alone (our caller's promise).
            let dst = unsafe { b.output(h, i) };
            for (d16, o16) in dst.as_chunks_mut::<16>().0.iter_mut().zip(o_row) {
                store(d16, _mm512_mul_ps(load(o16), inv));
            }
        }
    }

    /// Whether `attend_row` takes heads of `hd` values: whole chunks of 64 (llama.cpp's dot product then
    /// has no remainder) and at most 128, so that the query, the output and the dot product's
    /// accumulators all stay in registers.
    pub fn fits_row(hd: usize) -> bool {
        hd == 64 || hd == 128
    }

    /// Positions whose scores are all computed before their values are added: the dot products (and
    /// the exponentials) of a block do not wait on one another, only the additions of values do.
    const PB: usize = 8;

    /// The most query rows `attend_rows` takes at once: three rows' outputs (24 vectors for heads of 128)
    /// stay in registers beside a value vector and the rows' weights.
    pub const ROWS: usize = 3;

    /// One query row of `attend_rows`: its query (`hd` values), how many of the cached positions it
    /// attends over (the first `len`), and where its output goes (`hd` values).
    pub struct Row<'a> {
        pub query: &'a [f32],
        pub len: usize,
        pub out: &'a mut [f32],
    }

    /// `simd::attend_row` with f16 numerics (decode), bit for bit for each row, on AVX-512, for up to
    /// [`ROWS`] query rows against the same cached keys and values (the heads of a group, the rows of a
    /// verification pass): each key and value is converted once for all of them, and the rows' chains of
    /// f16 roundings interleave instead of waiting on one another. Panics unless `fits_row(hd)`, there are
    /// 1 to `ROWS` rows whose queries and outputs hold `hd` values, and keys and values hold whole rows of
    /// `hd` for every row's `len`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub fn attend_rows(rows: &mut [Row], keys: &[f16], values: &[f16], scale: f32) {
        let hd = rows.first().map_or(0, |r| r.query.len());
        match (hd, rows.len()) {
            (64, 1) => attend_row_of::<4>(&mut rows[0], keys, values, scale),
            (64, 2) => attend_rows_of::<4, 2>(rows, keys, values, scale),
            (64, 3) => attend_rows_of::<4, 3>(rows, keys, values, scale),
            (128, 1) => attend_row_of::<8>(&mut rows[0], keys, values, scale),
            (128, 2) => attend_rows_of::<8, 2>(rows, keys, values, scale),
            (128, 3) => attend_rows_of::<8, 3>(rows, keys, values, scale),
            (hd, n) => panic!("{n} rows of head size {hd} for the 512-bit decode attention"),
        }
    }

    /// Asks for the keys and values `packed`'s weight prefetch distance after the block `kb`, `vb` (as
    /// many bytes as the block), so that a decoding step reads its cache at about the rate it reads the
    /// weights. Measured on the 2-vCPU Xeon (AMX), a 7B's cache of 2,000 positions (32 layers, 1.05 GB,
    /// 2 threads), the two builds taking turns: one query row per head 51.2–55.0 ms per step without,
    /// 43.5–48.3 with (1, 2, 4.6 and 8 KB ahead, into L1 or L2, all alike); two rows (`attend_positions`)
    /// 54.4–57.5 against 50.6–56.7.
    #[inline]
    fn prefetch_values(kb: &[[f16; 16]], vb: &[[f16; 16]]) {
        for block in [kb, vb] {
            prefetch_ahead(block.as_ptr().cast(), size_of_val(block), 0, 1);
        }
    }

    /// `R` rows' running softmax: their f16-rounded outputs so far (`L` vectors each), maxima and sums.
    #[derive(Clone, Copy)]
    struct RowStates<const L: usize, const R: usize> {
        acc: [[__m512; L]; R],
        m: [f32; R],
        sum: [f32; R],
    }

    impl<const L: usize, const R: usize> RowStates<L, R> {
        /// Row `r` alone.
        fn row(&self, r: usize) -> RowStates<L, 1> {
            RowStates {
                acc: [self.acc[r]],
                m: [self.m[r]],
                sum: [self.sum[r]],
            }
        }
    }

    /// How each position of a block enters a row's running softmax.
    #[derive(Clone, Copy)]
    struct Steps {
        /// Bit p: position p's score set a new maximum, so the output so far is scaled by `ms[p]` first.
        rescale: u32,
        ms: [f32; PB],
        /// The weights of the positions' values.
        vs: [f32; PB],
    }

    const NO_STEPS: Steps = Steps {
        rescale: 0,
        ms: [1.0; PB],
        vs: [1.0; PB],
    };

    /// The online softmax over a block of the first `n` positions' `scores`, as the AVX2 rows take them
    /// one position after another: where a score exceeds the maximum before it, the output so far is
    /// scaled by `e^(max - score)` and the position's values get weight 1, otherwise they get
    /// `e^(score - max)`; the sum is scaled and added to in position order. The maxima before each
    /// position are a running maximum over the block's lanes (a maximum is exact, in any order), and the
    /// eight exponentials are computed at once (`glibc_exp::exp8`, bit for bit the AVX2 rows' `exp`);
    /// only the sum's multiply-adds go one position at a time. `m` and `sum` move on to the block's end.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn softmax_steps(scores: &[f32; PB], n: usize, m: &mut f32, sum: &mut f32) -> Steps {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        // SAFETY: 8 f32, one unaligned 256-bit load.
        let s = _mm256_blendv_ps(
            ninf,
            unsafe { _mm256_loadu_ps(scores.as_ptr()) },
            _mm256_castsi256_ps(valid),
        );
        // Lanes moved up by `by`, the first `by` lanes -inf.
        let up = |x: __m256, by: i32| {
            let from = _mm256_sub_epi32(lanes, _mm256_set1_epi32(by));
            let moved = _mm256_permutevar8x32_ps(x, from);
            _mm256_blendv_ps(
                ninf,
                moved,
                _mm256_castsi256_ps(_mm256_cmpgt_epi32(from, _mm256_set1_epi32(-1))),
            )
        };
        let mut through = s;
        for by in [1, 2, 4] {
            through = _mm256_max_ps(through, up(through, by));
        }
        let before = _mm256_max_ps(up(through, 1), _mm256_set1_ps(*m));
        let rescale = _mm256_cmp_ps::<_CMP_GT_OQ>(s, before);
        let arg = _mm256_blendv_ps(_mm256_sub_ps(s, before), _mm256_sub_ps(before, s), rescale);
        let e = glibc_exp::exp8(arg);
        let one = _mm256_set1_ps(1.0);
        let mut steps = Steps {
            rescale: _mm256_movemask_ps(rescale) as u32,
            ms: [1.0; PB],
            vs: [1.0; PB],
        };
        let (ms, vs) = (
            _mm256_blendv_ps(one, e, rescale),
            _mm256_blendv_ps(e, one, rescale),
        );
        // SAFETY: 8 f32, one unaligned 256-bit store.
        unsafe { _mm256_storeu_ps(steps.ms.as_mut_ptr(), ms) };
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(steps.vs.as_mut_ptr(), vs) };
        for (ms, vs) in steps.ms.iter().zip(&steps.vs).take(n) {
            *sum = sum.mul_add(*ms, *vs);
        }
        let mut maxima = [0f32; PB];
        let through = _mm256_max_ps(through, _mm256_set1_ps(*m));
        // SAFETY: 8 f32, one unaligned 256-bit store.
        unsafe { _mm256_storeu_ps(maxima.as_mut_ptr(), through) };
        if n > 0 {
            *m = maxima[n - 1];
        }
        steps
    }

    /// `attend_rows` for `R` rows and heads of `L` vectors of 16 values: the positions every row attends
    /// over together, then each row's own last ones alone.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn attend_rows_of<const L: usize, const R: usize>(
        rows: &mut [Row],
        keys: &[f16],
        values: &[f16],
        scale: f32,
    ) {
        let hd = L * 16;
        assert!(rows.len() == R && keys.len() == values.len());
        for row in rows.iter() {
            assert!(row.query.len() == hd && row.out.len() == hd && row.len * hd <= keys.len());
        }
        let q: [[__m512; L]; R] = std::array::from_fn(|r| {
            let query = rows[r].query.as_chunks::<16>().0;
            std::array::from_fn(|i| round16(load(&query[i])))
        });
        let mut state = RowStates {
            acc: [[_mm512_setzero_ps(); L]; R],
            m: [f32::NEG_INFINITY; R],
            sum: [0.0; R],
        };
        let (k16, _) = keys.as_chunks::<16>();
        let (v16, _) = values.as_chunks::<16>();
        let common = rows.iter().map(|r| r.len).min().unwrap_or(0) * L;
        attend_positions(&q, &mut state, &k16[..common], &v16[..common], scale);
        for (r, row) in rows.iter_mut().enumerate() {
            let own = common..row.len * L;
            let mut alone = state.row(r);
            attend_positions(&[q[r]], &mut alone, &k16[own.clone()], &v16[own], scale);
            let sum = alone.sum[0];
            let inv = _mm512_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
            for (o, a) in row
                .out
                .as_chunks_mut::<16>()
                .0
                .iter_mut()
                .zip(&alone.acc[0])
            {
                store(o, _mm512_mul_ps(*a, inv));
            }
        }
    }

    /// `attend_rows` for one row and heads of `L` vectors of 16 values, in one loop: each block's scores
    /// one position at a time, its softmax by `softmax_steps`, then its values, added here rather than
    /// by `add_values`. Measured for one row with a 7B's cache coming from memory (depth 2,000, 2
    /// threads): through `attend_positions` it took two thirds longer (1.2 against 0.72 ms per layer),
    /// and this loop with its values added by a call to `add_values` (not inlined) a quarter to a half
    /// longer (0.68–0.84 against 0.54 ms); with the cache in L3 all ran alike.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn attend_row_of<const L: usize>(row: &mut Row, keys: &[f16], values: &[f16], scale: f32) {
        let hd = L * 16;
        assert!(row.query.len() == hd && row.out.len() == hd && keys.len() == values.len());
        assert!(row.len * hd <= keys.len());
        let query = row.query.as_chunks::<16>().0;
        let q: [[__m512; L]; 1] = [std::array::from_fn(|i| round16(load(&query[i])))];
        let mut acc = [_mm512_setzero_ps(); L];
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        let (k16, _) = keys[..row.len * hd].as_chunks::<16>();
        let (v16, _) = values[..row.len * hd].as_chunks::<16>();
        for (kb, vb) in k16.chunks(PB * L).zip(v16.chunks(PB * L)) {
            prefetch_values(kb, vb);
            let mut scores = [0f32; PB];
            for (sc, k) in scores.iter_mut().zip(kb.chunks_exact(L)) {
                let [dot] = dot_like_ggml(k, &q);
                *sc = reduce_like_ggml(dot) * scale;
            }
            let steps = softmax_steps(&scores, kb.len() / L, &mut m, &mut sum);
            for (p, v) in vb.chunks_exact(L).enumerate() {
                if steps.rescale >> p & 1 != 0 {
                    let msv = _mm512_set1_ps(steps.ms[p]);
                    for a in acc.iter_mut() {
                        *a = round16(_mm512_mul_ps(*a, msv));
                    }
                }
                let vsv = _mm512_set1_ps(steps.vs[p]);
                for (a, v) in acc.iter_mut().zip(v) {
                    *a = round16(_mm512_fmadd_ps(load16(v), vsv, *a));
                }
            }
        }
        let inv = _mm512_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
        for (o, a) in row.out.as_chunks_mut::<16>().0.iter_mut().zip(&acc) {
            store(o, _mm512_mul_ps(*a, inv));
        }
    }

    /// `R` rows' softmax and outputs move on over the positions of `k16` and `v16` (`L` vectors each),
    /// one position after another per row as `simd::attend_row` takes them, `PB` positions at a time: the
    /// block's scores first (each key converted once for all rows), then its values.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn attend_positions<const L: usize, const R: usize>(
        q: &[[__m512; L]; R],
        state: &mut RowStates<L, R>,
        k16: &[[f16; 16]],
        v16: &[[f16; 16]],
        scale: f32,
    ) {
        // The next block's scores come before this block's values: its keys are then asked for while
        // the values' chains of f16 roundings, which wait on one another, run (bit for bit the same: the
        // softmax's state does not depend on the outputs).
        let mut pending: Option<([Steps; R], &[[f16; 16]])> = None;
        for (kb, vb) in k16.chunks(PB * L).zip(v16.chunks(PB * L)) {
            prefetch_values(kb, vb);
            let n = kb.len() / L;
            let scores = block_scores::<L, R>(kb, q, scale);
            let mut steps = [NO_STEPS; R];
            for (r, steps) in steps.iter_mut().enumerate() {
                *steps = softmax_steps(&scores[r], n, &mut state.m[r], &mut state.sum[r]);
            }
            if let Some((steps, vb)) = pending.replace((steps, vb)) {
                add_values(&mut state.acc, &steps, vb);
            }
        }
        if let Some((steps, vb)) = pending {
            add_values(&mut state.acc, &steps, vb);
        }
    }

    /// The values of up to `PB` positions (`L` vectors each) added to `R` rows' outputs `acc` as their
    /// softmax `steps` say, in the order of the positions. Not inlined: its caller's scores would keep
    /// registers the outputs need, and the outputs, moved to memory and back on every update, would
    /// add a store and a load to each rounding's chain; here they stay in registers for the block.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn add_values<const L: usize, const R: usize>(
        acc: &mut [[__m512; L]; R],
        steps: &[Steps; R],
        vb: &[[f16; 16]],
    ) {
        let mut a = *acc;
        for (p, v) in vb.chunks_exact(L).enumerate() {
            let mut weights = [_mm512_setzero_ps(); R];
            for ((a, steps), w) in a.iter_mut().zip(steps).zip(&mut weights) {
                if steps.rescale >> p & 1 != 0 {
                    let msv = _mm512_set1_ps(steps.ms[p]);
                    for a in a.iter_mut() {
                        *a = round16(_mm512_mul_ps(*a, msv));
                    }
                }
                *w = _mm512_set1_ps(steps.vs[p]);
            }
            for (i, v) in v.iter().enumerate() {
                let v = load16(v);
                for (a, w) in a.iter_mut().zip(&weights) {
                    a[i] = round16(_mm512_fmadd_ps(v, *w, a[i]));
                }
            }
        }
        *acc = a;
    }

    /// `simd::attend_row_q8`, bit for bit, on AVX-512: the scores as there (`simd::score_q8`), the
    /// softmax and the weighted sum of values in blocks of positions as `attend_positions` does. Panics
    /// unless `fits_row(hd)`, the query and the output hold `hd` values and the rows are whole rows of
    /// `hd`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub fn attend_row_q8(
        query: (&[i8], &[f32]),
        keys: super::Q8Rows,
        values: super::Q8Rows,
        scale: f32,
        out: &mut [f32],
    ) {
        match out.len() {
            64 => attend_row_q8_of::<4>(query, keys, values, scale, out),
            128 => attend_row_q8_of::<8>(query, keys, values, scale, out),
            hd => panic!("head size {hd} for the 512-bit decode attention"),
        }
    }

    /// `attend_row_q8` for heads of `L` vectors of 16 values (`L / 2` blocks of 32).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn attend_row_q8_of<const L: usize>(
        (qq, qd): (&[i8], &[f32]),
        keys: super::Q8Rows,
        values: super::Q8Rows,
        scale: f32,
        out: &mut [f32],
    ) {
        let (hd, nb) = (L * 16, L / 2);
        assert!(out.len() == hd && qq.len() == hd && qd.len() == nb);
        assert!(keys.qs.len() == values.qs.len() && keys.qs.len().is_multiple_of(hd));
        assert!(keys.d.len() * QK == keys.qs.len() && values.d.len() * QK == values.qs.len());
        // At most 4 blocks (`fits_row`): in registers, not a buffer allocated per row.
        let blocks = qq.as_chunks::<QK>().0;
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            blocks
                .get(i)
                .map_or(_mm256_setzero_si256(), |b| simd::load_i8x32(b))
        });
        let mut acc = [_mm512_setzero_ps(); L];
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        let (k32, _) = keys.qs.as_chunks::<QK>();
        let (v16, _) = values.qs.as_chunks::<16>();
        let positions = k32
            .chunks(PB * nb)
            .zip(keys.d.chunks(PB * nb))
            .zip(v16.chunks(PB * L).zip(values.d.chunks(PB * nb)));
        for ((kb, kd), (vb, vd)) in positions {
            let mut scores = [0f32; PB];
            for (sc, (k, d)) in scores
                .iter_mut()
                .zip(kb.chunks_exact(nb).zip(kd.chunks_exact(nb)))
            {
                *sc = simd::score_q8(k, d, &q[..nb], qd) * scale;
            }
            let n = kb.len() / nb;
            let steps = softmax_steps(&scores, n, &mut m, &mut sum);
            for (p, (v, d)) in vb.chunks_exact(L).zip(vd.chunks_exact(nb)).enumerate() {
                if steps.rescale >> p & 1 != 0 {
                    let msv = _mm512_set1_ps(steps.ms[p]);
                    for a in acc.iter_mut() {
                        *a = _mm512_mul_ps(*a, msv);
                    }
                }
                let vsv = _mm512_set1_ps(steps.vs[p]);
                for ((a2, v2), d) in acc.chunks_exact_mut(2).zip(v.chunks_exact(2)).zip(d) {
                    let d = _mm512_set1_ps(simd::scale16(*d));
                    for (a, v) in a2.iter_mut().zip(v2) {
                        let x = _mm512_mul_ps(load_i8x16(v), d);
                        *a = _mm512_fmadd_ps(x, vsv, *a);
                    }
                }
            }
        }
        let inv = _mm512_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
        for (o, a) in out.as_chunks_mut::<16>().0.iter_mut().zip(&acc) {
            store(o, _mm512_mul_ps(*a, inv));
        }
    }

    /// 16 quants as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_i8x16(v: &[i8; 16]) -> __m512 {
        // SAFETY: 16 bytes, one unaligned 128-bit load.
        let bytes = unsafe { _mm_loadu_si128(v.as_ptr().cast()) };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
    }

    /// Rounds 16 lanes to f16 precision and back.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    fn round16(x: __m512) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
    }

    /// The scores of up to `PB` positions (keys of `L` vectors in `kb`) for `R` queries: `simd::dot_like_ggml`
    /// bit for bit, times `scale`. Each position's products (`dot_like_ggml`) are folded, and the eight
    /// positions' folded vectors are reduced together (`reduce8_like_ggml`).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn block_scores<const L: usize, const R: usize>(
        kb: &[[f16; 16]],
        q: &[[__m512; L]; R],
        scale: f32,
    ) -> [[f32; PB]; R] {
        let mut folded = [[_mm512_setzero_ps(); PB]; R];
        for (p, k) in kb.chunks_exact(L).enumerate() {
            for (f, a) in folded.iter_mut().zip(dot_like_ggml(k, q)) {
                f[p] = fold_like_ggml(a);
            }
        }
        let scale = _mm256_set1_ps(scale);
        let mut scores = [[0f32; PB]; R];
        for (sc, f) in scores.iter_mut().zip(folded) {
            let v = _mm256_mul_ps(reduce8_like_ggml(f), scale);
            // SAFETY: 8 f32, one unaligned 256-bit store.
            unsafe { _mm256_storeu_ps(sc.as_mut_ptr(), v) };
        }
        scores
    }

    /// `simd::dot_like_ggml` of one key with each of `R` queries, before the reduction: each product's
    /// four 16-lane accumulators, whole registers here. Each vector of the key is converted once for all
    /// queries.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn dot_like_ggml<const L: usize, const R: usize>(
        k: &[[f16; 16]],
        q: &[[__m512; L]; R],
    ) -> [[__m512; 4]; R] {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for (c, kc) in k.chunks_exact(4).enumerate() {
            for (j, k) in kc.iter().enumerate() {
                let k = load16(k);
                for (a, q) in acc.iter_mut().zip(q) {
                    a[j] = _mm512_fmadd_ps(k, q[4 * c + j], a[j]);
                }
            }
        }
        acc
    }

    /// `dot_like_ggml`'s four accumulators folded pairwise into one, in `simd::dot_like_ggml`'s order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold_like_ggml(acc: [__m512; 4]) -> __m512 {
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]))
    }

    /// `dot_like_ggml`'s accumulators folded (`fold_like_ggml`), then reduced as a tree, in
    /// `simd::dot_like_ggml`'s order.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn reduce_like_ggml(acc: [__m512; 4]) -> f32 {
        let x = fold_like_ggml(acc);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
        let t3 = _mm256_add_ps(hi, _mm512_castps512_ps256(x));
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let t8 = _mm_add_ps(t6, _mm_shuffle_ps::<0b01_00_11_10>(t6, t6));
        _mm_cvtss_f32(t8) + _mm_cvtss_f32(_mm_shuffle_ps::<1>(t8, t8))
    }

    /// The 16 lanes of each of eight vectors summed as `simd::dot_like_ggml` sums its folded accumulator:
    /// lane i with lane i + 8, then i with i + 4, i with i + 2, then lane 0 with lane 1; here for all
    /// eight vectors at once, two to four of them to a register (addition is commutative, so the
    /// operands' order within each sum does not matter). Lane p of the result is vector p's sum.
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    fn reduce8_like_ggml(x: [__m512; PB]) -> __m256 {
        // Halves of 8 lanes: vectors 2j and 2j + 1 in y[j].
        let y: [__m512; 4] = std::array::from_fn(|j| {
            let (a, b) = (x[2 * j], x[2 * j + 1]);
            let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
            let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
            _mm512_add_ps(hi, lo)
        });
        // Quarters of 4 lanes: vectors 4j..4j + 4 in z[j], one per 128-bit block.
        let z: [__m512; 2] = std::array::from_fn(|j| {
            let (a, b) = (y[2 * j], y[2 * j + 1]);
            let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
            let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b);
            _mm512_add_ps(hi, lo)
        });
        // Pairs: block k holds vector k's two sums, then vector k + 4's.
        let lo = _mm512_shuffle_ps::<0b01_00_01_00>(z[0], z[1]);
        let hi = _mm512_shuffle_ps::<0b11_10_11_10>(z[0], z[1]);
        let t = _mm512_add_ps(lo, hi);
        // Totals: block k holds vectors k and k + 4 in lanes 0 and 1.
        let even = _mm512_shuffle_ps::<0b10_00_10_00>(t, t);
        let odd = _mm512_shuffle_ps::<0b11_01_11_01>(t, t);
        let total = _mm512_add_ps(even, odd);
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(order, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl KvLayer {
        /// Cached key (or value) number `i`, as the kernels read it.
        fn value(&self, key: bool, i: usize) -> f32 {
            match &self.data {
                KvData::F16 { k, v } => f16::from_bits(if key { k[i] } else { v[i] }).to_f32(),
                KvData::Q8_0 { k, v } => {
                    let c = if key { k } else { v };
                    c.qs[i] as f32 * f16::from_bits(c.d[i / QK]).to_f32()
                }
            }
        }
    }

    fn val(i: usize) -> f32 {
        ((i * 7919 % 113) as f32 - 56.0) / 40.0
    }

    /// A shape with `n_head` 4, `n_kv_head` 2 and head size `hd`, with `spare` unused positions, a cache
    /// of `ty` holding varied keys and values at positions `0..pos + seq` (stored as one batch), and
    /// queries for `seq` rows, head-major.
    fn case(
        ty: KvType,
        pos: usize,
        seq: usize,
        hd: usize,
        spare: usize,
    ) -> (AttnShape, KvLayer, Vec<f32>) {
        let s = AttnShape {
            n_head: 4,
            n_kv_head: 2,
            head_dim: hd,
            capacity: pos + seq + spare,
        };
        let n = pos + seq;
        let k: Vec<f32> = (0..s.n_kv_head * n * hd).map(val).collect();
        let v: Vec<f32> = (0..k.len()).map(|i| val(i + 5)).collect();
        let q = (0..s.n_head * seq * hd).map(|i| val(i + 11)).collect();
        let mut cache = KvLayer::zeroed(ty, s.n_kv_head * s.capacity * hd);
        store(&mut cache, &k, &v, Layout::HeadMajor, s, 0, n);
        (s, cache, q)
    }

    fn run(
        exec: Exec,
        q: &[f32],
        cache: &KvLayer,
        s: AttnShape,
        pos: usize,
        seq: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; seq * s.n_head * s.head_dim];
        attend(exec, q, Layout::HeadMajor, cache, s, pos, seq, &mut out);
        out
    }

    /// The 512-bit prompt attention gives the AVX2 kernel's results bit for bit (the AVX2 one is what
    /// CPUs without AVX-512 run; both are checked against the reference through `attend` on such CPUs).
    #[test]
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    fn prompt_attention_is_the_same_on_512_bit_vectors() {
        if !super::super::cpu::has_avx512_vnni() {
            eprintln!("SKIPPED: no AVX-512 on this CPU (or capped by CODELLAMA_LSP_CPU)");
            return;
        }
        for hd in [48, 64, 128, 256] {
            for (pos, seq) in [(0, 64), (10, 70), (100, 37), (3, 131)] {
                let (s, cache, q) = case(KvType::F16, pos, seq, hd, 3);
                let KvData::F16 { k, v } = &cache.data else {
                    unreachable!("an f16 cache")
                };
                let (k, v): (&[f16], &[f16]) = (k.reinterpret_cast(), v.reinterpret_cast());
                let run = |wide: bool| {
                    let mut out = vec![f32::NAN; seq * s.n_head * hd];
                    let shared = SharedOut::new(&mut out);
                    let blocks = F16Batch::new(&q, Layout::HeadMajor, k, v, s, pos, seq, shared);
                    for h in 0..s.n_head {
                        for b in 0..seq.div_ceil(BLOCK_ROWS) {
                            let rows = b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(seq);
                            if wide {
                                // SAFETY: the CPU has AVX-512 F, AVX2, FMA and F16C (checked above), the
                                // shape fits the cache (`case`), and the calls run one at a time.
                                unsafe { simd512::attend_block(&blocks, h, rows) }
                            } else {
                                // SAFETY: as above.
                                unsafe { simd::attend_block(&blocks, h, rows) }
                            }
                        }
                    }
                    out
                };
                let (narrow, wide) = (run(false), run(true));
                assert!(
                    narrow.iter().all(|x| x.is_finite()),
                    "hd {hd} pos {pos} seq {seq}"
                );
                let same = narrow
                    .iter()
                    .zip(&wide)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "hd {hd} pos {pos} seq {seq}");
            }
        }
    }

    /// The 512-bit decode attention gives the AVX2 kernel's results bit for bit for each of one to three
    /// rows taken together, over depths that end inside and at the edge of its blocks of positions, rows
    /// that attend over as many positions and over different numbers of them (in any order), with keys
    /// whose scores now and then set a new maximum mid-block (a rescale) and keys that grow, so that every
    /// position does.
    #[test]
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    fn decode_attention_is_the_same_on_512_bit_vectors() {
        if !super::super::cpu::has_avx512_vnni() {
            eprintln!("SKIPPED: no AVX-512 on this CPU (or capped by CODELLAMA_LSP_CPU)");
            return;
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for hd in [64, 128] {
            let queries: Vec<Vec<f32>> = (0..simd512::ROWS)
                .map(|r| (0..hd).map(|i| val(i + 11 + 3 * r)).collect())
                .collect();
            for n in [1, 7, 8, 9, 16, 100, 1000] {
                for growing in [false, true] {
                    let key = |i: usize| {
                        let x = val(i);
                        if growing {
                            x.abs() * (1.0 + (i / hd) as f32 / 8.0)
                        } else {
                            x
                        }
                    };
                    let positions = n + 9;
                    let keys: Vec<f16> =
                        (0..positions * hd).map(|i| f16::from_f32(key(i))).collect();
                    let values: Vec<f16> = (0..positions * hd)
                        .map(|i| f16::from_f32(val(i + 5)))
                        .collect();
                    let scale = 1.0 / (hd as f32).sqrt();
                    let narrow = |r: usize, len: usize| {
                        let mut out = vec![f32::NAN; hd];
                        let (k, v) = (&keys[..len * hd], &values[..len * hd]);
                        // SAFETY: the CPU has AVX2, FMA and F16C (it has AVX-512 VNNI, checked above).
                        unsafe { simd::attend_row(&queries[r], k, v, hd, scale, true, &mut out) };
                        assert!(out.iter().all(|x| x.is_finite()), "hd {hd} len {len}");
                        out
                    };
                    for lens in [
                        &[n][..],
                        &[n, n],
                        &[n, n, n],
                        &[n + 1, n],
                        &[n, n + 9, n + 2],
                    ] {
                        let mut outs = vec![vec![f32::NAN; hd]; lens.len()];
                        let mut rows: Vec<simd512::Row> = outs
                            .iter_mut()
                            .zip(lens)
                            .enumerate()
                            .map(|(r, (out, &len))| simd512::Row {
                                query: &queries[r],
                                len,
                                out,
                            })
                            .collect();
                        // SAFETY: the CPU has AVX-512 F, AVX2, FMA and F16C (checked above).
                        unsafe { simd512::attend_rows(&mut rows, &keys, &values, scale) };
                        for (r, (out, &len)) in outs.iter().zip(lens).enumerate() {
                            assert_eq!(
                                bits(&narrow(r, len)),
                                bits(out),
                                "hd {hd} row {r} of lengths {lens:?} growing {growing}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Against a plain softmax(qkᵀ/√d)·v in f64 on the keys and values as cached (and for q8_0, on the
    /// query as quantized).
    #[test]
    fn matches_reference_softmax_attention() {
        // Short batches (decode numerics) and long ones (the two-pass prompt path); smaller ones under
        // Miri, which interprets every f16 conversion.
        let long = if cfg!(miri) { (0, TILE_ROWS) } else { (10, 70) };
        for ty in [KvType::F16, KvType::Q8_0] {
            for hd in [32, 64] {
                for (pos, seq) in [(3, 5), long] {
                    check_against_reference(ty, pos, seq, hd);
                }
            }
        }
    }

    fn check_against_reference(ty: KvType, pos: usize, seq: usize, hd: usize) {
        let (s, cache, q) = case(ty, pos, seq, hd, 3);
        let out = run(Exec::Rayon, &q, &cache, s, pos, seq);
        // A q8_0 cache holds rotated keys and values: the reference takes the query rotated and
        // quantized as the kernel does, and rotates its result back.
        let (q, out_rotation) = match ty {
            KvType::F16 => (q, None),
            KvType::Q8_0 => {
                let a = Q8Act::quantize(&rotated(&q, key_rotation(hd)), q.len() / hd, hd);
                let d: Vec<f32> = (0..a.m()).flat_map(|r| a.d(r).to_vec()).collect();
                let q = a.quants().iter().enumerate();
                (
                    q.map(|(i, x)| *x as f32 * d[i / QK]).collect(),
                    value_rotation(hd),
                )
            }
        };
        for h in 0..s.n_head {
            let base = h / 2 * s.capacity * hd;
            for i in 0..seq {
                let want = exact_row(&q[(h * seq + i) * hd..][..hd], &cache, base, pos + i + 1);
                let want = rotated(&want, out_rotation);
                for (d, want) in want.iter().enumerate() {
                    let got = out[(i * s.n_head + h) * hd + d];
                    assert!(
                        (got - want).abs() < 5e-3,
                        "{ty:?} hd {hd} h{h} i{i} d{d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// softmax(q·kᵀ/√d)·v in f64 over the `n` cached positions from `base` (as cached: rotated for q8_0).
    fn exact_row(q: &[f32], cache: &KvLayer, base: usize, n: usize) -> Vec<f32> {
        let hd = q.len();
        let scores: Vec<f64> = (0..n)
            .map(|p| {
                (0..hd)
                    .map(|d| cache.value(true, base + p * hd + d) as f64 * q[d] as f64)
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
        let w: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
        let z: f64 = w.iter().sum();
        (0..hd)
            .map(|d| {
                let v = (0..n).map(|p| w[p] / z * cache.value(false, base + p * hd + d) as f64);
                v.sum::<f64>() as f32
            })
            .collect()
    }

    /// q8_0 attention stays within the error its rounding allows of exact attention over the f16 cache's
    /// keys and values, and so of f16 attention. q8_0 rounds rotated values: each is within
    /// `e = max|x| / 254` of the rotated original (half a step of its block), so a score moves by at most
    /// `Δ = Σ (|q| e_k + |k| e_q + e_k e_q) / √d`, the softmax weights by at most a factor `exp(±2Δ)`, and
    /// the rotated output by at most `(exp(2Δ) − 1) · max|v| + e_v`. Against the f16 kernel add its own
    /// error, within 5e-3 of exact per value (`matches_reference_softmax_attention`), at most √64 times
    /// that after the rotation.
    #[test]
    fn q8_0_is_within_its_rounding_of_f16() {
        let hd = 64;
        let cases: &[(usize, usize)] = if cfg!(miri) {
            &[(3, 5)]
        } else {
            &[(3, 5), (200, 1), (40, 70)]
        };
        for &(pos, seq) in cases {
            let (s, f16_cache, q) = case(KvType::F16, pos, seq, hd, 0);
            let (_, q8_cache, _) = case(KvType::Q8_0, pos, seq, hd, 0);
            let f16_out = run(Exec::Rayon, &q, &f16_cache, s, pos, seq);
            let got = run(Exec::Rayon, &q, &q8_cache, s, pos, seq);
            let values = s.n_kv_head * s.capacity * hd;
            let cached = |key: bool| -> Vec<f32> {
                let x: Vec<f32> = (0..values).map(|j| f16_cache.value(key, j)).collect();
                let rotation = if key {
                    key_rotation(hd)
                } else {
                    value_rotation(hd)
                };
                rotated(&x, rotation).into_owned()
            };
            let (keys, vals) = (cached(true), cached(false));
            let q_rot = rotated(&q, key_rotation(hd));
            // Half a quantization step of the block holding value `i` of `x`.
            let step = |x: &[f32], i: usize| {
                let b = i / QK * QK;
                x[b..b + QK].iter().fold(0f32, |m, v| m.max(v.abs())) / 254.0
            };
            for h in 0..s.n_head {
                let base = h / 2 * s.capacity * hd;
                for i in 0..seq {
                    let qo = (h * seq + i) * hd;
                    let n = pos + i + 1;
                    let delta = (0..n)
                        .map(|p| {
                            let k0 = base + p * hd;
                            let per_value = (0..hd).map(|d| {
                                let (ek, eq) = (step(&keys, k0 + d), step(&q_rot[qo..qo + hd], d));
                                q_rot[qo + d].abs() * ek + keys[k0 + d].abs() * eq + ek * eq
                            });
                            per_value.sum::<f32>() * s.scale()
                        })
                        .fold(0f32, f32::max);
                    let history = base..base + n * hd;
                    let v_max = vals[history.clone()]
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs()));
                    let e_v = history.map(|j| step(&vals, j)).fold(0f32, f32::max);
                    let bound = ((2.0 * delta).exp() - 1.0) * v_max + e_v + 1e-4;
                    let exact = exact_row(&q[qo..qo + hd], &f16_cache, base, n);
                    let o = (i * s.n_head + h) * hd..(i * s.n_head + h + 1) * hd;
                    let rot = |x: &[f32]| rotated(x, value_rotation(hd)).into_owned();
                    let (got, f16_out) = (rot(&got[o.clone()]), rot(&f16_out[o]));
                    for (d, ((g, e), f)) in got.iter().zip(rot(&exact)).zip(f16_out).enumerate() {
                        let what = format!("pos {pos} seq {seq} h{h} i{i} d{d}: q8_0 {g}");
                        assert!((g - e).abs() <= bound, "{what}, exact {e} (bound {bound})");
                        let bound = bound + 8.0 * 5e-3;
                        assert!((g - f).abs() <= bound, "{what}, f16 {f} (bound {bound})");
                    }
                }
            }
        }
    }

    /// The rotation is orthonormal and its own inverse, and spreads a lone spike over the whole run.
    #[test]
    fn the_rotation_is_its_own_inverse() {
        let x: Vec<f32> = (0..128).map(val).collect();
        let mut y = x.clone();
        rotate(&mut y, 64);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&y) - norm(&x)).abs() < 1e-4 * norm(&x));
        rotate(&mut y, 64);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-6));
        let mut spike = vec![0f32; 64];
        spike[5] = 64.0;
        rotate(&mut spike, 64);
        assert!(spike.iter().all(|v| v.abs() == 8.0));
        assert_eq!(
            (
                key_rotation(64),
                key_rotation(128),
                key_rotation(96),
                key_rotation(32)
            ),
            (Some(64), Some(128), None, None)
        );
        assert_eq!((value_rotation(128), value_rotation(32)), (Some(64), None));
    }

    /// The scalar and the AVX2 q8_0 rows agree bit for bit, for every head size the vector code takes and
    /// histories from one position to several hundred; so does the 512-bit row, for the head sizes it
    /// takes (and histories ending inside and at the edge of its blocks of positions).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn q8_0_rows_are_the_same_in_scalar_and_simd() {
        if !super::super::cpu::has_avx2() {
            eprintln!("skipped: no AVX2 on this CPU (or capped by CODELLAMA_LSP_CPU)");
            return;
        }
        let wide = super::super::cpu::has_avx512_vnni() && !cfg!(miri);
        if !wide {
            eprintln!(
                "SKIPPED the 512-bit rows: no AVX-512 on this CPU (or capped by CODELLAMA_LSP_CPU)"
            );
        }
        let lengths: &[usize] = if cfg!(miri) {
            &[1, 3]
        } else {
            &[1, 7, 8, 9, 16, 300]
        };
        for hd in [32, 64, 128, 256] {
            for &n in lengths {
                let (s, cache, q) = case(KvType::Q8_0, n - 1, 1, hd, 0);
                let KvData::Q8_0 { k, v } = &cache.data else {
                    unreachable!("a q8_0 cache")
                };
                let queries = Q8Act::quantize(&q, s.n_head, hd);
                for h in 0..s.n_head {
                    let query = (queries.row(h), queries.d(h));
                    let (keys, values) = (k.rows(h / 2 * n, n, hd), v.rows(h / 2 * n, n, hd));
                    let (mut scalar, mut vector) = (vec![0f32; hd], vec![0f32; hd]);
                    attend_row_q8_scalar(query, keys, values, s.scale(), &mut scalar);
                    // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
                    unsafe { simd::attend_row_q8(query, keys, values, s.scale(), &mut vector) };
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&scalar), bits(&vector), "hd {hd} n {n} h{h}");
                    if wide && simd512::fits_row(hd) {
                        let mut wider = vec![0f32; hd];
                        // SAFETY: the CPU has AVX-512 F, AVX2, FMA and F16C (checked above).
                        unsafe {
                            simd512::attend_row_q8(query, keys, values, s.scale(), &mut wider)
                        };
                        assert_eq!(bits(&scalar), bits(&wider), "512-bit, hd {hd} n {n} h{h}");
                    }
                }
            }
        }
    }

    /// Caches shorter than the shape says, positions past the capacity, head sizes the cache type cannot
    /// hold and short outputs are refused before the kernels (which index the cache without checks) run:
    /// for decode and prompt batches alike.
    #[test]
    fn caches_that_do_not_fit_the_shape_are_refused() {
        // Small heads and a short history under Miri, which interprets every f16 conversion.
        let (hd, long) = if cfg!(miri) {
            (32, (0, TILE_ROWS))
        } else {
            (64, (10, 70))
        };
        for ty in [KvType::F16, KvType::Q8_0] {
            for (pos, seq) in [(3, 5), long] {
                let (s, cache, q) = case(ty, pos, seq, hd, 0);
                let mut out = vec![0f32; q.len()];
                let attend_with = |cache: &KvLayer, s: AttnShape, out: &mut [f32]| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        attend(Exec::Rayon, &q, Layout::HeadMajor, cache, s, pos, seq, out)
                    }))
                };
                let what = format!("{ty:?}, seq {seq}");
                let short = KvLayer::zeroed(ty, s.n_kv_head * s.capacity * hd - QK);
                assert!(attend_with(&short, s, &mut out).is_err(), "short, {what}");
                let small = AttnShape {
                    capacity: pos + seq - 1,
                    ..s
                };
                assert!(
                    attend_with(&cache, small, &mut out).is_err(),
                    "capacity, {what}"
                );
                let odd = AttnShape { n_kv_head: 3, ..s };
                assert!(attend_with(&cache, odd, &mut out).is_err(), "heads, {what}");
                assert!(
                    attend_with(&cache, s, &mut out[1..]).is_err(),
                    "output, {what}"
                );
                assert!(attend_with(&cache, s, &mut out).is_ok(), "{what}");
            }
        }
        let s = AttnShape {
            n_head: 2,
            n_kv_head: 1,
            head_dim: 48,
            capacity: 4,
        };
        assert!(!KvType::Q8_0.fits(48) && KvType::F16.fits(48));
        let mut cache = KvLayer::zeroed(KvType::Q8_0, 4 * 48);
        let kv = vec![0.5f32; 48];
        let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store(&mut cache, &kv, &kv, Layout::TokenMajor, s, 0, 1)
        }));
        assert!(stored.is_err(), "a q8_0 head of 48 values");
    }

    /// The cache takes 64 bytes per 32 values as f16 and 34 as q8_0, and allocates exactly that.
    #[test]
    fn q8_0_takes_34_bytes_per_32_values() {
        let values = 2 * 1024 * 128;
        assert_eq!(KvType::F16.bytes(values), values * 2);
        assert_eq!(KvType::Q8_0.bytes(values), values / 32 * 34);
        let KvData::Q8_0 { k, .. } = KvLayer::zeroed(KvType::Q8_0, values).data else {
            unreachable!("a q8_0 cache")
        };
        assert_eq!(k.qs.len() + 2 * k.d.len(), KvType::Q8_0.bytes(values));
    }

    /// Run (in a child process) by `kernels::tests::the_cpu_cap_reaches_every_dispatch`: with the cap,
    /// decode and prompt batches both take the scalar rows, bit for bit (the vector code sums in
    /// another order).
    #[test]
    #[ignore = "run with CODELLAMA_LSP_CPU=scalar by the_cpu_cap_reaches_every_dispatch"]
    fn capped_to_scalar() {
        assert_eq!(super::super::cpu::level(), super::super::cpu::Level::Scalar);
        for (pos, seq) in [(3, 5), (10, 70)] {
            let (s, cache, q) = case(KvType::F16, pos, seq, 64, 0);
            let KvData::F16 { k, v } = &cache.data else {
                unreachable!("an f16 cache")
            };
            let (kc, vc): (&[f16], &[f16]) = (k.reinterpret_cast(), v.reinterpret_cast());
            let hd = s.head_dim;
            let out = run(Exec::Rayon, &q, &cache, s, pos, seq);
            let mut want = vec![0f32; q.len()];
            for h in 0..s.n_head {
                let base = h / 2 * s.capacity * hd;
                for i in 0..seq {
                    let n = pos + i + 1;
                    let qo = Layout::HeadMajor.offset(h, s.n_head, i, seq, hd);
                    attend_row_scalar(
                        &q[qo..qo + hd],
                        &kc[base..base + n * hd],
                        &vc[base..base + n * hd],
                        hd,
                        s.scale(),
                        seq < TILE_ROWS,
                        &mut want[(i * s.n_head + h) * hd..][..hd],
                    );
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "seq {seq}");
        }
    }
}
