// The extension's own code under plain Node with a mocked `vscode`, driving the REAL codellama-lsp binary
// (CODELLAMA_LSP_BIN, default <repo>/target/release/codellama-lsp) with the small test model.
'use strict';
const mock = require('./vscode-mock');
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { CodeLlama } = require('../out/extension');

const { vscode, state } = mock;
const REPO = path.resolve(__dirname, '../../..');
const BIN = process.env.CODELLAMA_LSP_BIN || path.join(REPO, 'target/release/codellama-lsp');
const MODEL = process.env.CODELLAMA_LSP_MODEL || path.join(REPO, 'models/SmolLM2-135M-Instruct.Q4_1.gguf');
const missing = [BIN, MODEL].filter((p) => !fs.existsSync(p));
if (missing.length && process.env.CODELLAMA_REQUIRE_SERVER) {
  throw new Error(`CODELLAMA_REQUIRE_SERVER is set but ${missing.join(' and ')} is missing`);
}
const needsServer = missing.length
  ? { skip: `needs ${missing.join(' and ')} (cargo build --release; scripts/fetch-model)` }
  : {};

async function waitFor(what, predicate, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function openDocument(text, languageId = 'python') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'codellama-vscode-'));
  const doc = new mock.TextDocument(vscode.Uri.file(path.join(dir, 'sample.py')), languageId, text);
  vscode.workspace.textDocuments.push(doc);
  return doc;
}

function token() {
  return new vscode.CancellationTokenSource().token;
}

test('a missing server binary gives an error that says how to install it', async () => {
  mock.reset();
  state.settings['codellama.serverPath'] = '/nonexistent/codellama-lsp';
  const ext = new CodeLlama();
  try {
    await ext.start();
    assert.equal(ext.client, undefined);
    assert.equal(state.messages.error.length, 1);
    assert.match(state.messages.error[0], /\/nonexistent\/codellama-lsp/);
    assert.match(state.messages.error[0], /cargo install --path \./);
    assert.match(state.messages.error[0], /codellama\.serverPath/);
    assert.equal(ext.status.state, 'error');
    const item = state.statusItems[0];
    assert.equal(item.accessibilityInformation.label, 'Code Llama: error');
    assert.equal(item.text, '$(error) Code Llama: error');
    // A click shows the log, which says the same.
    assert.match(item.tooltip.value, /Click to show the server's log/);
    await state.commands.get(item.command)();
    const [log] = state.outputChannels;
    assert.equal(log.shown, 1);
    assert.ok(log.lines.some((l) => l.includes('/nonexistent/codellama-lsp')), log.lines.join('\n'));
  } finally {
    ext.dispose();
  }
});

test('with no serverPath the bundled server runs, and a version unlike the extension\'s gets one warning', needsServer, async (t) => {
  mock.reset();
  state.settings['codellama.model'] = MODEL;
  // An installed platform extension as scripts/package-vscode lays it out: server/codellama-lsp beside package.json.
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'codellama-ext-'));
  fs.mkdirSync(path.join(root, 'server'));
  fs.symlinkSync(BIN, path.join(root, 'server', 'codellama-lsp'));
  // The real server reports its crate version; an extension one release ahead must say so.
  const ext = new CodeLlama({ root, version: '99.0.0' });
  t.after(() => ext.stop().finally(() => {
    ext.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  }));
  await ext.start();
  assert.ok(ext.client?.isRunning(), ext.status.item.tooltip?.value);
  const log = ext.output.lines.join('\n');
  assert.match(log, new RegExp(`server: ${path.join(root, 'server', 'codellama-lsp')} \\(found by bundled\\)`));
  assert.equal(state.messages.warning.length, 1, state.messages.warning.join('\n'));
  const [warning] = state.messages.warning;
  assert.match(warning, /is version \d+\.\d+\.\d+, but the extension is version 99\.0\.0/);
  assert.match(warning, /Reinstall the extension/);
  assert.ok(ext.output.lines.some((line) => line.includes(warning)), 'the warning is in the log too');
  assert.equal(state.messages.error.length, 0);
});

