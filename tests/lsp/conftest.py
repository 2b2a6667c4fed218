"""pytest-lsp against the REAL server binary ($CODELLAMA_LSP_BIN, default <repo>/target/release/codellama-lsp) with
the small model (<repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf, from scripts/fetch-model), using the client
capabilities pytest-lsp recorded from Neovim 0.11, VS Code 1.65.2 and Emacs 29.1."""
import asyncio
import os
import pathlib
import sys

import pytest
import pytest_lsp
from lsprotocol import types as T
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CODELLAMA_LSP_BIN") or str(REPO / "target" / "release" / "codellama-lsp")
MODEL = os.environ.get("CODELLAMA_LSP_MODEL") or str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")

for path, fix in ((BIN, "cargo build --release"), (MODEL, "scripts/fetch-model")):
    if not os.path.exists(path):
        raise pytest.UsageError(f"{path} is missing: run {fix}")

#: Short prompts and answers, so a cold request stays quick on a busy machine (the context window leaves room for a
#: code action's chat prompt).
SERVER = [BIN, "serve", "--model", MODEL, "--context-window", "1024", "--max-tokens", "16", "--action-max-tokens", "32"]

CLIENTS = ["neovim@v0.11.0", "visual-studio-code", "emacs"]


class Status:
    """The server's `codellama/status` notifications."""

    def __init__(self):
        self.seen = []
        self.ready = asyncio.Event()

    def __call__(self, params):
        # pygls hands unknown notifications' params over as a namedtuple.
        params = params._asdict() if hasattr(params, "_asdict") else dict(params)
        self.seen.append(params)
        if params.get("state") == "ready":
            self.ready.set()


@pytest_lsp.fixture(params=CLIENTS, config=ClientServerConfig(server_command=SERVER))
async def client(request, lsp_client: LanguageClient):
    status = Status()
    lsp_client.feature("codellama/status")(status)
    lsp_client.status = status
    lsp_client.init_result = await lsp_client.initialize_session(
        T.InitializeParams(
            capabilities=client_capabilities(request.param),
            root_uri=REPO.as_uri(),
            initialization_options={"codellama": {"temperature": 0}},
        )
    )
    lsp_client.client_name = request.param
    await asyncio.wait_for(status.ready.wait(), timeout=300)
    yield
    await lsp_client.shutdown_session()
