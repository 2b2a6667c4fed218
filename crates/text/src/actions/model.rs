//! Which model answers code actions. Explain and generate need a model trained to follow instructions
//! (Code Llama – Instruct, SmolLM2-Instruct...): a base model only continues text. The chat model is its
//! own setting (`chat_model`); left empty, the completion model is used when it is an Instruct model,
//! which it is when its tokenizer carries a chat template or its name says Instruct (or Chat).

use std::path::Path;

use crate::prompt::chat::{self, ChatFormat};
use crate::prompt::PromptError;
use codellama_engine::{Backend, Tokenizer};

use super::ActionError;

/// Where the chat model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatModel {
    /// The completion model follows instructions in this format: use its engine.
    Completion(ChatFormat),
    /// Load this model (a `chat_model` setting naming another model) and check it with [`chat_format`].
    Load(String),
}

/// Decides which model serves code actions, from the `chat_model` setting and the loaded completion
/// model. An unsuitable completion model without a `chat_model` gives [`ActionError::NotInstruct`],
/// which says what to set.
pub fn choose_chat_model(
    chat_model: Option<&str>,
    completion: &dyn Backend,
) -> Result<ChatModel, ActionError> {
    match chat_model.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) if !same_file(Path::new(spec), &completion.info().path) => {
            Ok(ChatModel::Load(spec.to_string()))
        }
        _ => chat_format(completion).map(ChatModel::Completion),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The chat format of the engine's model, or why it cannot follow instructions.
pub fn chat_format(engine: &dyn Backend) -> Result<ChatFormat, ActionError> {
    let info = engine.info();
    let file = info
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    instruct_format(&[&info.name, &file], engine.tokenizer())
}

/// The chat format of a model known by `names` (its `general.name`, its file name) and its tokenizer:
/// from the chat template when there is one (an unknown template is an error naming the known ones);
/// without one, only a model named Instruct or Chat qualifies (Code Llama – Instruct GGUFs converted
/// without a template use the Llama 2 format, or Code Llama 70B's when the vocabulary has `<step>`).
pub fn instruct_format(names: &[&str], tokenizer: &Tokenizer) -> Result<ChatFormat, ActionError> {
    let named_instruct = names.iter().any(|n| is_instruct_name(n));
    if tokenizer.chat_template().is_none() && !named_instruct {
        let model = names
            .iter()
            .find(|n| !n.is_empty())
            .copied()
            .unwrap_or("the model");
        return Err(ActionError::NotInstruct {
            model: model.to_string(),
        });
    }
    chat::detect(tokenizer).map_err(|e| {
        let message = match e {
            PromptError::Chat(message) => message,
            other => other.to_string(),
        };
        if message.contains("chat_model") {
            ActionError::ChatFormat(message)
        } else {
            ActionError::ChatFormat(format!(
                "{message} (explain/generate need a model in a known chat format: set chat_model)"
            ))
        }
    })
}

fn is_instruct_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.contains("instruct")
        || lower
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == "chat")
}
