//! The forward pass checked from outside the model thread: against numeric references and against
//! llama.cpp's greedy outputs on the same files. Here rather than in `tests/` because the model is
//! private to this crate (nothing outside `worker` may touch the weights or the cache).

mod forward;
mod llamacpp_reference;
