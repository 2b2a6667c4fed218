//! Instruction (chat) prompts for code actions, built from ids.
//!
//! Llama 2 / Code Llama – Instruct (Meta's `chat_completion`): a system text is merged into the first
//! user turn as `"<<SYS>>\n" + system + "\n<</SYS>>\n\n" + user`; each finished turn is
//! `[BOS] + encode("[INST] " + user.strip() + " [/INST] " + answer.strip() + " ") + [EOS]` and the open
//! turn `[BOS] + encode("[INST] " + user.strip() + " [/INST]")`. ChatML (SmolLM2-Instruct, Qwen...)
//! is `<|im_start|>` + encode(role + "\n" + content) + `<|im_end|>` + encode("\n") per message, then
//! `<|im_start|>` + encode("assistant\n"). Code Llama 70B – Instruct (Meta's `dialog_prompt_tokens`, the
//! same ids as its published chat template for a dialog that starts with a system message) is
//! `[BOS]`, then per message `encode(" Source: " + role)` + `encode("\n\n " + content.strip())` (left out
//! when the content is empty) + `[<step>]`, then `encode(" Source: assistant\nDestination: user")` +
//! `encode("\n\n ")`, with no implicit leading space (its SentencePiece model adds none); a dialog without
//! a system message gets an empty one, as in the reference. The format comes from the model's chat
//! template (without one: `<step>` in the vocabulary means the 70B format, as in the reference).

use serde::Serialize;

