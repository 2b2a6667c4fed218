//! What an action is asked to do ([`Task`]) and what that means in a given document ([`Plan`]): the code
//! the prompt is about, the window of code around it, and where the result goes. Everything here is
//! checked against the document before the model is asked anything, so a bad range fails at once.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::language::Language;

use super::comment::comment_at;
use super::doc::has_doc;
use super::function::{enclosing_function, Function};
use super::indent::{indent_below, IndentStyle};
use super::source::{indentation, is_blank, line_ending, Lines, Source};
use super::ActionError;

/// The four code actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Explain the selected code (a comment block above it, and Markdown).
    Explain,
    /// Generate code from an instruction the user typed.
    Generate,
    /// Generate the code a comment describes, below the comment.
    GenerateFromComment,
    /// Write the enclosing function's doc comment.
    Document,
}

impl ActionKind {
    /// The title a client shows.
    pub fn title(self) -> &'static str {
        match self {
            ActionKind::Explain => "Explain this code",
            ActionKind::Generate => "Generate code from instruction",
            ActionKind::GenerateFromComment => "Generate code from this comment",
            ActionKind::Document => "Document this function",
        }
    }
}

/// An action on a document. Positions are byte offsets into the document's text, lines are 0-based.
/// Serializable so a server can keep it in a code action's `data` between listing and resolving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Explain the lines the selection touches (an empty selection: its line).
    Explain { selection: Range<usize> },
    /// Generate code following `instruction`, placed at `target`.
    Generate { instruction: String, target: Target },
    /// Generate the code that the comment at `line` (and the comment lines around it) asks for, inserted
    /// below the comment with its indentation.
    GenerateFromComment { line: usize },
    /// Document the function that encloses byte `position`.
    Document { position: usize },
}

impl Task {
    /// This task with the user's instruction (for an offered "Generate code from instruction").
    pub fn with_instruction(self, instruction: impl Into<String>) -> Task {
        match self {
            Task::Generate { target, .. } => Task::Generate {
                instruction: instruction.into(),
                target,
            },
            other => other,
        }
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            Task::Explain { .. } => ActionKind::Explain,
            Task::Generate { .. } => ActionKind::Generate,
            Task::GenerateFromComment { .. } => ActionKind::GenerateFromComment,
            Task::Document { .. } => ActionKind::Document,
        }
    }
}

/// Where generated code goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Replace the selection. A selection that starts in a line's indentation takes the whole indentation,
    /// one that ends at the end of a line's text (or at the start of the next line) keeps the line break.
    Replace(Range<usize>),
    /// At the cursor: on a blank line the code takes that line; otherwise it goes below the cursor's line.
    Cursor(usize),
    /// Below this line, indented like it (one level deeper when the line opens a block).
    BelowLine(usize),
}

impl Target {
    /// Where code generated for an editor selection goes: replacing it, or at the cursor when it is
    /// empty (byte offsets).
    pub fn for_selection(selection: Range<usize>) -> Target {
        if selection.is_empty() {
            Target::Cursor(selection.start)
        } else {
            Target::Replace(selection)
        }
    }
}

/// Lines of surrounding code each kind of action shows the model at most (before, after).
fn window_lines(kind: ActionKind) -> (usize, usize) {
    match kind {
        ActionKind::Explain => (30, 15),
        ActionKind::Generate | ActionKind::GenerateFromComment => (40, 20),
        ActionKind::Document => (10, 5),
    }
}

/// Where the result goes in the document.
#[derive(Debug, Clone)]
pub(crate) struct Insertion {
    /// Byte range replaced (empty: an insertion).
    pub range: Range<usize>,
    /// Indentation of the result's least indented lines.
    pub indent: String,
    /// The range starts after other text on its line: the first line gets no indentation.
    pub inline_start: bool,
    /// Insertion at the end of a document without a final line break: start with one.
    pub leading_break: bool,
    /// The result is whole lines: end it with a line break.
    pub trailing_break: bool,
}

/// A task resolved against a document.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub kind: ActionKind,
    pub language: Language,
    pub path: Option<String>,
    /// The code the task is about (selection, code to replace, function), as lines.
    pub focus: Vec<String>,
    /// Surrounding code, nearest last / nearest first.
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub instruction: Option<String>,
    pub function: Option<Function>,
    /// Lines the model may repeat at the start of generated code (the comment, the line above).
    pub echo: Vec<String>,
    pub insertion: Insertion,
    /// Indentation of a Python function's body (docstrings).
    pub body_indent: String,
    pub style: IndentStyle,
    pub line_ending: &'static str,
}

