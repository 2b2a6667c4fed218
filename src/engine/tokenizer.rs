//! Tokenizers built from a GGUF file's metadata or from a Hugging Face `tokenizer.json`.
//! (Contract stub: the implementation lands with the tokenizer work.)

use std::path::Path;

use candle_core::quantized::gguf_file;

/// The two tokenizer families of llama-architecture models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// SentencePiece BPE (`tokenizer.ggml.model = "llama"`): Llama 2, Code Llama.
    SentencePiece,
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): SmolLM2, StarCoder, DeepSeek-Coder, Qwen2.
    ByteLevel,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Invalid(String),
}

/// Which FIM marker family the vocabulary carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FimFamily {
    CodeLlama,
    StarCoder,
    DeepSeek,
    /// `<|fim_prefix|>`-style markers (Qwen2.5-Coder, CodeGemma).
    PipeFim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimIds {
    pub family: FimFamily,
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    pub eot: Option<u32>,
}

/// A loaded tokenizer. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Tokenizer {
    _private: (),
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(_content: &gguf_file::Content) -> Result<Self, TokenizerError> {
        todo!()
    }

    /// Loads a Hugging Face `tokenizer.json` (plus `tokenizer_config.json` beside it when present).
    pub fn from_file(_path: &Path) -> Result<Self, TokenizerError> {
        todo!()
    }

    pub fn kind(&self) -> TokenizerKind {
        todo!()
    }

    pub fn vocab_size(&self) -> usize {
        todo!()
    }

    /// Encodes user text as text: never yields control or FIM-marker ids. For SentencePiece,
    /// `dummy_prefix` adds the implicit leading space; ignored for byte-level BPE.
    pub fn encode(&self, _text: &str, _dummy_prefix: bool) -> Vec<u32> {
        todo!()
    }

    /// What `llama-tokenize --no-bos` prints: `encode(text, self.add_space_prefix())`.
    pub fn encode_plain(&self, _text: &str) -> Vec<u32> {
        todo!()
    }

    /// The raw bytes a token stands for (control tokens: empty).
    pub fn token_bytes(&self, _id: u32) -> &[u8] {
        todo!()
    }

    /// Concatenated bytes of `ids`, lossily decoded; no leading space is stripped.
    pub fn decode(&self, _ids: &[u32]) -> String {
        todo!()
    }

    pub fn token_id(&self, _piece: &str) -> Option<u32> {
        todo!()
    }

    pub fn token_piece(&self, _id: u32) -> Option<&str> {
        todo!()
    }

    pub fn bos_id(&self) -> Option<u32> {
        todo!()
    }

    pub fn eos_id(&self) -> Option<u32> {
        todo!()
    }

    pub fn add_bos(&self) -> bool {
        todo!()
    }

    pub fn add_space_prefix(&self) -> bool {
        todo!()
    }

    pub fn is_control(&self, _id: u32) -> bool {
        todo!()
    }

    /// Ids that end a generation: EOS, EOT (`▁<EOT>` for Code Llama), `<|im_end|>`, `<|endoftext|>`...
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        todo!()
    }

    pub fn fim_ids(&self) -> Option<FimIds> {
        todo!()
    }

    /// Id of a control token written as text (e.g. `<|im_start|>`).
    pub fn special_id(&self, _text: &str) -> Option<u32> {
        todo!()
    }

    /// Ids that user text must never produce (control tokens, FIM markers).
    pub fn is_protected(&self, _id: u32) -> bool {
        todo!()
    }

    /// The chat template from `tokenizer.chat_template` / `tokenizer_config.json`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        todo!()
    }
}

/// Turns a stream of token ids into text deltas, holding back incomplete UTF-8 sequences.
pub struct IncrementalDecoder {
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self { pending: Vec::new() }
    }

    pub fn push(&mut self, _tokenizer: &Tokenizer, _id: u32) -> String {
        let _ = &self.pending;
        todo!()
    }
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new()
    }
}
