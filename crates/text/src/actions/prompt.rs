//! The chat prompts of the actions: a system text and one user message that carry the language, the
//! file path, the code the action is about and a window of the code around it, built into ids with
//! [`crate::prompt::chat`] and fitted into the token budget (the context window minus `max_tokens`) by
//! cutting whole lines: first the surrounding code (the far ends first), then the end of the selected
//! code.

use serde::Serialize;

use crate::language::Language;
use crate::prompt::chat::{self, ChatFormat, Message, Role};
use crate::prompt::PromptError;
use codellama_engine::Tokenizer;

use super::answer::fence_tag;
use super::task::{ActionKind, Plan};
use super::ActionError;

/// How much of the code was left out to fit the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTruncation {
    /// Lines of surrounding code dropped (of those the window would have shown).
    pub context_lines: usize,
    /// Lines dropped from the end of the selected code.
    pub selection_lines: usize,
}

/// A built action prompt.
#[derive(Debug, Clone, Serialize)]
pub struct ActionPrompt {
    pub ids: Vec<u32>,
    /// The messages the ids were built from.
    pub messages: Vec<Message>,
    pub format: ChatFormat,
    /// Ids that end the answer in this format.
    pub stop_ids: Vec<u32>,
    pub truncated: PromptTruncation,
}

/// Builds the prompt for `plan`, leaving `max_tokens` of `context_window` for the answer.
pub(crate) fn build(
    tok: &Tokenizer,
    format: ChatFormat,
    plan: &Plan,
    max_tokens: usize,
    context_window: usize,
) -> Result<ActionPrompt, ActionError> {
    let no_room = || ActionError::NoRoom {
        window: context_window,
        max_tokens,
    };
    let limit = context_window
        .checked_sub(max_tokens)
        .filter(|l| *l > 0)
        .ok_or_else(no_room)?;
    let count = |lines: &[String]| -> Vec<usize> {
        lines
            .iter()
            .map(|l| tok.encode(l, false).len() + 1)
            .collect()
    };
    let mut before = plan.before.clone();
    let mut after = plan.after.clone();
    let mut focus = plan.focus.clone();
    let (mut before_n, mut after_n, mut focus_n) = (count(&before), count(&after), count(&focus));
    let mut truncated = PromptTruncation::default();
    loop {
        let messages = messages(plan, format, &before, &focus, &after);
        let ids = chat::build(tok, format, &messages).map_err(|e| match e {
            PromptError::Chat(m) => ActionError::ChatFormat(m),
            other => ActionError::ChatFormat(other.to_string()),
        })?;
        if ids.len() <= limit {
            return Ok(ActionPrompt {
                ids,
                messages,
                format,
                stop_ids: chat::stop_ids(tok, format),
                truncated,
            });
        }
        let mut over = ids.len() - limit;
        // The surrounding code goes first, from its far ends, keeping twice as much before as after.
        while over > 0 && !(before.is_empty() && after.is_empty()) {
            let b: usize = before_n.iter().sum();
            let a: usize = after_n.iter().sum();
            let cut = if !after.is_empty() && (a * 2 > b || before.is_empty()) {
                after.pop();
                after_n.pop().unwrap_or(0)
            } else {
                before.remove(0);
                before_n.remove(0)
            };
            truncated.context_lines += 1;
            over = over.saturating_sub(cut);
        }
        // Then the end of the selected code, keeping at least one line.
        while over > 0 && focus.len() > 1 {
            focus.pop();
            over = over.saturating_sub(focus_n.pop().unwrap_or(0));
            truncated.selection_lines += 1;
        }
        if over > 0 {
            return Err(no_room());
        }
    }
}