fn check_offset(text: &str, offset: usize, what: &str) -> Result<(), ActionError> {
    if offset > text.len() || !text.is_char_boundary(offset) {
        return Err(ActionError::OutOfRange(format!(
            "{what} (byte {offset}) is outside the document ({} bytes) or inside a character",
            text.len()
        )));
    }
    Ok(())
}

fn check_range(text: &str, r: &Range<usize>, what: &str) -> Result<(), ActionError> {
    if r.start > r.end {
        return Err(ActionError::OutOfRange(format!(
            "{what} starts after it ends ({}..{})",
            r.start, r.end
        )));
    }
    check_offset(text, r.start, what)?;
    check_offset(text, r.end, what)
}

fn check_line(lines: &Lines, line: usize) -> Result<(), ActionError> {
    if line >= lines.visible_count().max(1) {
        return Err(ActionError::OutOfRange(format!(
            "line {} is past the end of the document ({} lines)",
            line + 1,
            lines.visible_count()
        )));
    }
    Ok(())
}

/// The lines a byte range touches; a range ending at the start of a line does not touch that line.
fn touched_lines(lines: &Lines, r: &Range<usize>) -> Range<usize> {
    let first = lines.line_of(r.start);
    let mut last = lines.line_of(r.end);
    if r.end > r.start && last > first && lines.start(last) == r.end {
        last -= 1;
    }
    first..last + 1
}

impl Plan {
    pub fn new(source: &Source, task: &Task) -> Result<Plan, ActionError> {
        let lines = source.lines();
        let kind = task.kind();
        let style = IndentStyle::detect(source.text, source.language);
        let mut plan = Plan {
            kind,
            language: source.language,
            path: source.path.map(str::to_string),
            focus: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
            instruction: None,
            function: None,
            echo: Vec::new(),
            insertion: Insertion {
                range: 0..0,
                indent: String::new(),
                inline_start: false,
                leading_break: false,
                trailing_break: true,
            },
            body_indent: String::new(),
            style,
            line_ending: line_ending(source.text),
        };
        match task {
            Task::Explain { selection } => {
                check_range(source.text, selection, "the selection")?;
                let touched = touched_lines(&lines, selection);
                if touched.clone().all(|l| is_blank(lines.text(l))) {
                    return Err(ActionError::EmptySelection);
                }
                plan.focus_lines(&lines, touched.clone());
                plan.window(&lines, touched.start, touched.end);
                let at = lines.start(touched.start);
                plan.insertion.range = at..at;
                plan.insertion.indent = indentation(lines.text(touched.start)).to_string();
            }
            Task::Generate {
                instruction,
                target,
            } => {
                if instruction.trim().is_empty() {
                    return Err(ActionError::EmptyInstruction);
                }
                plan.instruction = Some(instruction.trim().to_string());
                plan.target(source, &lines, target)?;
            }
            Task::GenerateFromComment { line } => {
                check_line(&lines, *line)?;
                let comment =
                    comment_at(source, *line).ok_or(ActionError::NotAComment { line: line + 1 })?;
                plan.instruction = Some(comment.text.clone());
                plan.echo = (comment.first_line..=comment.last_line)
                    .map(|l| lines.text(l).trim().to_string())
                    .collect();
                plan.below(&lines, comment.last_line, comment.indent);
            }
            Task::Document { position } => {
                check_offset(source.text, *position, "the position")?;
                if source.language.doc_comment().is_none() {
                    return Err(ActionError::Unsupported(format!(
                        "no doc comment style is known for {} files",
                        source.language.name()
                    )));
                }
                let f = enclosing_function(source, *position).ok_or(ActionError::NoFunction {
                    line: lines.line_of(*position) + 1,
                })?;
                plan.focus_lines(&lines, f.first_line..f.last_line + 1);
                plan.window(&lines, f.first_line, f.last_line + 1);
                plan.body_indent = body_indent(&lines, &f, style);
                let at = lines.start(super::doc::doc_line(&f, source.language));
                plan.insertion.range = at..at;
                plan.insertion.indent = f.indent.clone();
                plan.function = Some(f);
            }
        }
        Ok(plan)
    }

    fn focus_lines(&mut self, lines: &Lines, range: Range<usize>) {
        self.focus = range.map(|l| lines.text(l).to_string()).collect();
    }