use super::PromptError;
use codellama_engine::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatFormat {
    Llama2,
    ChatMl,
    /// Code Llama 70B – Instruct: `Source:` headers, turns separated by the `<step>` token.
    CodeLlama70b,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Role {
    /// The role's name in chat templates.
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// The chat format of a model, from its chat template (or, for a Code Llama vocabulary without one,
/// Llama 2's). An unknown template is an error that says which formats are known.
pub fn detect(tok: &Tokenizer) -> Result<ChatFormat, PromptError> {
    match tok.chat_template() {
        Some(t) if t.contains("<|im_start|>") && tok.special_id("<|im_start|>").is_some() => Ok(ChatFormat::ChatMl),
        Some(t) if t.contains("Source:") && t.contains("<step>") && tok.step_id().is_some() => {
            Ok(ChatFormat::CodeLlama70b)
        }
        Some(t) if t.contains("[INST]") => Ok(ChatFormat::Llama2),
        Some(t) => Err(PromptError::Chat(format!(
            "the model's chat template is not one of the known formats (Llama 2 [INST], ChatML <|im_start|>, \
             Code Llama 70B Source:/<step> with <step> in the vocabulary): {:?}",
            t.chars().take(120).collect::<String>()
        ))),
        None if tok.step_id().is_some() => Ok(ChatFormat::CodeLlama70b),
        None if tok.token_id("▁<PRE>").is_some() || tok.vocab_size() == 32016 || tok.vocab_size() == 32000 => {
            Ok(ChatFormat::Llama2)
        }
        None if tok.special_id("<|im_start|>").is_some() => Ok(ChatFormat::ChatMl),
        None => Err(PromptError::Chat(
            "the model has no chat template, so it cannot follow instructions; set chat_model to an Instruct model".into(),
        )),
    }
}

/// Prompt ids for `messages`, ending where the assistant's answer starts.
pub fn build(
    tok: &Tokenizer,
    format: ChatFormat,
    messages: &[Message],
) -> Result<Vec<u32>, PromptError> {
    match format {
        ChatFormat::Llama2 => llama2(tok, messages),
        ChatFormat::ChatMl => chatml(tok, messages),
        ChatFormat::CodeLlama70b => codellama70b(tok, messages),
    }
}

/// Ids that end an answer in this format (beyond the tokenizer's end-of-generation set).
pub fn stop_ids(tok: &Tokenizer, format: ChatFormat) -> Vec<u32> {
    match format {
        ChatFormat::Llama2 => tok.eos_id().into_iter().collect(),
        ChatFormat::ChatMl => ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
            .iter()
            .filter_map(|p| tok.special_id(p))
            .collect(),
        ChatFormat::CodeLlama70b => [tok.step_id(), tok.eos_id()]
            .into_iter()
            .flatten()
            .collect(),
    }
}

fn llama2(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, PromptError> {
    let (bos, eos) = match (tok.bos_id(), tok.eos_id()) {
        (Some(b), Some(e)) => (b, e),
        _ => {
            return Err(PromptError::Chat(
                "the Llama 2 chat format needs BOS and EOS tokens".into(),
            ))
        }
    };
    let mut turns: Vec<Message> = messages.to_vec();
    if let Some(first) = turns.first() {
        if first.role == Role::System {
            let system = turns.remove(0).content;
            match turns.first_mut() {
                Some(user) if user.role == Role::User => {
                    user.content = format!("<<SYS>>\n{system}\n<</SYS>>\n\n{}", user.content);
                }
                _ => {
                    return Err(PromptError::Chat(
                        "a system message must be followed by a user message".into(),
                    ))
                }
            }
        }
    }
    let mut ids = Vec::new();
    let mut i = 0;
    while i < turns.len() {
        let user = &turns[i];
        if user.role != Role::User {
            return Err(PromptError::Chat(
                "Llama 2 turns must alternate user, assistant, user...".into(),
            ));
        }
        match turns.get(i + 1) {
            Some(answer) if answer.role == Role::Assistant => {
                ids.push(bos);
                ids.extend(tok.encode(
                    &format!(
                        "[INST] {} [/INST] {} ",
                        user.content.trim(),
                        answer.content.trim()
                    ),
                    true,
                ));
                ids.push(eos);
                i += 2;
            }
            Some(_) => {
                return Err(PromptError::Chat(
                    "Llama 2 turns must alternate user, assistant, user...".into(),
                ))
            }
            None => {
                ids.push(bos);
                ids.extend(tok.encode(&format!("[INST] {} [/INST]", user.content.trim()), true));
                i += 1;
            }
        }
    }
    if turns.last().map(|m| m.role) != Some(Role::User) {
        return Err(PromptError::Chat(
            "the last message must be the user's".into(),
        ));
    }
    Ok(ids)
}

fn chatml(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, PromptError> {
    let (start, end) = match (tok.special_id("<|im_start|>"), tok.special_id("<|im_end|>")) {
        (Some(s), Some(e)) => (s, e),
        _ => {
            return Err(PromptError::Chat(
                "ChatML needs the <|im_start|> and <|im_end|> tokens".into(),
            ))
        }
    };
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos_id());
    }
    for m in messages {
        ids.push(start);
        ids.extend(tok.encode(&format!("{}\n{}", m.role.name(), m.content), false));
        ids.push(end);
        ids.extend(tok.encode("\n", false));
    }
    ids.push(start);
    ids.extend(tok.encode("assistant\n", false));
    Ok(ids)
}

fn codellama70b(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, PromptError> {
    let (Some(bos), Some(step)) = (tok.bos_id(), tok.step_id()) else {
        return Err(PromptError::Chat(
            "the Code Llama 70B chat format needs the BOS and <step> tokens".into(),
        ));
    };
    let empty_system = Message::new(Role::System, "");
    let turns: Vec<&Message> = match messages.first() {
        Some(first) if first.role == Role::System => messages.iter().collect(),
        _ => std::iter::once(&empty_system).chain(messages).collect(),
    };
    let expected = |i: usize| {
        if i % 2 == 1 {
            Role::User
        } else {
            Role::Assistant
        }
    };
    if turns
        .iter()
        .enumerate()
        .skip(1)
        .any(|(i, m)| m.role != expected(i))
    {
        return Err(PromptError::Chat(
            "Code Llama 70B turns must be an optional system message, then user, assistant, user...".into(),
        ));
    }
    if turns.last().map(|m| m.role) != Some(Role::User) {
        return Err(PromptError::Chat(
            "the last message must be the user's".into(),
        ));
    }
    let mut ids = vec![bos];
    for m in turns {
        ids.extend(tok.encode(&format!(" Source: {}", m.role.name()), false));
        // The reference tests the content before stripping it.
        if !m.content.is_empty() {
            ids.extend(tok.encode(&format!("\n\n {}", m.content.trim()), false));
        }
        ids.push(step);
    }
    ids.extend(tok.encode(" Source: assistant\nDestination: user", false));
    ids.extend(tok.encode("\n\n ", false));
    Ok(ids)
}