// The extension against the real server and the small model, with a Python document open; stopped after the test.
function realServerSession(t) {
  mock.reset();
  Object.assign(state.settings, {
    'codellama.serverPath': BIN,
    'codellama.model': MODEL,
    'codellama.maxTokens': 16,
    'codellama.temperature': 0,
    'codellama.threads': 2,
  });
  const doc = openDocument('def add(a, b):\n    ');
  const ext = new CodeLlama();
  t.after(() => ext.stop().finally(() => ext.dispose()));
  return { doc, ext };
}

test('the real server: capabilities, ready status, inline completion, settings, explain, generate', needsServer, async (t) => {
  const { doc, ext } = realServerSession(t);
  await ext.start();
  const client = ext.client;
  assert.ok(client?.isRunning(), `${BIN} serve did not start as a language server: ${ext.status.item.tooltip?.value}`);

  await t.test("the server's version is the extension's: no warning", () => {
    assert.equal(client.initializeResult.serverInfo.version, require('../package.json').version);
    assert.deepEqual(state.messages.warning, []);
  });

  await t.test('settings go snake_case in initializationOptions', () => {
    // Only what the user set: the server's defaults (and environment) apply to the rest.
    assert.deepEqual(client.clientOptions.initializationOptions, {
      model: MODEL, max_tokens: 16, temperature: 0, threads: 2,
    });
  });

  await t.test('capabilities', () => {
    const caps = client.initializeResult.capabilities;
    assert.ok(caps.inlineCompletionProvider, 'inlineCompletionProvider');
    assert.ok(caps.completionProvider, 'completionProvider');
    assert.equal(caps.codeActionProvider?.resolveProvider, true);
    for (const c of ['codellama.explain', 'codellama.generate', 'codellama.cancel']) {
      assert.ok(caps.executeCommandProvider.commands.includes(c), c);
      assert.ok(state.commands.has(c), `languageclient registered ${c}`);
    }
    assert.equal(state.inlineProviders.length, 1, 'languageclient registered an inline completion provider');
  });

  await t.test('status bar reaches ready', async () => {
    await waitFor('codellama/status ready', () => ext.status.state === 'ready' || ext.status.state === 'error');
    assert.equal(ext.status.state, 'ready', ext.status.item.tooltip?.value);
    assert.equal(ext.status.item.accessibilityInformation.label, 'Code Llama: ready');
    assert.match(ext.status.item.text, /^\$\(check\) \S/);
  });

  const provider = state.inlineProviders[0].provider;
  const complete = (position) =>
    provider.provideInlineCompletionItems(doc, position, { triggerKind: vscode.InlineCompletionTriggerKind.Invoke }, token());

  await t.test('the inline completion provider returns an item at the cursor', async () => {
    const cursor = new vscode.Position(1, 4);
    const result = await complete(cursor);
    const items = Array.isArray(result) ? result : result?.items;
    assert.ok(items?.length >= 1, `expected an inline completion item, got ${JSON.stringify(result)}`);
    const item = items[0];
    const text = typeof item.insertText === 'string' ? item.insertText : item.insertText.value;
    assert.equal(typeof text, 'string');
    assert.ok(text.length > 0, 'non-empty suggestion');
    if (item.range) assert.deepEqual([item.range.start.line, item.range.start.character], [1, 4]);
    await waitFor('timings in the tooltip', () => /total/.test(ext.status.item.tooltip.value));
  });

  await t.test('toggling inline suggestions off stops asking the server', async () => {
    await state.commands.get('codellama.toggleInlineSuggestions')();
    assert.equal(state.settings['codellama.enableInlineSuggestions'], false);
    assert.equal(await complete(new vscode.Position(1, 4)), undefined);
    assert.match(ext.status.item.tooltip.value, /inline suggestions off/);
    await state.commands.get('codellama.toggleInlineSuggestions')();
    assert.equal(state.settings['codellama.enableInlineSuggestions'], true);
  });

  await t.test('a changed setting is sent with workspace/didChangeConfiguration', async () => {
    const sent = [];
    const original = client.sendNotification.bind(client);
    client.sendNotification = (type, params) => {
      sent.push([typeof type === 'string' ? type : type.method, params]);
      return original(type, params);
    };
    try {
      await vscode.workspace.getConfiguration('codellama').update('maxTokens', 24);
      await waitFor('didChangeConfiguration', () => sent.some(([m]) => m === 'workspace/didChangeConfiguration'), 5000);
      const [, params] = sent.find(([m]) => m === 'workspace/didChangeConfiguration');
      assert.equal(params.settings.codellama.max_tokens, 24);
      assert.equal(params.settings.codellama.model, MODEL);
      assert.equal(ext.client, client, 'no restart for a model setting');
    } finally {
      client.sendNotification = original;
    }
  });

  await t.test('Explain Selection shows the Markdown beside the editor', async () => {
    vscode.window.activeTextEditor = {
      document: doc,
      selection: new vscode.Selection(new vscode.Position(0, 0), new vscode.Position(1, 4)),
    };
    const result = await state.commands.get('codellama.explainSelection')();
    assert.equal(typeof result?.markdown, 'string');
    assert.ok(result.markdown.trim().length > 0, 'non-empty explanation');
    assert.equal(state.webviews.length, 1);
    assert.equal(state.webviews[0].showOptions.viewColumn, vscode.ViewColumn.Beside);
    assert.match(state.webviews[0].webview.html, /<body>\s*<pre>\S/);
  });

  await t.test('code actions are listed at once and resolve to an edit', async () => {
    assert.equal(state.codeActionProviders.length, 1, 'languageclient registered a code action provider');
    const { provider, metadata } = state.codeActionProviders[0];
    assert.ok(
      metadata.providedCodeActionKinds.some((k) => vscode.CodeActionKind.RefactorRewrite.contains(k)),
      'rewrite kinds are advertised',
    );
    const selection = new vscode.Range(0, 0, 0, 14);
    const context = { diagnostics: [], only: undefined, triggerKind: vscode.CodeActionTriggerKind.Invoke };
    const actions = await provider.provideCodeActions(doc, selection, context, token());
    const titles = actions.map((a) => a.title);
    assert.ok(titles.includes('Explain this code'), titles.join(', '));
    assert.ok(titles.includes('Generate code from instruction'), titles.join(', '));
    const explain = actions.find((a) => a.title === 'Explain this code');
    assert.equal(explain.edit, undefined, 'computed when resolved');
    const resolved = await provider.resolveCodeAction(explain, token());
    assert.equal(resolved.edit.entries.length, 1, 'one text edit');
    const [uri, edit] = resolved.edit.entries[0];
    assert.equal(uri.toString(), doc.uri.toString());
    assert.deepEqual([edit.range.start.line, edit.range.start.character], [0, 0], 'above the selection');
    assert.match(edit.newText, /^# /, 'a Python comment block');
    // The instruction action is a command; the extension asks for the instruction before running it.
    const generate = actions.find((a) => a.title === 'Generate code from instruction');
    assert.equal(generate.command.command, 'codellama.generate');
  });

  await t.test('Generate from instruction applies the server edit', async () => {
    const before = doc.getText();
    vscode.window.activeTextEditor = {
      document: doc,
      selection: new vscode.Selection(new vscode.Position(1, 4), new vscode.Position(1, 4)),
    };
    state.inputBoxValue = 'return the sum of a and b';
    const result = await state.commands.get('codellama.generateFromInstruction')();
    assert.equal(result?.applied, true, JSON.stringify(result));
    assert.equal(typeof result.code, 'string');
    assert.ok(state.appliedEdits.length >= 1, 'workspace/applyEdit reached the editor');
    assert.notEqual(doc.getText(), before);
  });

  await t.test('the "Generate code from instruction" action asks for the instruction, then applies the code', async () => {
    const other = openDocument('def mul(a, b):\n    ');
    state.openEmitter.fire(other);
    const uri = client.code2ProtocolConverter.asUri(other.uri);
    const cursor = { start: { line: 1, character: 4 }, end: { line: 1, character: 4 } };
    // What the code action's command carries: no instruction. Cancelling the prompt runs nothing.
    state.inputBoxValue = undefined;
    assert.equal(await state.commands.get('codellama.generate')({ uri, range: cursor }), undefined);
    state.inputBoxValue = 'return the product of a and b';
    const result = await state.commands.get('codellama.generate')({ uri, range: cursor });
    assert.equal(result?.applied, true, JSON.stringify(result));
    assert.notEqual(other.getText(), 'def mul(a, b):\n    ');
  });
});

test('the status item: loading with its percentage, ready with the model, the last suggestion\'s latency and speed, an error; the log', needsServer, async (t) => {
  const { doc, ext } = realServerSession(t);
  const item = ext.status.item;
  await ext.start();
  await waitFor('codellama/status ready', () => ext.status.state === 'ready' || ext.status.state === 'error');
  assert.equal(ext.status.state, 'ready', item.tooltip.value);

  // On the way: the model loading, with its percentage.
  assert.ok(item.texts.some((text) => /^\$\(loading~spin\) Code Llama: loading \d+%$/.test(text)), item.texts.join('\n'));
  // Ready: the model's name as the server gave it (the tooltip has it whole), no timings before a suggestion.
  const name = /Model: `([^`]+)`/.exec(item.tooltip.value)?.[1];
  assert.ok(name, item.tooltip.value);
  assert.equal(item.text, `$(check) ${name.length > 32 ? `${name.slice(0, 31)}…` : name}`);
  assert.equal(item.command, 'codellama.toggleInlineSuggestions');

  // After a real completion: its latency and tokens per second.
  const provider = state.inlineProviders[0].provider;
  const result = await provider.provideInlineCompletionItems(
    doc, new vscode.Position(1, 4), { triggerKind: vscode.InlineCompletionTriggerKind.Invoke }, token());
  assert.ok((Array.isArray(result) ? result : result?.items)?.length >= 1, JSON.stringify(result));
  const speed = / · (\d+) ms · (\d+) tok\/s$/;
  await waitFor('latency and tok/s in the status text', () => ext.status.state === 'ready' && speed.test(item.text));
  const [, ms, tokPerS] = speed.exec(item.text);
  assert.ok(Number(ms) > 0 && Number(tokPerS) > 0, item.text);
  assert.ok(item.text.startsWith(`$(check) ${name.slice(0, 31)}`), item.text);
  assert.match(item.tooltip.value, /\| total \| [\d.]+ ms \|/);

  // The log command shows the client's output channel, where the server's stderr goes.
  await state.commands.get('codellama.showLog')();
  assert.equal(ext.client.outputChannel.shown, 1);
  assert.ok(ext.client.outputChannel.lines.some((l) => /ready in \d+ ms/.test(l)), ext.client.outputChannel.lines.join('\n'));

  // A model that does not exist: error state, the reason in the tooltip, and a click shows the log.
  const missingModel = path.join(os.tmpdir(), 'codellama-no-such-model.gguf');
  await vscode.workspace.getConfiguration('codellama').update('model', missingModel);
  await waitFor('codellama/status error', () => ext.status.state === 'error', 30000);
  assert.equal(item.text, '$(error) Code Llama: error');
  const unescaped = item.tooltip.value.replace(/\\(.)/g, '$1'); // the tooltip's Markdown escapes
  assert.ok(unescaped.includes(missingModel), item.tooltip.value);
  assert.match(item.tooltip.value, /Click to show the server's log/);
  assert.equal(item.command, 'codellama.showLog');
  await state.commands.get(item.command)();
  assert.equal(ext.client.outputChannel.shown, 2);

  // The model back: ready with its name, and no timings until its own first suggestion.
  await vscode.workspace.getConfiguration('codellama').update('model', MODEL);
  await waitFor('codellama/status ready again', () => ext.status.state === 'ready', 30000);
  assert.equal(item.text, `$(check) ${name.length > 32 ? `${name.slice(0, 31)}…` : name}`);
  assert.doesNotMatch(item.tooltip.value, /last completion/);
});

/**
 * Stands in for the Hugging Face Hub, because this machine has no network: answers as huggingface.co does for a
 * file kept in LFS (`/{repo}/resolve/main/{file}` → 302 to a CDN address with `x-repo-commit`, `x-linked-etag` (the
 * SHA-256) and `x-linked-size`; the CDN answers `Range` requests with 206), serving real model bytes slowly enough
 * for the percentages to be seen (as tests/lsp_model.rs's HubStandIn does for the server alone).
 */
async function hubStandIn(body, pauseMs) {
  const sha = crypto.createHash('sha256').update(body).digest('hex');
  const server = http.createServer(async (req, res) => {
    if (req.url.includes('/resolve/main/')) {
      res.writeHead(302, {
        location: `/cdn/${sha}`, 'x-repo-commit': '0123456789abcdef0123456789abcdef01234567',
        'x-linked-etag': `"${sha}"`, 'x-linked-size': body.length, 'content-length': 0,
      });
      res.end();
      return;
    }
    const [, from, to] = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? '') ?? [, '0', ''];
    const [start, end] = [Number(from), to ? Number(to) : body.length - 1];
    res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${body.length}`, 'content-length': end + 1 - start });
    for (let at = start; at <= end && !res.destroyed; at += 1 << 20) {
      res.write(body.subarray(at, Math.min(at + (1 << 20), end + 1)));
      await new Promise((r) => setTimeout(r, pauseMs));
    }
    res.end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, close() {
    server.closeAllConnections();
    server.close();
  } };
}

