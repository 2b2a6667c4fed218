//! The token table every engine shares: piece text, token type, the bytes each token stands for, the
//! byte-fallback ids and the protected set (ids that user text must never produce).

use std::collections::HashMap;

use super::{TokenizerError, TokenizerKind};

/// SentencePiece's visible space.
pub(super) const SPACE_MARK: char = '\u{2581}';

/// Token types as GGUF numbers them (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// GGUF's numbering; 0 (undefined) and unknown values count as normal, as in llama.cpp.
    pub(super) fn from_gguf(value: i64) -> Self {
        match value {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

pub(super) struct Vocab {
    kind: TokenizerKind,
    pieces: Vec<String>,
    types: Vec<TokenType>,
    bytes: Vec<Box<[u8]>>,
    ids: HashMap<String, u32>,
    protected: Vec<bool>,
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
}

impl Vocab {
    /// Builds the table; `types` must have one entry per piece. A duplicated piece keeps its first id.
    pub(super) fn new(
        kind: TokenizerKind,
        pieces: Vec<String>,
        types: Vec<TokenType>,
    ) -> Result<Self, TokenizerError> {
        if u32::try_from(pieces.len()).is_err() {
            return Err(TokenizerError::Invalid(format!(
                "{} tokens is too many",
                pieces.len()
            )));
        }
        if types.len() != pieces.len() {
            return Err(TokenizerError::Invalid(format!(
                "{} token types for {} tokens",
                types.len(),
                pieces.len()
            )));
        }
        let mut ids = HashMap::with_capacity(pieces.len());
        for (id, piece) in (0u32..).zip(&pieces) {
            ids.entry(piece.clone()).or_insert(id);
        }
        let unk = (0u32..)
            .zip(&types)
            .find(|(_, t)| **t == TokenType::Unknown)
            .map(|(id, _)| id);
        let mut vocab = Self {
            kind,
            unk,
            protected: vec![false; pieces.len()],
            bytes: Vec::new(),
            byte_ids: [None; 256],
            pieces,
            types,
            ids,
        };
        vocab.bytes = (0..vocab.pieces.len())
            .map(|i| vocab.compute_bytes(i))
            .collect();
        vocab.byte_ids = std::array::from_fn(|b| vocab.find_byte_id(b as u8));
        Ok(vocab)
    }

    pub(super) fn kind(&self) -> TokenizerKind {
        self.kind
    }

    pub(super) fn len(&self) -> usize {
        self.pieces.len()
    }

    pub(super) fn id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    pub(super) fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub(super) fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    pub(super) fn bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b)
    }

    pub(super) fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    pub(super) fn is_user_defined(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::UserDefined)
    }

    pub(super) fn is_protected(&self, id: u32) -> bool {
        self.protected.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether text may be spelled with this token: a normal or user-defined piece that is not protected.
    /// Merges may only produce such tokens (SentencePiece never merges into control, byte or unused pieces).
    pub(super) fn is_spellable(&self, id: u32) -> bool {
        matches!(
            self.token_type(id),
            Some(TokenType::Normal | TokenType::UserDefined)
        ) && !self.is_protected(id)
    }

    /// The token for one raw byte: `<0xXX>` (SentencePiece) or the byte's character (byte-level).
    pub(super) fn byte_id(&self, byte: u8) -> Option<u32> {
        self.byte_ids[byte as usize]
    }

    /// Ids of the non-protected user-defined tokens with their text, longest first (llama.cpp splits
    /// these out of raw text before merging).
    pub(super) fn user_defined(&self) -> Vec<(String, u32)> {
        let mut tokens: Vec<(String, u32)> = (0u32..)
            .zip(&self.pieces)
            .filter(|&(id, piece)| {
                self.is_user_defined(id) && !self.is_protected(id) && !piece.is_empty()
            })
            .map(|(id, _)| (String::from_utf8_lossy(self.bytes(id)).into_owned(), id))
            .filter(|(text, _)| !text.is_empty())
            .collect();
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        tokens
    }

    /// Turns ids into control tokens: their bytes become empty (llama.cpp does this for FIM markers).
    pub(super) fn mark_control(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            if let Some(slot) = self.types.get_mut(id as usize) {
                *slot = TokenType::Control;
                self.bytes[id as usize] = Box::default();
            }
        }
    }

    /// Adds ids to the protected set and every control token with them.
    pub(super) fn protect(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            if let Some(slot) = self.protected.get_mut(id as usize) {
                *slot = true;
            }
        }
        for (slot, ty) in self.protected.iter_mut().zip(&self.types) {
            *slot |= *ty == TokenType::Control;
        }
    }

    /// Spells `text` one character at a time without merging: the last-resort encoding used when an
    /// engine fails. Never yields a protected id.
    pub(super) fn encode_chars(&self, text: &str, out: &mut Vec<u32>) {
        let mut buf = [0u8; 4];
        for ch in text.chars() {
            let single = match (self.kind, ch) {
                (TokenizerKind::SentencePiece, ' ') => self.id(SPACE_MARK.encode_utf8(&mut buf)),
                (TokenizerKind::SentencePiece, _) => self.id(ch.encode_utf8(&mut buf)),
                (TokenizerKind::ByteLevel, _) => None,
            };
            match single.filter(|&id| self.is_spellable(id)) {
                Some(id) => out.push(id),
                None => self.push_bytes(ch.encode_utf8(&mut buf).as_bytes(), out),
            }
        }
    }

    /// Byte-fallback tokens for `bytes`; a byte without a token becomes `<unk>` when there is one.
    pub(super) fn push_bytes(&self, bytes: &[u8], out: &mut Vec<u32>) {
        for &b in bytes {
            if let Some(id) = self.byte_id(b).or(self.unk) {
                out.push(id);
            }
        }
    }

    fn compute_bytes(&self, index: usize) -> Box<[u8]> {
        let piece = &self.pieces[index];
        match (self.types[index], self.kind) {
            (TokenType::Control | TokenType::Unknown, _) => Box::default(),
            (TokenType::Byte, _) => {
                parse_byte_piece(piece).map_or_else(|| piece.as_bytes().into(), |b| [b].into())
            }
            (TokenType::UserDefined, TokenizerKind::ByteLevel) => piece.as_bytes().into(),
            (_, TokenizerKind::SentencePiece) => piece.replace(SPACE_MARK, " ").into_bytes().into(),
            (_, TokenizerKind::ByteLevel) => byte_level_decode(piece).into(),
        }
    }

    fn find_byte_id(&self, byte: u8) -> Option<u32> {
        match self.kind {
            TokenizerKind::SentencePiece => self
                .id(&format!("<0x{byte:02X}>"))
                .filter(|&id| self.token_type(id) == Some(TokenType::Byte)),
            TokenizerKind::ByteLevel => self.id(byte_level_char(byte).encode_utf8(&mut [0; 4])),
        }
    }
}

/// `<0x0A>` -> 0x0A.
pub(super) fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's reversible byte -> printable character map: printable Latin-1 bytes map to themselves, the
/// others to U+0100 onwards in byte order.
fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let shifted = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte a byte-level character stands for, if it is one of the 256.
pub(super) fn byte_level_byte(ch: char) -> Option<u8> {
    // The 256 characters all lie below U+0144.
    static TABLE: std::sync::OnceLock<[Option<u8>; 0x144]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [None; 0x144];
        for b in 0..=255u8 {
            table[byte_level_char(b) as usize] = Some(b);
        }
        table
    });
    table.get(ch as usize).copied().flatten()
}

/// A byte-level piece back to bytes; characters outside the map stand for themselves.
fn byte_level_decode(piece: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len());
    for ch in piece.chars() {
        match byte_level_byte(ch) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// Raw text -> byte-level characters (the form byte-level pieces are stored in).
pub(super) fn byte_level_encode(text: &str) -> String {
    static TABLE: std::sync::OnceLock<[char; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| std::array::from_fn(|b| byte_level_char(b as u8)));
    text.bytes().map(|b| table[b as usize]).collect()
}
