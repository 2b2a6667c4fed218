// Settings mapping and server discovery: pure functions, no server needed.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { CLIENT_ONLY, SERVER_SETTINGS, serverKey, toServerSettings, userValue, documentSelector } = require('../out/settings');
const { findServer, missingServerMessage } = require('../out/serverPath');

const pkg = require('../package.json');

test('every contributed setting but the client-only ones is a server key in camelCase', () => {
  const contributed = Object.keys(pkg.contributes.configuration.properties).map((k) => k.replace(/^codellama\./, ''));
  assert.deepEqual([...SERVER_SETTINGS, ...CLIENT_ONLY].sort(), contributed.sort());
  for (const setting of SERVER_SETTINGS) assert.match(serverKey(setting), /^[a-z]+(_[a-z]+)*$/);
  assert.equal(serverKey('prefixSuffixRatio'), 'prefix_suffix_ratio');
  // The settings the drift issue found missing are there now.
  for (const s of ['device', 'cacheSize', 'contextTokens', 'tokenHealing']) assert.ok(SERVER_SETTINGS.includes(s), s);
  assert.ok(pkg.contributes.configuration.properties['codellama.logLevel'].enum.includes('off'));
});

test('settings are sent snake_case; only what the user set, client-only settings never', () => {
  const values = {
    serverPath: '/opt/codellama-lsp', model: 'codellama/CodeLlama-7b-hf:model.gguf', chatModel: '', maxTokens: 64,
    prefixSuffixRatio: 3, temperature: 0, threads: null, languages: ['python', 'rust'], fimOrder: 'auto',
    logLevel: 'debug', enableInlineSuggestions: true, tokenHealing: false, cacheSize: 0,
  };
  assert.deepEqual(toServerSettings((k) => values[k]), {
    model: 'codellama/CodeLlama-7b-hf:model.gguf', chat_model: '', max_tokens: 64, prefix_suffix_ratio: 3,
    temperature: 0, threads: null, languages: ['python', 'rust'], fim_order: 'auto', log_level: 'debug',
    token_healing: false, cache_size: 0,
  });
  assert.deepEqual(toServerSettings(() => undefined), {});
});

test('the user value is the most specific one set, never the default', () => {
  assert.equal(userValue({ defaultValue: 64 }), undefined);
  assert.equal(userValue({ defaultValue: 64, globalValue: 8 }), 8);
  assert.equal(userValue({ globalValue: 8, workspaceValue: 16 }), 16);
  assert.equal(userValue({ globalValue: 8, workspaceValue: 16, workspaceFolderValue: 32 }), 32);
  assert.equal(userValue(undefined), undefined);
});

test('document selector: all files when no languages are configured, else those languages', () => {
  assert.deepEqual(documentSelector([]), [{ scheme: 'file' }, { scheme: 'untitled' }]);
  assert.deepEqual(documentSelector(['python']), [{ scheme: 'file', language: 'python' }, { scheme: 'untitled', language: 'python' }]);
});

test('findServer: explicit path, PATH lookup, ~/.cargo/bin fallback, and nothing', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'codellama-find-'));
  try {
    const bin = path.join(tmp, 'bin');
    const cargoBin = path.join(tmp, 'home', '.cargo', 'bin');
    fs.mkdirSync(bin, { recursive: true });
    fs.mkdirSync(cargoBin, { recursive: true });
    const env = { PATH: bin, HOME: path.join(tmp, 'home') };
    assert.equal(findServer('', env), undefined);
    const inCargo = path.join(cargoBin, 'codellama-lsp');
    fs.writeFileSync(inCargo, '#!/bin/sh\n', { mode: 0o755 });
    assert.equal(findServer('', env), inCargo);
    const onPath = path.join(bin, 'codellama-lsp');
    fs.writeFileSync(onPath, '#!/bin/sh\n', { mode: 0o755 });
    assert.equal(findServer(undefined, env), onPath);
    assert.equal(findServer(onPath, env), onPath);
    assert.equal(findServer(path.join(tmp, 'missing'), env), undefined);
    const notExecutable = path.join(tmp, 'plain');
    fs.writeFileSync(notExecutable, '', { mode: 0o644 });
    assert.equal(findServer(notExecutable, env), undefined);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('the missing-binary message says how to install the server', () => {
  const msg = missingServerMessage('codellama-lsp');
  assert.match(msg, /cargo install --path \./);
  assert.match(msg, /codellama\.serverPath/);
});

test('the status item shows a model download with its percentage', () => {
  require('./vscode-mock');
  const { StatusBar } = require('../out/status');
  const bar = new StatusBar();
  bar.update({ state: 'loading', message: 'downloading qwen.gguf (12 of 491 MB)', progress: 2 });
  assert.equal(bar.item.text, '$(cloud-download) Code Llama: downloading 2%');
  assert.match(bar.item.tooltip.value, /downloading the model/);
  assert.match(bar.item.tooltip.value, /12 of 491 MB/);
  bar.update({ state: 'loading', message: 'loading qwen.gguf', progress: 40 });
  assert.equal(bar.item.text, '$(loading~spin) Code Llama: loading 40%');
});