test('the status item shows a real model download from the Hub with its percentage, then the model', needsServer, async (t) => {
  mock.reset();
  const hub = await hubStandIn(fs.readFileSync(MODEL), 15);
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'codellama-vscode-hub-'));
  // The server is started with the extension host's environment.
  const saved = { HF_ENDPOINT: process.env.HF_ENDPOINT, HF_HOME: process.env.HF_HOME };
  Object.assign(process.env, { HF_ENDPOINT: hub.url, HF_HOME: home });
  Object.assign(state.settings, {
    'codellama.serverPath': BIN,
    'codellama.model': 'someone/tiny-model:tiny.gguf',
    'codellama.threads': 2,
  });
  const ext = new CodeLlama();
  t.after(async () => {
    await ext.stop().finally(() => ext.dispose());
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
    hub.close();
    fs.rmSync(home, { recursive: true, force: true });
  });
  const item = ext.status.item;
  await ext.start();
  await waitFor('codellama/status ready', () => ext.status.state === 'ready' || ext.status.state === 'error', 120000);
  assert.equal(ext.status.state, 'ready', item.tooltip.value);
  const percents = item.texts
    .map((text) => /^\$\(cloud-download\) Code Llama: downloading (\d+)%$/.exec(text)?.[1])
    .filter((p) => p !== undefined)
    .map(Number);
  assert.ok(percents.length >= 3 && percents.some((p) => p > 0 && p < 100), item.texts.join('\n'));
  assert.deepEqual(percents, [...percents].sort((a, b) => a - b), 'percentages only go up');
  assert.match(item.text, /^\$\(check\) \S/);
});
