"""Neovim 0.11+ conventions and the status display, against the real server and model: vim.lsp.enable('codellama')
with lsp/codellama.lua and no setup(), the commands that plugin/codellama.lua defines before anything is loaded, the
statusline component through loading -> ready (model) -> latency, its error state, and :CodellamaLog."""
import os
import math
import re

from conftest import BIN, MODEL, SETTINGS, requires_server, wait_for

SAMPLE = "def add(a, b):\n"
COMMANDS = ["CodellamaExplain", "CodellamaGenerate", "CodellamaCancel", "CodellamaToggle", "CodellamaStatus",
            "CodellamaLog"]

#: The user's configuration for the tests, in the 0.11 way: vim.lsp.config, then vim.lsp.enable (no setup()).
ENABLE = """
vim.lsp.config('codellama', { cmd = ..., init_options = select(2, ...) })
vim.lsp.enable('codellama')
"""

#: Records the statusline text each time it changes (the User CodellamaStatus autocommand fires on each change).
RECORD = """
_G.shown = {}
vim.api.nvim_create_autocmd('User', { pattern = 'CodellamaStatus', callback = function()
  local text = require('codellama').statusline()
  if _G.shown[#_G.shown] ~= text then table.insert(_G.shown, text) end
end })
"""


def server_status(editor):
    return editor.lua('return require("codellama").status')


@requires_server
def test_enable_alone_attaches_and_suggests(editor):
    """A user who has the server on PATH (cargo install) and the model in the environment writes only
    vim.lsp.enable('codellama'): the server starts for the buffer, ghost text appears, Tab inserts it."""
    editor.lua(
        "vim.env.PATH = ... .. ':' .. vim.env.PATH"
        " vim.env.CODELLAMA_LSP_MODEL = select(2, ...)"
        " vim.env.CODELLAMA_LSP_MAX_TOKENS = '24'; vim.env.CODELLAMA_LSP_TEMPERATURE = '0'"
        " vim.env.CODELLAMA_LSP_THREADS = '2'",
        os.path.dirname(BIN), MODEL,
    )
    editor.edit("sample.py", SAMPLE)
    editor.lua("vim.lsp.enable('codellama')")
    editor.wait_ready()
    assert editor.lua("return package.loaded['codellama.ghost'] ~= nil and require('codellama').config == nil")
    client = editor.lua("local c = require('codellama').get_client(0) return { c.config.cmd, c.name }")
    assert client == [["codellama-lsp", "serve"], "codellama"]  # lsp/codellama.lua's command, found on PATH
    editor.nv.input("Goreturn")
    ghost = wait_for(editor.ghost, "ghost text", timeout=60)
    assert editor.lua('return vim.fn.maparg("<Tab>", "i", false, true).desc') == "codellama: accept"
    typed = editor.lines()[1]
    assert typed.strip() == "return"
    editor.nv.input("<Tab>")
    wait_for(lambda: editor.lines()[1] == typed + ghost["text"], "the suggestion inserted", timeout=10)


@requires_server
def test_enable_shares_one_server_across_buffers_and_roots(editor, tmp_path):
    """lsp/codellama.lua reuses the running client for every buffer: the model is loaded once."""
    (tmp_path / "a" / ".git").mkdir(parents=True)
    (tmp_path / "b" / ".git").mkdir(parents=True)
    editor.edit("a/one.py", SAMPLE)
    editor.lua(ENABLE, [BIN, "serve"], SETTINGS)
    editor.wait_ready()
    editor.edit("b/two.lua", "local x = 1\n")
    wait_for(lambda: editor.lua("return require('codellama').get_client(0) ~= nil"), "the second buffer to attach")
    assert editor.lua("return #vim.lsp.get_clients({ name = 'codellama' })") == 1


def test_commands_and_plug_mappings_exist_before_anything_is_loaded(editor):
    """plugin/codellama.lua defines the commands and <Plug> mappings at startup and loads nothing else."""
    defined = editor.lua("return vim.tbl_keys(vim.api.nvim_get_commands({}))")
    assert set(COMMANDS) <= set(defined)
    plugs = editor.lua(
        "local out = {} for _, m in ipairs(vim.api.nvim_get_keymap('i')) do"
        " if m.lhs:find('codellama') and m.callback then table.insert(out, m.lhs) end end return out"
    )
    assert {f"<Plug>(codellama-{n})" for n in ("accept", "accept-word", "accept-line", "dismiss", "next", "prev")} \
        <= set(plugs)
    assert editor.lua("return vim.tbl_filter(function(m) return m:find('^codellama') end, vim.tbl_keys(package.loaded))") \
        == []
    # They work with no server: the status says so, the toggle turns suggestions off.
    assert editor.nv.command_output("CodellamaStatus") == "Code Llama: not running"
    editor.nv.command("CodellamaToggle")
    assert editor.lua("return require('codellama.ghost').options.enabled") is False


@requires_server
def test_commands_work_with_enable_and_no_setup(editor):
    editor.edit("sample.py", "def add(a, b):\n    return a + b\n")
    editor.lua(ENABLE, [BIN, "serve"], SETTINGS)
    editor.wait_ready()
    assert editor.nv.command_output("CodellamaStatus").startswith("Code Llama: ready · ")
    editor.nv.input("ggVj:CodellamaExplain<CR>")
    wait_for(lambda: editor.lua('local w = require("codellama").explain_win; return w and vim.api.nvim_win_is_valid(w)'),
             "the explanation float", timeout=120)
    editor.nv.command("checkhealth codellama")
    report = "\n".join(editor.lines())
    assert "OK started by vim.lsp.enable('codellama')" in report, report
    assert f"OK server binary: {BIN} (" in report, report
    assert "OK model loaded" in report, report


