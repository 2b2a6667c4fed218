//! Weight types without a kernel of our own on this CPU, converted once at load into Q4_1 or Q8_0, which
//! have one. On CPUs with AVX2 (AVX-512 VNNI and AMX ones too), Q4_0, Q5_0, Q4_K and Q6_K are not
//! converted: the repacked kernels and the AMX tiles take them as they are (`packed`, `amx`), so a
//! Q4_K_M file takes its own size in memory there (also Qwen2.5-Coder 0.5B's, whose 896-wide rows fall
//! back from the K-quants to Q5_0 and Q8_0). The conversions serve the other types (Q5_1, Q2_K, Q3_K,
//! Q5_K), and every type on CPUs without AVX2.
//!
//! Three conversions are exact: Q4_0 → Q4_1 (the offset `-8·d` is a power-of-two multiple of `d`), Q5_0 →
//! Q8_0 (five-bit values fit in a byte with the same scale), and Q4_K → Q4_1 up to the rounding of each
//! sub-block's scale `d·sc` and minimum `dmin·m` to f16 (a relative 2⁻¹¹, far below the 4-bit step). The
//! other types (Q5_1 and the K-quants Q2_K, Q3_K, Q5_K, Q6_K) are dequantized and quantized again to
//! Q8_0 the way llama.cpp quantizes Q8_0, which adds at most half of a 1/127 step of each 32-value
//! block's largest weight. Where converted, a Q4_K_M file (Q4_K plus Q6_K) grows by about a sixth in memory and runs on
//! the same kernels as Q4_1 and Q8_0 files; results are close to, not bit-identical with, llama.cpp's.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

use super::{AlignedBytes, QMatrix};

/// What weights of `dtype` are converted to, or `None` when our kernels take them as they are.
pub fn target(dtype: GgmlDType) -> Option<GgmlDType> {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4K => Some(GgmlDType::Q4_1),
        GgmlDType::Q5_0
        | GgmlDType::Q5_1
        | GgmlDType::Q2K
        | GgmlDType::Q3K
        | GgmlDType::Q5K
        | GgmlDType::Q6K => Some(GgmlDType::Q8_0),
        _ => None,
    }
}

/// What a compact copy of weights of `dtype` is (see `QMatrix::compact`): Q4_0 for a type with more bytes
/// per weight than Q4_0's 4.5 bits (Q4_1, Q5_x, Q8_0, Q5_K, Q6_K, floats) and rows of whole Q4_0 blocks;
/// `None` otherwise (Q4_0 itself, Q4_K, Q3_K, Q2_K).
pub fn compact_target(dtype: GgmlDType, cols: usize) -> Option<GgmlDType> {
    let q4_0 = GgmlDType::Q4_0;
    let wider = dtype.type_size() * q4_0.block_size() > q4_0.type_size() * dtype.block_size();
    (wider && cols.is_multiple_of(q4_0.block_size())).then_some(q4_0)
}

/// The rows of `m` converted to `to` (one of `target`'s or `compact_target`'s answers), in parallel.
pub fn convert(m: &QMatrix, to: GgmlDType) -> AlignedBytes {
    let out_row = m.cols / to.block_size() * to.type_size();
    let mut out = AlignedBytes::zeroed_weights(m.rows * out_row);
    out.as_mut_slice()
        .par_chunks_mut(out_row)
        .enumerate()
        .for_each_init(
            || vec![0f32; m.cols],
            |buf, (r, dst)| match (m.dtype, to) {
                (GgmlDType::Q4_0, GgmlDType::Q4_1) => q4_0_to_q4_1(m.row(r), dst),
                (GgmlDType::Q4K, GgmlDType::Q4_1) => q4k_to_q4_1(m.row(r), dst),
                (GgmlDType::Q5_0, GgmlDType::Q8_0) => q5_0_to_q8_0(m.row(r), dst),
                (_, GgmlDType::Q4_0) => {
                    m.dequantize_row(r, buf);
                    quantize_q4_0(buf, dst);
                }
                _ => {
                    m.dequantize_row(r, buf);
                    quantize_q8_0(buf, dst);
                }
            },
        );
    out
}

fn read_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

