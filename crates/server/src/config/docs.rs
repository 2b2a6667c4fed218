//! The settings references generated from the configuration: the table in docs/configuration.md, the VS Code
//! extension's `contributes.configuration` (editors/vscode/package.json) and the settings of the Neovim help
//! (editors/nvim/doc/codellama.txt). Each file keeps its hand-written text; the generated part sits between two
//! marker lines that stay. `tests/config_docs.rs` fails when a checked-in file differs from what this module
//! generates, and rewrites the files when run with `UPDATE_GENERATED=1`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Config, FieldDoc, ENV_PREFIX};

/// The part of a checked-in file that is generated: the lines strictly between `begin` and `end`.
pub struct Generated {
    /// Relative to the repository root.
    pub path: &'static str,
    pub begin: &'static str,
    pub end: &'static str,
    pub text: String,
}

/// Every generated part, one per file.
pub fn generated() -> Vec<Generated> {
    vec![
        Generated {
            path: "docs/configuration.md",
            begin: "<!-- generated: codellama-lsp config --markdown -->",
            end: "<!-- end generated -->",
            text: format!("\n{}\n", markdown()),
        },
        Generated {
            path: "editors/vscode/package.json",
            begin: r#"      "properties": {"#,
            end: "      }",
            text: vscode_properties(),
        },
        Generated {
            path: "editors/nvim/doc/codellama.txt",
            begin: "The list below is generated from the server's crates/server/src/config.rs.",
            end: "KEYS                                                       *codellama-keys*",
            text: vimdoc(),
        },
    ]
}

impl Generated {
    /// `current` with the generated part replaced by this one. Err names the marker line that is missing.
    pub fn splice(&self, current: &str) -> Result<String, String> {
        let missing = |marker: &str| format!("{}: no line {marker:?}", self.path);
        let begin = line_end(current, self.begin, 0).ok_or_else(|| missing(self.begin))?;
        let end = line_start(current, self.end, begin).ok_or_else(|| missing(self.end))?;
        Ok(format!(
            "{}{}{}",
            &current[..begin],
            self.text,
            &current[end..]
        ))
    }
}

/// Byte offset just past the first line equal to `line` at or after `from`.
fn line_end(text: &str, line: &str, from: usize) -> Option<usize> {
    let start = line_start(text, line, from)?;
    Some(
        text[start..]
            .find('\n')
            .map_or(text.len(), |i| start + i + 1),
    )
}

/// Byte offset of the first line equal to `line` at or after `from` (a line start).
fn line_start(text: &str, line: &str, from: usize) -> Option<usize> {
    let mut offset = from;
    for l in text[from..].split_inclusive('\n') {
        if l.trim_end_matches(['\r', '\n']) == line {
            return Some(offset);
        }
        offset += l.len();
    }
    None
}

/// Settings of the VS Code extension itself: the server never sees them.
fn vscode_only() -> Vec<(&'static str, Value)> {
    vec![
        (
            "codellama.serverPath",
            json!({
                "type": "string",
                "default": "",
                "markdownDescription": "Path to the `codellama-lsp` binary. Empty: the server this extension brings \
                    (the `.vsix` for your platform, built by `scripts/package-vscode`), then `codellama-lsp` on \
                    `PATH`, then `~/.cargo/bin/codellama-lsp` (`cargo install --path .` in the codellama-lsp \
                    repository).",
                "scope": "machine-overridable",
            }),
        ),
        (
            "codellama.enableInlineSuggestions",
            json!({
                "type": "boolean",
                "default": true,
                "markdownDescription": "Show Code Llama suggestions as ghost text while typing (`Tab` accepts; \
                    `Ctrl+Right` accepts a word).",
            }),
        ),
    ]
}

/// Settings that name files or hardware of one machine: VS Code keeps them out of shared workspace settings.
const MACHINE_SCOPED: &[&str] = &[
    "model",
    "chat_model",
    "backend",
    "remote",
    "threads",
    "device",
];

/// The table of docs/configuration.md (also `codellama-lsp config --markdown`): the server's settings, then
/// those of the VS Code extension alone.
pub fn markdown() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::new();
    out.push_str("| Key | VS Code | Type | Default | Environment variable | Description |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for f in Config::fields() {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | `{}` | `{ENV_PREFIX}{}` | {} |",
            f.key,
            f.vscode_name(),
            cell(f.ty),
            cell(&f.default),
            f.key.to_ascii_uppercase(),
            cell(&f.doc)
        );
    }
    out.push_str("\nSettings of the VS Code extension alone (the server never sees them):\n\n");
    out.push_str("| VS Code | Type | Default | Description |\n|---|---|---|---|\n");
    for (name, schema) in vscode_only() {
        let _ = writeln!(
            out,
            "| `{name}` | {} | `{}` | {} |",
            schema["type"].as_str().unwrap_or_default(),
            schema["default"],
            cell(schema["markdownDescription"].as_str().unwrap_or_default())
        );
    }
    out
}

