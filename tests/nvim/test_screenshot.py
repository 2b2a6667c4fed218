"""Ghost text as a user sees it: Neovim in a real terminal (tmux), keys typed through tmux, the screen captured with
`tmux capture-pane -e -p`, the statusline component (model, latency, tokens per second) at the bottom. Saves
nvim-ghost-text.ansi.txt, and a PNG when ansi2html and chromium are available, to target/screenshots, or to
$CODELLAMA_SCREENSHOTS where set (`docs/screenshots` updates the README's): a test run leaves the checkout as it was."""
import os
import pathlib
import shutil
import subprocess
import time

import pynvim
import pytest

from conftest import BIN, NVIM, PLUGIN, REPO, SETTINGS, requires_server, wait_for

SHOTS = pathlib.Path(os.environ.get("CODELLAMA_SCREENSHOTS", REPO / "target" / "screenshots")).resolve()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def tmux(*args, **kw):
    return subprocess.run(["tmux", "-L", "codellama-test", *args], check=True, capture_output=True, text=True, **kw)


@requires_server
@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_ghost_text_on_screen(tmp_path):
    sample = tmp_path / "fib.py"
    sample.write_text('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n')
    sock = tmp_path / "nvim.sock"
    env = {**os.environ, "TERM": "tmux-256color", "XDG_STATE_HOME": str(tmp_path / "state")}
    nvim = f"{NVIM} --clean -n -i NONE --listen {sock} --cmd 'set rtp^={PLUGIN} termguicolors' {sample.name}"
    tmux("-f", "/dev/null", "new-session", "-d", "-s", "shot", "-x", "100", "-y", "14", "-c", str(tmp_path), nvim, env=env)
    try:
        wait_for(sock.exists, "nvim's socket", timeout=20)
        nv = pynvim.attach("socket", path=str(sock))
        # The statusline component (model, last latency and speed) is in the capture too.
        nv.command("set laststatus=2 statusline=%{v:lua.require'codellama'.statusline()}")
        nv.exec_lua('require("codellama").setup(...)', {"cmd": [BIN, "serve"], "settings": SETTINGS})
        wait_for(
            lambda: nv.exec_lua('local s = require("codellama").status; return s and s.state == "ready"'),
            "the model",
            timeout=120,
        )
        tmux("send-keys", "-t", "shot", "G", "o")
        tmux("send-keys", "-t", "shot", "-l", "if n < 2:")
        tmux("send-keys", "-t", "shot", "Enter")
        ghost = wait_for(lambda: nv.exec_lua('return require("codellama.ghost").get(0)'), "ghost text", timeout=60)
        first = ghost["text"].split("\n")[0].strip() or ghost["text"].strip().split("\n")[0].strip()

        def screen():
            return tmux("capture-pane", "-p", "-t", "shot").stdout

        wait_for(lambda: first[:20] in screen(), f"{first[:20]!r} on the screen", timeout=10)
        wait_for(lambda: " tok/s" in screen().splitlines()[-2], "the statusline with the latency", timeout=10)
        ansi = tmux("capture-pane", "-e", "-p", "-t", "shot").stdout
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / "nvim-ghost-text.ansi.txt").write_text(ansi)
        render_png(ansi, SHOTS / "nvim-ghost-text.png", tmp_path)
        nv.close()
    finally:
        subprocess.run(["tmux", "-L", "codellama-test", "kill-server"], capture_output=True)


def render_png(ansi, png, tmp_path):
    """ANSI -> HTML (ansi2html) -> PNG (headless chromium); skipped quietly when either is missing."""
    try:
        from ansi2html import Ansi2HTMLConverter
    except ImportError:
        return
    if not CHROMIUM:
        return
    html = Ansi2HTMLConverter(dark_bg=True, line_wrap=False, title="codellama.nvim").convert(ansi)
    # Neovim's default dark background, where the capture leaves cells uncoloured.
    css = "body, .body_background { background-color: #14161b !important; } pre.ansi2html-content { font-size: 15px; }"
    html = html.replace("</style>", css + "</style>", 1)
    page = tmp_path / "capture.html"
    page.write_text(html)
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
         "--window-size=980,330", page.as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    assert png.stat().st_size > 0
