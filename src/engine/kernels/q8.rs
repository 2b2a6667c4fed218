//! Activations quantized to 8 bits in blocks of 32, the partner format of the quantized weight kernels,
//! with llama.cpp's numerics (Q8_0/Q8_1): `q = round_half_even(x · 127 / max|x|)`, the scale
//! `d = max|x| / 127` rounded through f16, and `s = d · Σq` (used by formats with a minimum).

use half::f16;

pub const QK: usize = 32;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// `m` rows of quantized activations, `cols / 32` blocks each.
pub struct Q8Row {
    blocks: Vec<Q8Block>,
    per_row: usize,
}

impl Q8Row {
    pub fn quantize_rows(x: &[f32], m: usize, cols: usize) -> Self {
        assert_eq!(cols % QK, 0);
        let per_row = cols / QK;
        let mut blocks = Vec::with_capacity(m * per_row);
        for chunk in x[..m * cols].chunks_exact(QK) {
            blocks.push(quantize_block(chunk));
        }
        Self { blocks, per_row }
    }

    pub fn row(&self, i: usize) -> &[Q8Block] {
        &self.blocks[i * self.per_row..(i + 1) * self.per_row]
    }
}

fn quantize_block(x: &[f32]) -> Q8Block {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    let d16 = f16::from_f32(d).to_f32();
    Q8Block {
        d: d16,
        s: f16::from_f32(sum as f32 * d).to_f32(),
        qs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
        let q = Q8Row::quantize_rows(&x, 2, 32);
        for i in 0..2 {
            let b = &q.row(i)[0];
            for (k, v) in x[i * 32..(i + 1) * 32].iter().enumerate() {
                assert!((b.qs[k] as f32 * b.d - v).abs() < 0.02, "{v}");
            }
            let sum: f32 = x[i * 32..(i + 1) * 32].iter().sum();
            assert!((b.s - sum).abs() < 0.2, "{} vs {sum}", b.s);
        }
    }
}
