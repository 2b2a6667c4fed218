use candle_core::quantized::GgmlDType;
use codellama_lsp::engine::gguf::GgufFile;
use codellama_lsp::engine::kernels::{QMatrix, WeightBytes};
fn main() {
    let f = GgufFile::open(std::path::Path::new(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    ))
    .unwrap();
    let name = std::env::var("TENSOR").unwrap_or("blk.0.ffn_up.weight".into());
    let t = f.tensor(&name).unwrap();
    let mut m = QMatrix::new(
        t.dtype,
        t.dims[0],
        t.dims[1],
        WeightBytes::Mapped(t.data.clone()),
    )
    .unwrap();
    if std::env::var("PACK").is_ok() {
        assert!(m.pack());
    }
    let _ = GgmlDType::Q4_1;
    let mrows: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    let iters: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(2000);
    let x: Vec<f32> = (0..mrows * m.cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0)
        .collect();
    let mut out = vec![0f32; mrows * m.rows];
    let t0 = std::time::Instant::now();
    for _ in 0..iters {
        m.matmul(&x, mrows, &mut out);
    }
    let dt = t0.elapsed().as_secs_f64();
    let macs = (mrows * m.rows * m.cols * iters) as f64;
    println!(
        "{} {}x{} m={mrows}: {:.3} ms/call, {:.2} GMAC/s wall",
        name,
        m.rows,
        m.cols,
        dt * 1e3 / iters as f64,
        macs / dt / 1e9
    );
}
