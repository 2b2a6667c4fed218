// Settings mapping and server discovery: pure functions, no server needed.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { CLIENT_ONLY, SERVER_SETTINGS, serverKey, toServerSettings, userValue, documentSelector } = require('../out/settings');
const {
  bundledServer, findServer, missingServerMessage, thisExtension, versionMismatchMessage,
} = require('../out/serverPath');

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

test('findServer: serverPath, then the bundled server, then PATH, then ~/.cargo/bin, else nothing', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'codellama-find-'));
  const executable = (file) => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, '#!/bin/sh\n', { mode: 0o755 });
    return file;
  };
  try {
    const extRoot = path.join(tmp, 'extension');
    const bin = path.join(tmp, 'bin');
    fs.mkdirSync(bin, { recursive: true });
    const env = { PATH: bin, HOME: path.join(tmp, 'home') };
    assert.equal(findServer('', extRoot, env), undefined);
    const inCargo = executable(path.join(tmp, 'home', '.cargo', 'bin', 'codellama-lsp'));
    assert.deepEqual(findServer('', extRoot, env), { path: inCargo, source: 'cargo' });
    const onPath = executable(path.join(bin, 'codellama-lsp'));
    assert.deepEqual(findServer(undefined, extRoot, env), { path: onPath, source: 'PATH' });
    // The platform .vsix's own server wins over PATH and ~/.cargo/bin: it is the extension's version.
    const bundled = executable(path.join(extRoot, 'server', 'codellama-lsp'));
    assert.equal(bundledServer(extRoot), bundled);
    assert.deepEqual(findServer('', extRoot, env), { path: bundled, source: 'bundled' });
    // ...and serverPath wins over everything, as a path or as a name looked up on PATH.
    const chosen = executable(path.join(tmp, 'opt', 'codellama-lsp'));
    assert.deepEqual(findServer(chosen, extRoot, env), { path: chosen, source: 'serverPath' });
    assert.deepEqual(findServer('codellama-lsp', extRoot, env), { path: onPath, source: 'serverPath' });
    // A serverPath that names nothing runnable is not silently replaced by another server.
    assert.equal(findServer(path.join(tmp, 'missing'), extRoot, env), undefined);
    const notExecutable = path.join(tmp, 'plain');
    fs.writeFileSync(notExecutable, '', { mode: 0o644 });
    assert.equal(findServer(notExecutable, extRoot, env), undefined);
    // A bundled file that lost its executable bit is skipped, not run.
    fs.chmodSync(bundled, 0o644);
    assert.deepEqual(findServer('', extRoot, env), { path: onPath, source: 'PATH' });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('the missing-binary message says how to get the server', () => {
  const msg = missingServerMessage('codellama-lsp');
  assert.match(msg, /\.vsix for your platform/);
  assert.match(msg, /cargo install --path \./);
  assert.match(msg, /codellama\.serverPath/);
});

test('the version-mismatch message names the server, both versions and the way out; none when they match', () => {
  const onPath = { path: '/usr/local/bin/codellama-lsp', source: 'PATH' };
  assert.equal(versionMismatchMessage(onPath, '0.1.0', '0.1.0'), undefined);
  const msg = versionMismatchMessage(onPath, '0.0.9', '0.1.0');
  assert.match(msg, /\/usr\/local\/bin\/codellama-lsp \(found by PATH\) is version 0\.0\.9/);
  assert.match(msg, /extension is version 0\.1\.0/);
  assert.match(msg, /codellama\.serverPath/);
  assert.match(versionMismatchMessage(onPath, undefined, '0.1.0'), /reports no version/);
  const bundled = { path: '/ext/server/codellama-lsp', source: 'bundled' };
  assert.match(versionMismatchMessage(bundled, '0.0.9', '0.1.0'), /Reinstall the extension/);
});

test("the extension's version is the server crate's (the bundled server must match it)", () => {
  const cargo = fs.readFileSync(path.join(__dirname, '../../../Cargo.toml'), 'utf8');
  // Every crate of the workspace takes its version from [workspace.package].
  const crateVersion = cargo.match(/^\[workspace\.package\][^[]*?^version\s*=\s*"([^"]+)"/m)?.[1];
  assert.ok(crateVersion, 'Cargo.toml [workspace.package] version');
  assert.equal(pkg.version, crateVersion);
  assert.equal(thisExtension().version, pkg.version);
  assert.equal(thisExtension().root, path.resolve(__dirname, '..'));
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
