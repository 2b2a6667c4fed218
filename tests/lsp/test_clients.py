"""The real server under pytest-lsp's recorded Neovim, VS Code and Emacs client capabilities: the handshake,
document sync, an inline completion and the fallback completion item, typing ahead, and code actions (resolved where
the client resolves edits, run as a command with workspace/applyEdit where it does not). pytest-lsp also checks
every answer against the client's capabilities (an `LspSpecificationWarning` fails the test, see pytest.ini).
Cancellation is tested from Rust (tests/lsp_model.rs): pygls 2.1 fails on a cancelled request's late answer."""
import ast

from lsprotocol import types as T
from pytest_lsp import LanguageClient, client_capabilities

URI = "file:///tmp/codellama-lsp-pytest/stats.py"
TEXT = "# 平均を求める 😀\nimport math\n\n\ndef mean(values):\n    "
#: The encodings each recorded client offers, and what the server must pick.
EXPECTED_ENCODING = {"neovim@v0.11.0": "utf-8", "visual-studio-code": "utf-16", "emacs": "utf-8"}


def units(text: str, encoding: str) -> int:
    if encoding == "utf-8":
        return len(text.encode("utf-8"))
    if encoding == "utf-16":
        return len(text.encode("utf-16-le")) // 2
    return len(text)


def encoding_of(client: LanguageClient) -> str:
    enc = client.init_result.capabilities.position_encoding
    return str(getattr(enc, "value", enc))


async def test_capabilities(client: LanguageClient):
    caps = client.init_result.capabilities
    assert encoding_of(client) == EXPECTED_ENCODING[client.client_name]
    assert caps.inline_completion_provider
    assert caps.completion_provider is not None
    assert caps.text_document_sync.change == T.TextDocumentSyncKind.Incremental
    assert client.init_result.server_info.name == "codellama-lsp"
    # The model load was reported with $/progress.
    kinds = [type(v).__name__ for reports in client.progress_reports.values() for v in reports]
    assert "WorkDoneProgressBegin" in kinds and "WorkDoneProgressEnd" in kinds, kinds


async def open_and_type(client: LanguageClient) -> T.Position:
    """Opens the document and types `total = "é😀"; return ` after the indentation, in two edits."""
    enc = encoding_of(client)
    client.text_document_did_open(
        T.DidOpenTextDocumentParams(T.TextDocumentItem(uri=URI, language_id="python", version=1, text=TEXT))
    )
    line, typed = 5, "    "
    for version, piece in ((2, 'total = "é😀"; '), (3, "return ")):
        col = units(typed, enc)
        client.text_document_did_change(
            T.DidChangeTextDocumentParams(
                text_document=T.VersionedTextDocumentIdentifier(uri=URI, version=version),
                content_changes=[
                    T.TextDocumentContentChangePartial(
                        range=T.Range(start=T.Position(line, col), end=T.Position(line, col)), text=piece
                    )
                ],
            )
        )
        typed += piece
    return T.Position(line, units(typed, enc))


async def inline_at(client: LanguageClient, pos: T.Position) -> T.InlineCompletionList:
    return await client.text_document_inline_completion_async(
        T.InlineCompletionParams(
            text_document=T.TextDocumentIdentifier(uri=URI),
            position=pos,
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked),
        )
    )


async def test_inline_completion_and_completion(client: LanguageClient):
    pos = await open_and_type(client)
    result = await inline_at(client, pos)
    items = result.items if isinstance(result, T.InlineCompletionList) else result
    assert len(items) == 1, result
    item = items[0]
    text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    assert text.strip(), item
    assert item.range.start == pos and item.range.end == pos

    completion = await client.text_document_completion_async(
        T.CompletionParams(text_document=T.TextDocumentIdentifier(uri=URI), position=pos)
    )
    assert completion.is_incomplete
    assert len(completion.items) == 1
    c = completion.items[0]
    assert c.label.startswith("Code Llama: ")
    assert c.text_edit.new_text == text
    assert c.text_edit.range.start == pos

    statuses = [s["state"] for s in client.status.seen]
    assert "generating" in statuses and statuses[-1] == "ready", statuses


async def test_typing_ahead(client: LanguageClient):
    pos = await open_and_type(client)
    first = await inline_at(client, pos)
    suggestion = first.items[0].insert_text
    generating = sum(s["state"] == "generating" for s in client.status.seen)
    # Type the suggestion's first character: the rest comes from the server's cache, with no generation.
    ch = suggestion[0]
    client.text_document_did_change(
        T.DidChangeTextDocumentParams(
            text_document=T.VersionedTextDocumentIdentifier(uri=URI, version=10),
            content_changes=[T.TextDocumentContentChangePartial(range=T.Range(start=pos, end=pos), text=ch)],
        )
    )
    nxt = T.Position(pos.line + 1, 0) if ch == "\n" else T.Position(pos.line, pos.character + units(ch, encoding_of(client)))
    rest = await inline_at(client, nxt)
    assert rest.items[0].insert_text == suggestion[1:]
    assert sum(s["state"] == "generating" for s in client.status.seen) == generating

    # A request elsewhere (the top of the document: an empty prompt for a model without FIM tokens) is
    # answered too, and the server goes on answering.
    await inline_at(client, T.Position(0, 0))
    again = await inline_at(client, nxt)
    assert again.items[0].insert_text == suggestion[1:]


async def test_code_actions_in_the_form_the_client_takes(client: LanguageClient):
    uri = "file:///tmp/codellama-lsp-pytest/mean.py"
    code = "def mean(values):\n    return sum(values) / len(values)\n"
    client.text_document_did_open(
        T.DidOpenTextDocumentParams(T.TextDocumentItem(uri=uri, language_id="python", version=1, text=code))
    )
    selection = T.Range(start=T.Position(0, 0), end=T.Position(1, 0))
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), range=selection, context=T.CodeActionContext(diagnostics=[])
        )
    )
    titles = [a.title for a in actions]
    assert "Explain this code" in titles and "Generate code from instruction" in titles, titles
    explain = next(a for a in actions if a.title == "Explain this code")

    caps = client_capabilities(client.client_name).text_document.code_action
    resolves = bool(caps.resolve_support and "edit" in caps.resolve_support.properties and caps.data_support)
    if resolves:
        assert explain.edit is None and explain.data and explain.command is None
        edit = (await client.code_action_resolve_async(explain)).edit
    else:
        command = explain.command
        if isinstance(explain, T.Command):
            # lsprotocol reads a CodeAction that carries a Command as a Command whose `command` is the str() of
            # the Command object; undo that.
            command = T.Command(**ast.literal_eval(explain.command))
        assert command.command == "codellama.applyAction", explain
        applied = []

        @client.feature(T.WORKSPACE_APPLY_EDIT)
        def on_apply_edit(params: T.ApplyWorkspaceEditParams):
            applied.append(params.edit)
            return T.ApplyWorkspaceEditResult(applied=True)

        result = await client.workspace_execute_command_async(
            T.ExecuteCommandParams(command=command.command, arguments=command.arguments)
        )
        assert result["applied"] is True, result
        edit = applied[0]
    if edit.document_changes:
        (change,) = edit.document_changes
        assert change.text_document.version == 1
        (text_edit,) = change.edits
    else:
        (text_edit,) = edit.changes[uri]
    assert text_edit.range == T.Range(start=T.Position(0, 0), end=T.Position(0, 0))
    lines = text_edit.new_text.splitlines()
    assert lines and all(line.startswith("#") for line in lines), text_edit.new_text