fn write_f16(dst: &mut [u8], v: f32) {
    dst[..2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Q4_0 (`d`, 16 nibble bytes; weight `d·(q - 8)`) to Q4_1 (`d`, `m`, the same nibbles; `d·q + m`).
fn q4_0_to_q4_1(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(18).zip(dst.chunks_exact_mut(20)) {
        d[..2].copy_from_slice(&s[..2]);
        write_f16(&mut d[2..4], -8.0 * read_f16(&s[..2]));
        d[4..].copy_from_slice(&s[2..]);
    }
}

/// Q5_0 (`d`, 32 high bits, 16 nibble bytes; weight `d·(q - 16)`) to Q8_0 (`d`, 32 signed bytes).
fn q5_0_to_q8_0(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(22).zip(dst.chunks_exact_mut(34)) {
        d[..2].copy_from_slice(&s[..2]);
        let high = u32::from_le_bytes([s[2], s[3], s[4], s[5]]);
        let qs = &s[6..22];
        for j in 0..16 {
            let lo = (qs[j] & 0x0F) | ((((high >> j) & 1) as u8) << 4);
            let hi = (qs[j] >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4);
            d[2 + j] = (lo as i8 - 16) as u8;
            d[2 + j + 16] = (hi as i8 - 16) as u8;
        }
    }
}

/// Scale and minimum of sub-block `j` of a Q4_K super-block (six bits each, packed in 12 bytes).
pub(super) fn q4k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K (256 weights: `d`, `dmin`, 12 bytes of scales, 128 nibble bytes; sub-block `j` of 32 weights is
/// `d·sc_j·q - dmin·m_j`) to eight Q4_1 blocks. Sub-blocks `2p` and `2p + 1` are the low and high nibbles
/// of the same 32 bytes; Q4_1 keeps values `k` and `k + 16` of a block in one byte.
fn q4k_to_q4_1(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(144).zip(dst.chunks_exact_mut(8 * 20)) {
        let (sd, smin) = (read_f16(&s[0..2]), read_f16(&s[2..4]));
        let scales = &s[4..16];
        for (j, blk) in d.chunks_exact_mut(20).enumerate() {
            let (sc, m) = q4k_scale_min(j, scales);
            write_f16(&mut blk[0..2], sd * sc as f32);
            write_f16(&mut blk[2..4], -(smin * m as f32));
            let q = &s[16 + 32 * (j / 2)..16 + 32 * (j / 2 + 1)];
            let nib = |k: usize| if j % 2 == 0 { q[k] & 0x0F } else { q[k] >> 4 };
            for k in 0..16 {
                blk[4 + k] = nib(k) | (nib(k + 16) << 4);
            }
        }
    }
}

/// llama.cpp's reference Q8_0 quantization: `d = max|x| / 127`, `q = round(x / d)`.
fn quantize_q8_0(x: &[f32], dst: &mut [u8]) {
    for (xs, d) in x.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        write_f16(&mut d[..2], scale);
        for (q, v) in d[2..].iter_mut().zip(xs) {
            *q = (v * inv).round() as i8 as u8;
        }
    }
}

/// llama.cpp's reference Q4_0 quantization: the value of largest magnitude `v` gives `d = v / -8`, and
/// `q = min(15, trunc(x / d + 8.5))`, so that `v` itself is `-8`.
fn quantize_q4_0(x: &[f32], dst: &mut [u8]) {
    for (xs, d) in x.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        let v = xs
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let scale = v / -8.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        write_f16(&mut d[..2], scale);
        let q = |v: f32| ((v * inv + 8.5) as u8).min(15);
        for j in 0..16 {
            d[2 + j] = q(xs[j]) | (q(xs[j + 16]) << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::quantize;
    use super::super::WeightBytes;
    use super::*;

    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / cols) as f32 * 0.1))
            .collect()
    }

    fn dequantized(m: &QMatrix) -> Vec<f32> {
        let mut out = vec![0f32; m.rows * m.cols];
        for (r, row) in out.chunks_exact_mut(m.cols).enumerate() {
            m.dequantize_row(r, row);
        }
        out
    }

    /// The compact copy of any wider type is llama.cpp's Q4_0 of its values, byte for byte (candle's
    /// quantizer is a port of llama.cpp's reference), and only wider types with whole blocks get one.
    #[test]
    fn compact_copies_are_llama_cpps_q4_0() {
        let (rows, cols) = if cfg!(miri) { (2, 256) } else { (8, 512) };
        let w = weights(rows, cols);
        for dtype in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q6K,
        ] {
            assert_eq!(
                compact_target(dtype, cols),
                Some(GgmlDType::Q4_0),
                "{dtype:?}"
            );
            let bytes = WeightBytes::copy_of(&quantize(dtype, &w));
            let m = QMatrix::new(dtype, rows, cols, bytes).unwrap();
            let want = quantize(GgmlDType::Q4_0, &dequantized(&m));
            assert_eq!(
                convert(&m, GgmlDType::Q4_0).as_slice(),
                &want[..],
                "{dtype:?}"
            );
        }
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q3K,
            GgmlDType::Q2K,
        ] {
            assert_eq!(compact_target(dtype, cols), None, "{dtype:?}");
        }
        assert_eq!(
            compact_target(GgmlDType::F32, 48),
            None,
            "a row of one and a half blocks"
        );
    }

    #[test]
    fn conversions_keep_the_weights() {
        // Fewer rows under Miri, which interprets candle's quantizers too.
        let (rows, cols) = if cfg!(miri) { (2, 256) } else { (8, 512) };
        let w = weights(rows, cols);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q6K,
            GgmlDType::Q5K,
            GgmlDType::Q3K,
            GgmlDType::Q2K,
        ] {
            let m = QMatrix::new(
                dtype,
                rows,
                cols,
                WeightBytes::copy_of(&quantize(dtype, &w)),
            )
            .unwrap();
            let before = dequantized(&m);
            // `convert` itself: `QMatrix::transcode` leaves the types this CPU packs as they are.
            let to = target(dtype).unwrap();
            let bytes = WeightBytes::Owned(std::sync::Arc::new(convert(&m, to)));
            let t = QMatrix::new(to, rows, cols, bytes).unwrap();
            let after = dequantized(&t);
            // Exact conversions agree to the f16 rounding of the scales; re-quantized ones to half a Q8_0
            // step plus the f16 rounding of its scale.
            for (blk, (a, b)) in before.chunks(32).zip(after.chunks(32)).enumerate() {
                let amax = a.iter().fold(0f32, |x, v| x.max(v.abs()));
                let tol = match dtype {
                    GgmlDType::Q4_0 | GgmlDType::Q5_0 => 0.0,
                    GgmlDType::Q4K => amax * 2e-3,
                    _ => amax / 254.0 + amax * 1e-3,
                };
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= tol, "{dtype:?} block {blk}: {x} vs {y}");
                }
            }
        }
    }
}
