//! The server's only contact with prompt building and post-processing: text around the cursor in, a
//! generation request out; the model's text in, a suggestion out.
//!
//! TEMPORARY: until the FIM prompt builder (`crate::prompt`) and post-processing (`crate::postprocess`) land,
//! the prompt is the text before the cursor (the model continues it) and the suggestion is the generated text
//! up to the first blank line.

use crate::config::Config;
use crate::engine::{Engine, GenerateRequest, SamplingParams};

/// What a completion is asked for.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// Text before the cursor (line breaks normalised to `\n`).
    pub prefix: &'a str,
    /// Text after the cursor (line breaks normalised to `\n`).
    pub suffix: &'a str,
    /// The file's path, when the document is a file.
    pub path: Option<&'a str>,
    pub language_id: &'a str,
}

/// Builds the generation request for a completion (tokenizes: run it off the async runtime).
pub fn prepare(
    engine: &Engine,
    config: &Config,
    input: &Input<'_>,
) -> Result<GenerateRequest, String> {
    let tokenizer = engine.tokenizer();
    let window = engine.info().context_window;
    let budget = window.saturating_sub(config.max_tokens + 1).max(1);
    let mut ids: Vec<u32> = Vec::new();
    if tokenizer.add_bos() {
        ids.extend(tokenizer.bos_id());
    }
    let text = tokenizer.encode(input.prefix, tokenizer.add_space_prefix());
    let keep = budget.saturating_sub(ids.len());
    ids.extend_from_slice(&text[text.len().saturating_sub(keep)..]);
    if ids.is_empty() {
        return Err("nothing to complete".into());
    }
    let mut request = GenerateRequest::new(ids, config.max_tokens);
    request.sampling = SamplingParams {
        temperature: config.temperature,
        ..SamplingParams::default()
    };
    request.stop_strings = vec!["\n\n".to_string()];
    Ok(request)
}

/// Turns what the model generated into the suggestion to show, or nothing.
pub fn finish(_input: &Input<'_>, raw: &str) -> Option<String> {
    let text = raw.trim_end();
    (!text.trim().is_empty()).then(|| text.to_string())
}
