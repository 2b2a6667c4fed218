//! The server's way into the shared completion pipeline (`codellama_text::completion`: FIM prompt, engine, post-processing
//! inside the decode loop): the server's settings turned into a completion request, and prompt builders kept per
//! model and prompt settings.

use std::sync::{Arc, Mutex, Weak};

use crate::config::Config;
use codellama_engine::{Backend, CancelToken};
use codellama_text::completion::{self, Prepared};
use codellama_text::language::Language;
use codellama_text::prompt::{ContextChunk, PromptBuilder, PromptConfig};

/// What a completion is asked for.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// Text before the cursor (line breaks normalised to `\n`).
    pub prefix: &'a str,
    /// The document line `prefix` starts on.
    pub first_line: usize,
    /// Text after the cursor (line breaks normalised to `\n`).
    pub suffix: &'a str,
    /// The file's path, when the document is a file.
    pub path: Option<&'a str>,
    pub language_id: &'a str,
    /// Other open documents, most recently edited first.
    pub context: &'a [ContextChunk],
}

/// Prompt builders are made once per model and prompt settings (they look up the template's tokens).
#[derive(Default)]
pub struct Builders {
    last: Mutex<Option<CachedBuilder>>,
}

struct CachedBuilder {
    /// Not an address: a model loaded later can get a dropped model's address (and would be handed its
    /// builder, for another vocabulary); a `Weak` keeps the address taken and keeps no model alive.
    backend: Weak<dyn Backend>,
    config: PromptConfig,
    builder: Result<Arc<PromptBuilder>, String>,
}

impl Builders {
    fn get(
        &self,
        backend: &Arc<dyn Backend>,
        config: PromptConfig,
    ) -> Result<Arc<PromptBuilder>, String> {
        let key = Arc::downgrade(backend);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = last
            .as_ref()
            .filter(|c| c.backend.ptr_eq(&key) && c.config == config)
        {
            return c.builder.clone();
        }
        let builder = PromptBuilder::new(backend.tokenizer().clone(), &config)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        match &builder {
            Ok(b) => tracing::info!(
                "fill-in-the-middle template: {} ({:?})",
                b.template().name(),
                b.order()
            ),
            Err(e) => tracing::warn!("no prompt can be built with these settings: {e}"),
        }
        *last = Some(CachedBuilder {
            backend: key,
            config,
            builder: builder.clone(),
        });
        builder
    }
}

/// Builds the prompt and the generation request, not yet queued (tokenizes: run it off the async runtime).
pub fn prepare(
    builders: &Builders,
    backend: &Arc<dyn Backend>,
    config: &Config,
    input: &Input<'_>,
    cancel: CancelToken,
) -> Result<Prepared, String> {
    let builder = builders.get(backend, config.prompt_config())?;
    let mut req = config.completion_request(input.prefix, input.suffix);
    req.first_line = input.first_line;
    req.path = input.path.map(str::to_string);
    // An id post-processing does not know says nothing: then the file name decides the language.
    req.language_id = (Language::from_language_id(input.language_id) != Language::Other)
        .then(|| input.language_id.to_string());
    req.extra = input.context.to_vec();
    req.cancel = cancel;
    let prepared = completion::prepare(&**backend, &builder, &req).map_err(|e| e.to_string())?;
    if prepared.prompt().ids.is_empty() {
        // Continuation at the top of an empty document: nothing to continue.
        return Err("the prompt is empty".into());
    }
    Ok(prepared)
}
