//! Language detection and per-language facts.
//!
//! One place that knows, for each language we care about, how it is named (LSP language ids, file extensions,
//! the human name used in prompts), how it writes comments and doc comments, and the few lexical facts that
//! post-processing needs (string delimiters, brackets, block keywords). Nothing here knows about LSP types:
//! callers pass the `languageId` string or a path.
//!
//! Unknown languages map to [`Language::Other`], which has no comment syntax and only bracket facts, so every
//! rule that depends on syntax degrades to "do nothing" rather than guessing.

use std::path::Path;

/// A programming language, as far as prompts and post-processing need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Language {
    Python,
    Rust,
    JavaScript,
    TypeScript,
    Go,
    C,
    Cpp,
    Java,
    Lua,
    Shell,
    /// Anything else: plain text rules only.
    Other,
}

/// How a language documents an item (function, type, module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocComment {
    /// Every line of the comment starts with this marker, above the item (Rust `///`, Go `//`, Lua `---`).
    LinePrefix(&'static str),
    /// A block comment above the item, with a per-line prefix (JSDoc, Javadoc, Doxygen: `/**`, ` * `, ` */`).
    Block {
        open: &'static str,
        line_prefix: &'static str,
        close: &'static str,
    },
    /// A string literal as the first statement inside the item's body (Python `"""`).
    Docstring { quote: &'static str },
}

/// How a string (or character) literal is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringDelimiter {
    /// Opens and closes the literal (`"`, `'`, `"""`, `` ` ``).
    pub quote: &'static str,
    /// Whether the literal may span lines; a single-line literal left open ends at the line break.
    pub multiline: bool,
    /// Whether a backslash escapes the next character inside the literal.
    pub escapes: bool,
}

const fn delim(quote: &'static str, multiline: bool, escapes: bool) -> StringDelimiter {
    StringDelimiter {
        quote,
        multiline,
        escapes,
    }
}

const ALL_BRACKETS: &[(char, char)] = &[('(', ')'), ('[', ']'), ('{', '}')];
// In shell, `)` ends `case` patterns without an opener, so parentheses are not tracked.
const SHELL_BRACKETS: &[(char, char)] = &[('[', ']'), ('{', '}')];

impl Language {
    /// Every language, `Other` last.
    pub const ALL: [Language; 11] = [
        Language::Python,
        Language::Rust,
        Language::JavaScript,
        Language::TypeScript,
        Language::Go,
        Language::C,
        Language::Cpp,
        Language::Java,
        Language::Lua,
        Language::Shell,
        Language::Other,
    ];

    /// From an LSP `languageId` (VS Code ids and Neovim filetypes); unknown ids give [`Language::Other`].
    pub fn from_language_id(id: &str) -> Language {
        match id.trim().to_ascii_lowercase().as_str() {
            "python" | "python3" => Language::Python,
            "rust" => Language::Rust,
            "javascript" | "javascriptreact" | "jsx" => Language::JavaScript,
            "typescript" | "typescriptreact" | "tsx" => Language::TypeScript,
            "go" => Language::Go,
            "c" => Language::C,
            "cpp" | "c++" | "cuda-cpp" | "cuda" | "objcpp" => Language::Cpp,
            "java" => Language::Java,
            "lua" => Language::Lua,
            "sh" | "shellscript" | "shell" | "bash" | "zsh" | "ksh" => Language::Shell,
            _ => Language::Other,
        }
    }

