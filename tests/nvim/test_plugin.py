"""The plugin against the real codellama-lsp: setup() starts it, ghost text appears while typing, the accept key
inserts exactly the suggestion, Tab without a suggestion is a Tab, :CodellamaExplain opens a float, and more."""
import re

import pytest

from conftest import BIN, MODEL, SETTINGS, requires_server, wait_for

SAMPLE = "def add(a, b):\n"


def type_and_wait_for_ghost(editor, keys="Goreturn"):
    editor.nv.input(keys)
    return wait_for(editor.ghost, "ghost text", timeout=60)


@requires_server
def test_setup_starts_the_server_with_the_settings(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    client = editor.lua(
        'local c = require("codellama").get_client(0)'
        " return { name = c.name, cmd = c.config.cmd, init_options = c.config.init_options,"
        " inline = c.server_capabilities.inlineCompletionProvider ~= nil,"
        " commands = c.server_capabilities.executeCommandProvider.commands }"
    )
    assert client["name"] == "codellama"
    assert client["cmd"] == [BIN, "serve"]
    assert client["init_options"] == SETTINGS
    assert client["inline"]
    assert {"codellama.explain", "codellama.generate", "codellama.cancel"} <= set(client["commands"])
    model = editor.lua('return require("codellama").status.model')
    assert editor.lua('return require("codellama").statusline()') in (f"Code Llama: ready · {model}",
                                                                      f"Code Llama: generating · {model}")


@requires_server
def test_typing_shows_ghost_text_and_tab_inserts_exactly_it(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    ghost = type_and_wait_for_ghost(editor)
    text, (row, col) = ghost["text"], ghost["anchor"]
    assert editor.mode() == "i"

    # What is drawn is the suggestion: its first line inline at the cursor, the rest as virtual lines.
    marks = editor.extmarks()
    assert len(marks) == 1
    _, mark_row, mark_col, details = marks[0]
    assert (mark_row, mark_col) == (row - 1, col)
    shown = [details["virt_text"][0][0] if details.get("virt_text") else ""]
    shown += ["".join(chunk[0] for chunk in line) for line in details.get("virt_lines", [])]
    tab = " " * editor.lua("return vim.bo.tabstop")
    assert shown == text.replace("\t", tab).split("\n")

    before = editor.lines()
    editor.nv.input("<Tab>")
    wait_for(lambda: editor.lines() != before, "the suggestion to be inserted", timeout=10)
    line = before[row - 1].encode()
    expected = before[: row - 1] + (line[:col] + text.encode() + line[col:]).decode().split("\n") + before[row:]
    assert editor.lines() == expected
    inserted = text.split("\n")
    cursor_row = row + len(inserted) - 1
    cursor_col = (col if len(inserted) == 1 else 0) + len(inserted[-1].encode())
    assert tuple(editor.nv.current.window.cursor) == (cursor_row, cursor_col)


def inserted_since(editor, anchor):
    """The text between `anchor` (1-based row, byte col) and the cursor."""
    row, col = editor.nv.current.window.cursor
    return "\n".join(editor.nv.api.buf_get_text(0, anchor[0] - 1, anchor[1], row - 1, col, {}))


#: What one accept_word / accept_line takes from the front of a suggestion (the documented rule): a word is the
#: spaces before it and a run of letters, digits and _ or a run of punctuation (or else the whitespace up to it); a
#: line is the text up to the next line break, or that line break and the line after it.
PARTS = {
    "word": re.compile(r"[ \t]*(?:\w+|[^\w\s]+)|\s+"),
    "line": re.compile(r"\n[^\n]*|[^\n]+"),
}


@requires_server
@pytest.mark.parametrize(
    "key, part, sample, keys",
    [
        ("<M-Right>", "word", SAMPLE, "Goreturn"),
        # A class body: the model suggests several lines.
        ("<M-C-Right>", "line", "class Point:\n    def __init__(self, x, y):\n", "Go"),
    ],
)
def test_accept_word_and_line_insert_only_the_next_part(editor, key, part, sample, keys):
    """On 0.11's extmark ghost text (0.12's vim.lsp.inline_completion does not exist in 0.11.4): each press inserts
    exactly the next word / line and keeps the rest shown at the cursor, until the whole suggestion is in."""
    editor.edit("sample.py", sample)
    editor.setup()
    editor.wait_ready()
    ghost = type_and_wait_for_ghost(editor, keys)
    expected = PARTS[part].findall(ghost["text"])
    assert "".join(expected) == ghost["text"]
    assert len(expected) >= 2, f"the model's suggestion {ghost['text']!r} has one {part} only: nothing to test"
    inserted = ""
    for chunk in expected:
        editor.nv.input(key)
        inserted += chunk
        wait_for(lambda: inserted_since(editor, ghost["anchor"]) == inserted, f"{inserted!r} inserted", timeout=10)
        rest = editor.ghost()
        if inserted == ghost["text"]:
            assert rest is None and not editor.extmarks()
        else:  # the rest stays shown, at the cursor
            assert rest and inserted + rest["text"] == ghost["text"], (inserted, rest)
            assert tuple(rest["anchor"]) == tuple(editor.nv.current.window.cursor)


@requires_server
def test_tab_without_a_suggestion_inserts_a_tab(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup(inline={"debounce_ms": 60000})  # no suggestion will be asked for
    editor.wait_ready()
    editor.nv.command("setlocal noexpandtab softtabstop=0")
    assert editor.lua('return vim.fn.maparg("<Tab>", "i", false, true).desc') == "codellama: accept"
    editor.nv.input("Go<C-u><Tab>x<Esc>")
    wait_for(lambda: editor.mode() == "n" and len(editor.lines()) == 2, "the new line", timeout=5)
    assert editor.lines()[1] == "\tx"


@requires_server
def test_leaving_insert_mode_clears_the_ghost_text(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    type_and_wait_for_ghost(editor)
    editor.nv.input("<Esc>")
    wait_for(lambda: not editor.extmarks(), "the ghost text to be cleared", timeout=5)


@requires_server
def test_dismiss_hides_the_suggestion(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    type_and_wait_for_ghost(editor)
    before = editor.lines()
    editor.nv.input("<C-]>")
    wait_for(lambda: not editor.extmarks(), "the ghost text to go", timeout=5)
    assert editor.lines() == before


@requires_server
def test_explain_opens_a_floating_window_with_text(editor):
    editor.edit("sample.py", "def add(a, b):\n    return a + b\n")
    editor.setup()
    editor.wait_ready()
    editor.nv.input("ggVj:CodellamaExplain<CR>")
    float_text = wait_for(
        lambda: editor.lua(
            "for _, w in ipairs(vim.api.nvim_list_wins()) do"
            "  if vim.api.nvim_win_get_config(w).relative ~= '' then"
            "    return table.concat(vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(w), 0, -1, false), '\\n')"
            "  end"
            " end"
        ),
        "the explanation float",
        timeout=120,
    )
    assert float_text.strip()


@requires_server
def test_generate_inserts_code(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    before = editor.lines()
    editor.nv.command("normal! G")
    editor.nv.command("CodellamaGenerate return the sum of a and b")
    wait_for(lambda: editor.lines() != before, "the generated code to be applied", timeout=120)


@requires_server
def test_checkhealth_reports_binary_server_and_model(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    editor.nv.command("checkhealth codellama")
    report = "\n".join(editor.lines())
    assert f"OK server binary: {BIN} (" in report, report
    assert "OK server running" in report, report
    assert "OK model loaded" in report, report


def test_missing_binary_is_reported_with_install_instructions(editor):
    editor.lua("_G.notes = {}; vim.notify = function(m, l) table.insert(_G.notes, { m, l }) end")
    editor.edit("sample.py", SAMPLE)
    editor.setup(cmd=["/nonexistent/codellama-lsp", "serve"])
    notes = editor.lua("return _G.notes")
    assert len(notes) == 1
    message, level = notes[0]
    assert "cargo install --path ." in message and "/nonexistent/codellama-lsp" in message
    assert level == editor.lua("return vim.log.levels.ERROR")
    editor.nv.command("checkhealth codellama")
    report = "\n".join(editor.lines())
    assert "ERROR server binary '/nonexistent/codellama-lsp' not found" in report, report


def test_setup_without_options_uses_the_defaults(editor):
    editor.lua("vim.notify = function() end")  # the default command is not on PATH here
    editor.lua('require("codellama").setup()')
    assert editor.lua('return require("codellama").config.cmd') == ["codellama-lsp", "serve"]
    assert editor.lua('return require("codellama").config.keymaps.accept') == "<Tab>"


def test_setup_validates_options(editor):
    with pytest.raises(Exception, match="cmd"):
        editor.setup(cmd="codellama-lsp serve")


@requires_server
def test_explain_code_action_shows_its_result(editor):
    """A code action that carries codellama.explain is run by the plugin, so its Markdown is shown, not dropped."""
    editor.edit("sample.py", "def add(a, b):\n    return a + b\n")
    editor.setup()
    editor.wait_ready()
    editor.lua(
        'local c = require("codellama").get_client(0)'
        " c:exec_cmd({ title = 'Explain', command = 'codellama.explain', arguments = { {"
        "   uri = vim.uri_from_bufnr(0), range = { start = { line = 0, character = 0 }, ['end'] = { line = 1, character = 16 } } } } },"
        " { bufnr = vim.api.nvim_get_current_buf() })"
    )
    wait_for(lambda: editor.lua('local w = require("codellama").explain_win; return w and vim.api.nvim_win_is_valid(w)'),
             "the explanation float", timeout=120)


@requires_server
def test_update_settings_sends_did_change_configuration(editor):
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    sent = editor.lua(
        "local c = require('codellama').get_client(0)"
        " local sent, notify = {}, c.notify"
        " c.notify = function(self, method, params) table.insert(sent, { method, params }); return notify(self, method, params) end"
        " require('codellama').update_settings({ max_tokens = 8, languages = { 'python' } })"
        " c.notify = notify"
        " return sent"
    )
    assert sent == [["workspace/didChangeConfiguration", {"settings": {"codellama": {**SETTINGS, "max_tokens": 8, "languages": ["python"]}}}]]
    # The server keeps answering after the change.
    type_and_wait_for_ghost(editor)


@requires_server
def test_explain_code_action_inserts_a_comment_block_above_the_code(editor):
    """vim.lsp.buf.code_action() lists the server's actions; "Explain this code" resolves to a comment block."""
    code = ["def add(a, b):", "    return a + b"]
    editor.edit("sample.py", "\n".join(code) + "\n")
    editor.setup()
    editor.wait_ready()
    editor.lua(
        "vim.lsp.buf.code_action({ apply = true, range = { start = { 1, 0 }, ['end'] = { 2, 16 } },"
        " filter = function(a) return a.title == 'Explain this code' end })"
    )
    lines = wait_for(lambda: editor.lines() if len(editor.lines()) > len(code) else None,
                     "the explanation to be inserted", timeout=120)
    # The comment block, then the code unchanged.
    assert lines[-2:] == code, lines
    block = lines[:-2]
    assert block and all(line.startswith("#") for line in block), lines


@requires_server
def test_generate_code_action_asks_for_the_instruction(editor):
    """"Generate code from instruction" carries no instruction: the plugin asks with vim.ui.input, then the server
    applies the code."""
    editor.edit("sample.py", SAMPLE)
    editor.setup()
    editor.wait_ready()
    before = editor.lines()
    editor.lua(
        "_G.asked = nil"
        " vim.ui.input = function(opts, on_confirm) _G.asked = opts.prompt; on_confirm('return the sum of a and b') end"
        " vim.lsp.buf.code_action({ apply = true, range = { start = { 2, 0 }, ['end'] = { 2, 0 } },"
        " filter = function(a) return a.title == 'Generate code from instruction' end })"
    )
    wait_for(lambda: editor.lines() != before, "the generated code to be applied", timeout=120)
    assert "generate" in editor.lua("return _G.asked")
