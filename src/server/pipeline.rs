//! The server's only contact with prompt building and post-processing: text around the cursor in, a
//! generation request (with the streaming stop rules plugged in) out; the model's text in, a suggestion out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, FimOrder as OrderSetting, FimTemplate as TemplateSetting};
use crate::engine::{Engine, GenerateRequest, SamplingParams, StopPolicy};
use crate::language::Language;
use crate::postprocess::{self, StreamDecision, StreamStopper};
use crate::prompt::{FimInput, FimOrder, FimTemplate, PromptBuilder, PromptConfig};

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

impl Input<'_> {
    pub fn language(&self) -> Language {
        match Language::from_language_id(self.language_id) {
            Language::Other => self.path.map_or(Language::Other, |p| {
                Language::from_path(std::path::Path::new(p))
            }),
            known => known,
        }
    }
}

/// A request ready for the engine, and how to turn its output into a suggestion.
pub struct Prepared {
    pub request: GenerateRequest,
    pub finisher: Finisher,
    /// The template used (`codellama`, `starcoder`, ...) and how much was cut, for the log.
    pub template: String,
    pub truncated_lines: (usize, usize),
}

/// Post-processing of one request's output.
pub struct Finisher(StreamStopper);

impl Finisher {
    /// The suggestion to show, or `None` when nothing worth showing is left.
    pub fn finish(&self, raw: &str) -> Option<String> {
        self.0.finalize(raw)
    }
}

/// The streaming rules, as the engine's stop policy.
struct Stopper(StreamStopper);

impl StopPolicy for Stopper {
    fn check(&mut self, text: &str, elapsed: Duration) -> Option<usize> {
        match self.0.check(text, elapsed) {
            StreamDecision::Continue => None,
            StreamDecision::Stop { at, .. } => Some(at),
        }
    }
}

/// Prompt builders are made once per model and prompt settings (they look up the template's tokens).
#[derive(Default)]
pub struct Builders {
    last: Mutex<Option<CachedBuilder>>,
}

struct CachedBuilder {
    engine: usize,
    config: PromptConfig,
    builder: Result<Arc<PromptBuilder>, String>,
}

impl Builders {
    fn get(
        &self,
        engine: &Arc<Engine>,
        config: PromptConfig,
    ) -> Result<Arc<PromptBuilder>, String> {
        let key = Arc::as_ptr(engine) as usize;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = last
            .as_ref()
            .filter(|c| c.engine == key && c.config == config)
        {
            return c.builder.clone();
        }
        let builder = PromptBuilder::new(engine.tokenizer().clone(), &config)
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
            engine: key,
            config,
            builder: builder.clone(),
        });
        builder
    }
}

fn prompt_config(config: &Config) -> PromptConfig {
    let template = match config.fim_template {
        TemplateSetting::Auto => None,
        TemplateSetting::CodeLlama => Some(FimTemplate::CodeLlama),
        TemplateSetting::StarCoder => Some(FimTemplate::StarCoder),
        TemplateSetting::DeepSeek => Some(FimTemplate::DeepSeek),
        TemplateSetting::Qwen => Some(FimTemplate::Qwen),
        TemplateSetting::CodeGemma => Some(FimTemplate::CodeGemma),
        TemplateSetting::None => Some(FimTemplate::Continuation),
    };
    let order = match config.fim_order {
        // SPM where the template supports it (the builder falls back to PSM otherwise).
        OrderSetting::Auto | OrderSetting::Spm => FimOrder::Spm,
        OrderSetting::Psm => FimOrder::Psm,
    };
    PromptConfig {
        template,
        order,
        prefix_suffix_ratio: config.prefix_suffix_ratio,
    }
}

/// Builds the generation request for a completion (tokenizes: run it off the async runtime).
pub fn prepare(
    builders: &Builders,
    engine: &Arc<Engine>,
    config: &Config,
    input: &Input<'_>,
) -> Result<Prepared, String> {
    let builder = builders.get(engine, prompt_config(config))?;
    let language = input.language();
    let fim = FimInput {
        prefix: input.prefix,
        suffix: input.suffix,
        path: input.path,
        language_id: Some(input.language_id),
    };
    let prompt = builder
        .fim(&fim, config.max_tokens, engine.info().context_window)
        .map_err(|e| e.to_string())?;
    if prompt.ids.is_empty() {
        // Continuation at the top of an empty document: nothing to continue.
        return Err("the prompt is empty".into());
    }
    // Post-processing sees all the text we have (its bracket balancing wants as much of the prefix as there is).
    let ctx = postprocess::Context::new(input.prefix, input.suffix, language);
    let stopper = StreamStopper::new(&ctx, &postprocess::Config::default());
    let mut request = GenerateRequest::new(prompt.ids, config.max_tokens);
    request.sampling = SamplingParams {
        temperature: config.temperature,
        ..SamplingParams::default()
    };
    request.stop_ids = prompt.stop_ids;
    request.policy = Some(Box::new(Stopper(stopper.clone())));
    Ok(Prepared {
        request,
        finisher: Finisher(stopper),
        template: format!("{} {:?}", prompt.template, prompt.order),
        truncated_lines: (prompt.truncated.prefix_lines, prompt.truncated.suffix_lines),
    })
}