    /// From a file path, by extension (and a few well-known shell file names); unknown gives
    /// [`Language::Other`]. A `.h` header counts as C.
    pub fn from_path(path: &Path) -> Language {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if matches!(
            name,
            ".bashrc" | ".bash_profile" | ".profile" | ".zshrc" | ".zprofile" | ".kshrc"
        ) {
            return Language::Shell;
        }
        let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
            return Language::Other;
        };
        match ext.to_ascii_lowercase().as_str() {
            "py" | "pyi" | "pyw" => Language::Python,
            "rs" => Language::Rust,
            "js" | "mjs" | "cjs" | "jsx" => Language::JavaScript,
            "ts" | "mts" | "cts" | "tsx" => Language::TypeScript,
            "go" => Language::Go,
            "c" | "h" => Language::C,
            "cc" | "cpp" | "cxx" | "c++" | "hh" | "hpp" | "hxx" | "h++" | "ipp" | "inl" | "cu"
            | "cuh" => Language::Cpp,
            "java" => Language::Java,
            "lua" => Language::Lua,
            "sh" | "bash" | "zsh" | "ksh" => Language::Shell,
            _ => Language::Other,
        }
    }

    /// The human name, for prompts ("Explain this Rust code").
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "Python",
            Language::Rust => "Rust",
            Language::JavaScript => "JavaScript",
            Language::TypeScript => "TypeScript",
            Language::Go => "Go",
            Language::C => "C",
            Language::Cpp => "C++",
            Language::Java => "Java",
            Language::Lua => "Lua",
            Language::Shell => "shell",
            Language::Other => "text",
        }
    }

    /// The canonical LSP language id (`"shellscript"` for shell, `"plaintext"` for other).
    pub fn language_id(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Rust => "rust",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Go => "go",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Java => "java",
            Language::Lua => "lua",
            Language::Shell => "shellscript",
            Language::Other => "plaintext",
        }
    }

    /// The line comment marker (`#`, `//`, `--`).
    pub fn line_comment(self) -> Option<&'static str> {
        match self {
            Language::Python | Language::Shell => Some("#"),
            Language::Rust
            | Language::JavaScript
            | Language::TypeScript
            | Language::Go
            | Language::C
            | Language::Cpp
            | Language::Java => Some("//"),
            Language::Lua => Some("--"),
            Language::Other => None,
        }
    }

    /// Whether the line comment marker only starts a comment at the beginning of a word (shell: `$#` and
    /// `${#x}` are not comments).
    pub fn line_comment_needs_word_start(self) -> bool {
        self == Language::Shell
    }

    /// The block comment delimiters (`/*`, `*/`), if the language has them.
    pub fn block_comment(self) -> Option<(&'static str, &'static str)> {
        match self {
            Language::Rust
            | Language::JavaScript
            | Language::TypeScript
            | Language::Go
            | Language::C
            | Language::Cpp
            | Language::Java => Some(("/*", "*/")),
            Language::Lua => Some(("--[[", "]]")),
            Language::Python | Language::Shell | Language::Other => None,
        }
    }

    /// How items are documented.
    pub fn doc_comment(self) -> Option<DocComment> {
        const C_BLOCK: DocComment = DocComment::Block {
            open: "/**",
            line_prefix: " * ",
            close: " */",
        };
        match self {
            Language::Python => Some(DocComment::Docstring { quote: "\"\"\"" }),
            Language::Rust => Some(DocComment::LinePrefix("///")),
            Language::JavaScript
            | Language::TypeScript
            | Language::C
            | Language::Cpp
            | Language::Java => Some(C_BLOCK),
            Language::Go => Some(DocComment::LinePrefix("//")),
            Language::Lua => Some(DocComment::LinePrefix("---")),
            Language::Shell => Some(DocComment::LinePrefix("#")),
            Language::Other => None,
        }
    }

    /// String and character literal delimiters, longest first so that `"""` wins over `"`.
    pub fn string_delimiters(self) -> &'static [StringDelimiter] {
        const PYTHON: &[StringDelimiter] = &[
            delim("\"\"\"", true, true),
            delim("'''", true, true),
            delim("\"", false, true),
            delim("'", false, true),
        ];
        const JS: &[StringDelimiter] = &[
            delim("`", true, true),
            delim("\"", false, true),
            delim("'", false, true),
        ];
        const GO: &[StringDelimiter] = &[
            delim("`", true, false),
            delim("\"", false, true),
            delim("'", false, true),
        ];
        // Rust `'` is handled by `has_rust_char_literals` (it is also the lifetime sigil).
        const RUST: &[StringDelimiter] = &[delim("\"", false, true)];
        const C: &[StringDelimiter] = &[delim("\"", false, true), delim("'", false, true)];
        const JAVA: &[StringDelimiter] = &[
            delim("\"\"\"", true, true),
            delim("\"", false, true),
            delim("'", false, true),
        ];
        const LUA: &[StringDelimiter] = &[delim("\"", false, true), delim("'", false, true)];
        const SHELL: &[StringDelimiter] = &[delim("\"", false, true), delim("'", false, false)];
        match self {
            Language::Python => PYTHON,
            Language::JavaScript | Language::TypeScript => JS,
            Language::Go => GO,
            Language::Rust => RUST,
            Language::C | Language::Cpp => C,
            Language::Java => JAVA,
            Language::Lua => LUA,
            Language::Shell => SHELL,
            Language::Other => &[],
        }
    }

    /// Whether `'` starts a character literal only when one (possibly escaped) character and a closing `'`
    /// follow, and is otherwise a lifetime or label (Rust).
    pub fn has_rust_char_literals(self) -> bool {
        self == Language::Rust
    }

    /// Bracket pairs (opener, closer) that nest in code.
    pub fn brackets(self) -> &'static [(char, char)] {
        match self {
            Language::Shell => SHELL_BRACKETS,
            _ => ALL_BRACKETS,
        }
    }

    /// Keywords that close a block when they start a line (Lua `end`, shell `fi`).
    pub fn closing_keywords(self) -> &'static [&'static str] {
        match self {
            Language::Lua => &["end", "until"],
            Language::Shell => &["fi", "done", "esac"],
            _ => &[],
        }
    }

    /// Keywords that, starting a line at the indentation of a block's opener, continue the same statement
    /// with a new block (`else`, `elif`, `except`).
    pub fn continuation_keywords(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["else", "elif", "except", "finally"],
            Language::Lua => &["else", "elseif"],
            Language::Shell => &["else", "elif"],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_ids() {
        let cases = [
            ("python", Language::Python),
            ("rust", Language::Rust),
            ("javascript", Language::JavaScript),
            ("javascriptreact", Language::JavaScript),
            ("typescript", Language::TypeScript),
            ("typescriptreact", Language::TypeScript),
            ("go", Language::Go),
            ("c", Language::C),
            ("cpp", Language::Cpp),
            ("java", Language::Java),
            ("lua", Language::Lua),
            ("sh", Language::Shell),
            ("shellscript", Language::Shell),
            ("bash", Language::Shell),
            ("Rust", Language::Rust),
            ("markdown", Language::Other),
            ("", Language::Other),
        ];
        for (id, want) in cases {
            assert_eq!(Language::from_language_id(id), want, "{id}");
        }
        for lang in Language::ALL {
            assert_eq!(Language::from_language_id(lang.language_id()), lang);
        }
    }

    #[test]
    fn paths() {
        let cases = [
            ("src/main.rs", Language::Rust),
            ("a/b.py", Language::Python),
            ("x.PY", Language::Python),
            ("app.tsx", Language::TypeScript),
            ("app.mjs", Language::JavaScript),
            ("main.go", Language::Go),
            ("x.h", Language::C),
            ("x.hpp", Language::Cpp),
            ("x.cc", Language::Cpp),
            ("Main.java", Language::Java),
            ("init.lua", Language::Lua),
            ("build.sh", Language::Shell),
            ("/home/u/.bashrc", Language::Shell),
            ("README", Language::Other),
            ("notes.md", Language::Other),
            ("", Language::Other),
        ];
        for (path, want) in cases {
            assert_eq!(Language::from_path(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn comments() {
        assert_eq!(Language::Python.line_comment(), Some("#"));
        assert_eq!(Language::Rust.line_comment(), Some("//"));
        assert_eq!(Language::Lua.line_comment(), Some("--"));
        assert_eq!(Language::Go.block_comment(), Some(("/*", "*/")));
        assert_eq!(Language::Python.block_comment(), None);
        assert_eq!(
            Language::Rust.doc_comment(),
            Some(DocComment::LinePrefix("///"))
        );
        assert_eq!(
            Language::Python.doc_comment(),
            Some(DocComment::Docstring { quote: "\"\"\"" })
        );
        assert!(matches!(
            Language::TypeScript.doc_comment(),
            Some(DocComment::Block { open: "/**", .. })
        ));
        assert_eq!(
            Language::Go.doc_comment(),
            Some(DocComment::LinePrefix("//"))
        );
        assert_eq!(Language::Other.doc_comment(), None);
        assert_eq!(Language::Cpp.name(), "C++");
    }

    #[test]
    fn delimiters_longest_first() {
        for lang in Language::ALL {
            let d = lang.string_delimiters();
            for pair in d.windows(2) {
                assert!(pair[0].quote.len() >= pair[1].quote.len(), "{lang:?}");
            }
        }
    }
}