@requires_server
def test_statusline_goes_from_loading_to_ready_to_latency(editor):
    editor.lua(RECORD)
    editor.nv.command("set laststatus=2 statusline=%{v:lua.require'codellama'.statusline()}")
    editor.edit("sample.py", SAMPLE)
    editor.lua(ENABLE, [BIN, "serve"], SETTINGS)
    editor.wait_ready()
    model = server_status(editor)["model"]
    assert model
    ready = f"Code Llama: ready · {model}"
    wait_for(lambda: ready in editor.lua("return _G.shown"), "the ready text", timeout=10)
    shown = editor.lua("return _G.shown")
    loading = [i for i, t in enumerate(shown) if re.fullmatch(r"Code Llama: loading \d+%", t)]
    assert loading and loading[0] < shown.index(ready), shown

    editor.nv.input("Goreturn")
    wait_for(editor.ghost, "ghost text", timeout=60)
    timings = wait_for(lambda: (server_status(editor) or {}).get("timings"), "the timings", timeout=10)
    # Half up, as the plugin rounds (Lua's floor(x + 0.5)); Python's round() takes halves to even, and the server
    # sends total_ms to a tenth, so x.5 comes up one time in ten.
    tok_s = math.floor(timings["generated_tokens"] * 1000 / timings["decode_ms"] + 0.5)
    expected = f"{ready} · {math.floor(timings['total_ms'] + 0.5)} ms, {tok_s} tok/s"
    wait_for(lambda: expected in editor.lua("return _G.shown"), expected, timeout=10)
    # What the 'statusline' option draws is the same text.
    drawn = editor.lua("return vim.api.nvim_eval_statusline(vim.o.statusline, {}).str")
    assert drawn.startswith(ready) and " ms, " in drawn and drawn.endswith(" tok/s"), drawn

    # The model reloaded (a new context window): ready again, without the timings of the model before.
    editor.lua("_G.shown = {}; vim.lsp.get_clients({ name = 'codellama' })[1]:notify("
               "'workspace/didChangeConfiguration', { settings = { codellama = ... } })",
               {**SETTINGS, "context_window": 1024})
    wait_for(lambda: re.fullmatch(r"Code Llama: loading \d+%", editor.lua("return _G.shown[1] or ''")), "loading",
             timeout=30)
    wait_for(lambda: editor.lua("return _G.shown")[-1] == ready, "the ready text without timings", timeout=30)


@requires_server
def test_statusline_shows_the_error_of_a_bad_model_path(editor, tmp_path):
    editor.lua("_G.notes = {}; vim.notify = function(m, l) table.insert(_G.notes, { m, l }) end")
    editor.edit("sample.py", SAMPLE)
    bad = str(tmp_path / "missing" / "model.gguf")
    editor.lua(ENABLE, [BIN, "serve"], {**SETTINGS, "model": bad})
    status = wait_for(lambda: (s := server_status(editor)) and s["state"] == "error" and s, "the error status",
                      timeout=60)
    assert bad in status["message"]
    text = editor.lua('return require("codellama").statusline()')
    assert text.startswith("Code Llama: error: "), text
    shown = text.removeprefix("Code Llama: error: ")
    assert len(shown) <= 60 and status["message"].startswith(shown.removesuffix("…")), (shown, status["message"])
    assert any(bad in m and level == editor.lua("return vim.log.levels.ERROR") for m, level in editor.lua("return _G.notes"))


@requires_server
def test_log_command_shows_the_server_log_as_it_grows(editor):
    editor.edit("sample.py", SAMPLE)
    editor.nv.command("CodellamaLog")  # opened before the server starts: it fills in while open
    log_buf = editor.lua("return vim.api.nvim_get_current_buf()")
    assert editor.lua("return vim.api.nvim_buf_get_name(0)") == "codellama://log"
    editor.nv.command("wincmd p")
    editor.lua(ENABLE, [BIN, "serve"], SETTINGS)
    editor.wait_ready()

    def log_lines():
        return editor.lua("return vim.api.nvim_buf_get_lines(..., 0, -1, false)", log_buf)

    lines = wait_for(lambda: (ls := log_lines()) and any(" ready in " in line for line in ls) and ls,
                     "the model's ready line in the log", timeout=30)
    assert "lsp.log" in lines[0]  # where stderr goes
    assert any(re.match(r"\[\d\d:\d\d:\d\d\] INFO loading the model \(", line) for line in lines), lines
    assert editor.lua("return vim.bo[...].modifiable", log_buf) is False


def test_statusline_takes_a_download_from_progress_reports(editor):
    """A download is reported only through $/progress. The server has no download yet (issue 14, item 2), so this
    feeds the notifications the way Neovim's handlers pass them on: a stand-in for a state no real part produces."""
    statusline = "return require('codellama.status').statusline(1)"
    editor.lua("require('codellama.status').on_status({ state = 'loading', message = 'loading m', progress = 0 }, 1)")
    assert editor.lua(statusline) == "Code Llama: loading 0%"
    editor.lua("require('codellama.status').on_progress({ token = 't', value = { kind = 'begin', title = 'Code Llama',"
               " message = 'downloading m.gguf (491 MB)', percentage = 0 } })")
    editor.lua("require('codellama.status').on_progress({ token = 't', value = { kind = 'report', percentage = 12 } })")
    assert editor.lua(statusline) == "Code Llama: downloading 12%"
    editor.lua("require('codellama.status').on_progress({ token = 't', value = { kind = 'end' } })")
    assert editor.lua(statusline) == "Code Llama: loading 0%"
