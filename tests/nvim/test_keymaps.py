"""Keys act only while a suggestion is shown; otherwise they do what they did before. No server needed."""
import pytest

from conftest import wait_for

ATTACH = """
require("codellama.keymaps").attach(0, { accept = "<Tab>" }, function(name)
  return _G.suggestion_visible and '<Cmd>lua _G.accepted = true<CR>' or nil
end)
"""


@pytest.mark.parametrize(
    "before, expected",
    [
        (None, "\tx"),  # nothing mapped: a literal Tab
        ("inoremap <buffer> <Tab> FOO", "FOOx"),
        ("inoremap <Tab> GLOBAL", "GLOBALx"),
        ('inoremap <buffer> <expr> <Tab> "EX" .. "PR"', "EXPRx"),
        ("lua vim.keymap.set('i', '<Tab>', function() return 'LUA' end, { expr = true, buffer = 0 })", "LUAx"),
    ],
    ids=["literal", "buffer-mapping", "global-mapping", "expr-mapping", "lua-callback"],
)
def test_tab_falls_back_when_no_suggestion(editor, before, expected):
    editor.edit("plain.txt", "")
    editor.nv.command("setlocal noexpandtab")
    if before:
        editor.nv.command(before)
    editor.lua(ATTACH)
    editor.nv.input("i<Tab>x<Esc>")
    wait_for(lambda: editor.lines()[0] == expected and editor.mode() == "n", f"line {expected!r}", timeout=5)
    assert editor.lua("return _G.accepted") is None


def test_tab_acts_when_a_suggestion_is_shown(editor):
    editor.edit("plain.txt", "")
    editor.lua(ATTACH)
    editor.lua("_G.suggestion_visible = true")
    editor.nv.input("i<Tab>x<Esc>")
    wait_for(lambda: editor.lua("return _G.accepted"), "the accept action", timeout=5)
    wait_for(lambda: editor.mode() == "n", "normal mode", timeout=5)
    assert editor.lines() == ["x"]


def test_attaching_twice_keeps_the_original_fallback(editor):
    editor.edit("plain.txt", "")
    editor.nv.command("inoremap <buffer> <Tab> FOO")
    editor.lua(ATTACH)
    editor.lua(ATTACH)
    editor.nv.input("i<Tab><Esc>")
    wait_for(lambda: editor.lines()[0] == "FOO" and editor.mode() == "n", "FOO", timeout=5)