/// The system text and user message for `plan` with the given pieces of code.
pub(crate) fn messages(
    plan: &Plan,
    format: ChatFormat,
    before: &[String],
    focus: &[String],
    after: &[String],
) -> Vec<Message> {
    let lang = plan.language;
    let name = lang.name();
    let tag = fence_tag(lang);
    let clean = |s: &str| sanitize(s, format);
    let block = |lines: &[String]| code_block(&clean(&lines.join("\n")), tag);
    let expert = match lang {
        Language::Other => "You are an expert programmer.".to_string(),
        _ => format!("You are an expert {name} programmer."),
    };
    let system = match plan.kind {
        ActionKind::Explain => format!("{expert} You explain code clearly and briefly."),
        ActionKind::Generate | ActionKind::GenerateFromComment => format!(
            "{expert} You write correct, idiomatic code and answer with code only, in one fenced code block."
        ),
        ActionKind::Document => format!("{expert} You write concise documentation."),
    };
    let code = match lang {
        Language::Other => "code".to_string(),
        _ => format!("{name} code"),
    };
    let mut user = String::new();
    if let Some(path) = &plan.path {
        user.push_str(&format!("File: {}\n\n", clean(path)));
    }
    let (place, before_title, after_title) = match plan.kind {
        ActionKind::Explain => ("", "Code before the selection", "Code after the selection"),
        ActionKind::Document => ("", "Code before the function", "Code after the function"),
        _ if !plan.focus.is_empty() => {
            ("", "Code before the selection", "Code after the selection")
        }
        _ => (
            "insertion point",
            "Code before the insertion point",
            "Code after the insertion point",
        ),
    };
    if !before.is_empty() {
        user.push_str(&format!("{before_title}:\n{}\n\n", block(before)));
    }
    if !after.is_empty() {
        user.push_str(&format!("{after_title}:\n{}\n\n", block(after)));
    }
    let instruction = plan.instruction.as_deref().map(clean).unwrap_or_default();
    let answer_with_code = match tag {
        "" => "Answer with one ``` code block and nothing else.".to_string(),
        tag => format!("Answer with one ```{tag} code block and nothing else."),
    };
    match plan.kind {
        ActionKind::Explain => user.push_str(&format!(
            "Explain what this {code} does:\n{}\n\n\
             Answer in a few short sentences of plain English, without repeating the code.",
            block(focus)
        )),
        ActionKind::Generate if !plan.focus.is_empty() => user.push_str(&format!(
            "Selected code:\n{}\n\nInstruction: {instruction}\n\n\
             Write the {code} that replaces the selected code. {answer_with_code}",
            block(focus)
        )),
        ActionKind::Generate => user.push_str(&format!(
            "Instruction: {instruction}\n\nWrite the {code} to insert at the {place}. {answer_with_code}"
        )),
        ActionKind::GenerateFromComment => user.push_str(&format!(
            "The code before the insertion point ends with this comment:\n{}\n\n\
             Write the {code} that the comment asks for. {answer_with_code}",
            code_block(&instruction, "")
        )),
        ActionKind::Document => {
            let fname = plan
                .function
                .as_ref()
                .map(|f| clean(&f.name))
                .unwrap_or_default();
            let what = match lang.doc_comment() {
                Some(crate::language::DocComment::Docstring { .. }) => "docstring",
                _ => "documentation comment",
            };
            user.push_str(&format!(
                "{}\n\nWrite a short {what} for the {name} function `{fname}`: one sentence on what it \
                 does, then its parameters and return value if they are not obvious. Answer with the \
                 text only, without comment markers, quotes or code.",
                block(focus)
            ));
        }
    }
    vec![
        Message::new(Role::System, system),
        Message::new(Role::User, user),
    ]
}

/// A fenced block, with a fence longer than any backtick run inside.
fn code_block(code: &str, tag: &str) -> String {
    let longest = code.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{tag}\n{code}\n{fence}")
}

/// Llama 2's reference rejects prompts containing its markers; user text cannot add turns, so they are
/// broken up (`[INST]` -> `[ INST]`). ChatML markers and Code Llama 70B's `<step>` are tokens that plain
/// text never becomes (the tokenizer protects them), so text such as `<step> Source: system` stays text
/// inside its turn.
fn sanitize(text: &str, format: ChatFormat) -> String {
    match format {
        ChatFormat::Llama2 => text
            .replace("[INST]", "[ INST]")
            .replace("[/INST]", "[ /INST]")
            .replace("<<SYS>>", "< <SYS>>")
            .replace("<</SYS>>", "< </SYS>>"),
        ChatFormat::ChatMl | ChatFormat::CodeLlama70b => text.to_string(),
    }
}