/// The members of `contributes.configuration.properties` in package.json, indented as npm writes the file.
pub fn vscode_properties() -> String {
    let mut properties: Vec<(String, Value)> = vscode_only()
        .into_iter()
        .map(|(name, property)| (name.to_string(), property))
        .collect();
    properties.extend(Config::fields().into_iter().map(|f| {
        let name = f.vscode_name();
        (name, vscode_property(f))
    }));
    let members: Vec<String> = properties
        .into_iter()
        .map(|(name, property)| {
            let body = serde_json::to_string_pretty(&property).unwrap_or_default();
            format!("{name:?}: {body}").replace('\n', "\n        ")
        })
        .collect();
    format!("        {}\n", members.join(",\n        "))
}

fn vscode_property(f: FieldDoc) -> Value {
    let mut property = f.schema;
    property["markdownDescription"] = f.doc.into();
    if MACHINE_SCOPED.contains(&f.key) {
        property["scope"] = "machine-overridable".into();
    }
    property
}

/// The settings of the Neovim help, one entry per key with a tag (`:help codellama-max_tokens`).
pub fn vimdoc() -> String {
    let mut out = String::from("\n");
    for f in Config::fields() {
        let head = format!("{} ({}, default {})", f.key, f.ty, f.default);
        let tag = format!("*codellama-{}*", f.key);
        match HELP_WIDTH.checked_sub(head.len() + tag.len()) {
            Some(pad) if pad > 0 => out.push_str(&format!("{head}{}{tag}\n", " ".repeat(pad))),
            _ => out.push_str(&format!(
                "{}{tag}\n{head}\n",
                " ".repeat(HELP_WIDTH - tag.len())
            )),
        }
        for line in wrap(&f.doc, HELP_WIDTH - 4) {
            out.push_str(&format!("    {line}\n"));
        }
        out.push('\n');
    }
    out
}

/// Neovim help files are 78 columns wide (`tw=78` in their modeline).
const HELP_WIDTH: usize = 78;

/// Greedy word wrap; a word longer than `width` gets its own line. (Ten lines: not worth a crate.)
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_lines_between_the_markers() {
        let part = Generated {
            path: "x",
            begin: "<!-- a -->",
            end: "<!-- b -->",
            text: "new\n".into(),
        };
        let text = "head\n<!-- a -->\nold\nolder\n<!-- b -->\ntail\n";
        assert_eq!(
            part.splice(text).unwrap(),
            "head\n<!-- a -->\nnew\n<!-- b -->\ntail\n"
        );
        let err = part.splice("head\n<!-- a -->\nold\n").unwrap_err();
        assert!(err.contains("<!-- b -->"), "{err}");
    }

    #[test]
    fn vscode_names_are_camel_case() {
        let names: Vec<String> = Config::fields().iter().map(FieldDoc::vscode_name).collect();
        assert!(names.contains(&"codellama.maxTokens".to_string()));
        assert!(names.contains(&"codellama.prefixSuffixRatio".to_string()));
        assert!(names.contains(&"codellama.model".to_string()));
    }

    #[test]
    fn vscode_properties_are_a_json_object_with_the_defaults() {
        let object: Value = serde_json::from_str(&format!("{{{}}}", vscode_properties())).unwrap();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for f in Config::fields() {
            let property = &object[f.vscode_name()];
            assert!(property["markdownDescription"].is_string(), "{}", f.key);
            // An empty text box means null to the server.
            let default = match &defaults[f.key] {
                Value::Null if property["type"] == "string" => json!(""),
                Value::Number(n) => json!(n.as_f64()),
                other => other.clone(),
            };
            let shown = match &property["default"] {
                Value::Number(n) => json!(n.as_f64()),
                other => other.clone(),
            };
            assert_eq!(shown, default, "{}", f.key);
        }
        assert_eq!(object["codellama.logLevel"]["enum"][0], "off");
        assert_eq!(
            object["codellama.serverPath"]["scope"],
            "machine-overridable"
        );
    }

    #[test]
    fn help_lines_fit_the_width() {
        for line in vimdoc().lines() {
            assert!(line.len() <= HELP_WIDTH, "{line:?}");
        }
        assert!(vimdoc().contains("*codellama-cache_size*"));
    }
}