    /// The surrounding code: up to the kind's window of lines before `first` and from `end` on.
    fn window(&mut self, lines: &Lines, first: usize, end: usize) {
        let (n_before, n_after) = window_lines(self.kind);
        let from = first.saturating_sub(n_before);
        self.before = (from..first).map(|l| lines.text(l).to_string()).collect();
        let to = (end + n_after).min(lines.visible_count().max(end));
        self.after = (end..to).map(|l| lines.text(l).to_string()).collect();
        trim_blank_ends(&mut self.before);
        trim_blank_ends(&mut self.after);
    }

    fn target(
        &mut self,
        source: &Source,
        lines: &Lines,
        target: &Target,
    ) -> Result<(), ActionError> {
        let text = source.text;
        match target {
            Target::Replace(r) => {
                check_range(text, r, "the selection")?;
                if r.is_empty() {
                    return self.target(source, lines, &Target::Cursor(r.start));
                }
                let touched = touched_lines(lines, r);
                let first = lines.range(touched.start);
                let mut range = r.clone();
                let lead = &text[first.start..range.start];
                self.insertion.inline_start = !lead.trim().is_empty();
                if !self.insertion.inline_start {
                    range.start = first.start;
                }
                let last = lines.range(touched.end - 1);
                self.insertion.trailing_break = false;
                if range.end > last.end || text[range.end.min(last.end)..last.end].trim().is_empty()
                {
                    range.end = last.end;
                }
                self.insertion.indent = indentation(&text[first.clone()]).to_string();
                self.insertion.range = range.clone();
                self.focus = text[range].lines().map(str::to_string).collect();
                self.window(lines, touched.start, touched.end);
            }
            Target::Cursor(offset) => {
                check_offset(text, *offset, "the cursor")?;
                let line = lines.line_of(*offset);
                if !is_blank(lines.text(line)) {
                    return self.target(source, lines, &Target::BelowLine(line));
                }
                let here = lines.range(line);
                let current = &text[here.clone()];
                self.insertion.indent = if current.is_empty() {
                    match (0..line).rev().find(|&l| !is_blank(lines.text(l))) {
                        // Python closes blocks by indentation alone, and PEP 8 puts two blank lines
                        // around top-level definitions: an empty line after two blank lines is at the
                        // top level, not in the block above.
                        Some(above) if self.language == Language::Python && line - above > 2 => {
                            String::new()
                        }
                        Some(above) => indent_below(lines.text(above), self.language, self.style),
                        None => String::new(),
                    }
                } else {
                    current.to_string()
                };
                self.insertion.range = here;
                self.insertion.trailing_break = false;
                self.window(lines, line, line + 1);
            }
            Target::BelowLine(line) => {
                check_line(lines, *line)?;
                let anchor = lines.text(*line);
                self.echo = vec![anchor.trim().to_string()];
                let indent = indent_below(anchor, self.language, self.style);
                self.below(lines, *line, indent);
            }
        }
        Ok(())
    }

    fn below(&mut self, lines: &Lines, line: usize, indent: String) {
        let at = lines.next_start(line);
        self.insertion.range = at..at;
        self.insertion.indent = indent;
        self.insertion.leading_break = line + 1 == lines.count();
        self.insertion.trailing_break = !self.insertion.leading_break;
        self.window(lines, line + 1, line + 1);
    }
}

fn trim_blank_ends(lines: &mut Vec<String>) {
    while lines.last().is_some_and(|l| is_blank(l)) {
        lines.pop();
    }
    let lead = lines.iter().take_while(|l| is_blank(l)).count();
    lines.drain(..lead);
}

/// The indentation of a function's body: its first non-blank line after the signature, when deeper
/// than the header; else one level deeper than the header.
fn body_indent(lines: &Lines, f: &Function, style: IndentStyle) -> String {
    let header_cols = super::indent::columns(&f.indent);
    (f.signature_end_line + 1..=f.last_line)
        .map(|l| lines.text(l))
        .find(|t| !is_blank(t))
        .map(indentation)
        .filter(|ws| super::indent::columns(ws) > header_cols)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}{}", f.indent, style.unit()))
}

/// Whether "Document this function" makes sense at `position`: a function encloses it and has no doc
/// comment yet.
pub(crate) fn documentable(source: &Source, position: usize) -> bool {
    if source.language.doc_comment().is_none() {
        return false;
    }
    enclosing_function(source, position)
        .is_some_and(|f| !has_doc(&source.lines(), &f, source.language))
}
