//! The in-process model engine: loads llama-architecture models (GGUF or a Hugging Face directory),
//! tokenizes exactly as the model was trained, and generates tokens on one dedicated model thread that
//! owns the weights and the KV cache. Callers submit requests over a channel and receive tokens as they
//! are produced; every request carries a cancellation handle checked between tokens and prefill chunks.

pub mod tokenizer;
