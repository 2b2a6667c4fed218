// Settings mapping and server discovery: pure functions, no server needed.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { SERVER_KEYS, toServerSettings, documentSelector } = require('../out/settings');
const { findServer, missingServerMessage } = require('../out/serverPath');

const pkg = require('../package.json');
const CLIENT_ONLY = ['serverPath', 'enableInlineSuggestions'];

test('every contributed setting maps to a server key, and every server key has a setting', () => {
  const contributed = Object.keys(pkg.contributes.configuration.properties).map((k) => k.replace(/^codellama\./, ''));
  assert.deepEqual(contributed.filter((k) => !CLIENT_ONLY.includes(k)).sort(), Object.keys(SERVER_KEYS).sort());
  for (const serverKey of Object.values(SERVER_KEYS)) assert.match(serverKey, /^[a-z]+(_[a-z]+)*$/);
});

test('settings are sent snake_case; unset values and fimOrder "auto" are left to the server', () => {
  const values = {
    serverPath: '/opt/codellama-lsp', model: 'codellama/CodeLlama-7b-hf:model.gguf', chatModel: '', maxTokens: 64,
    contextWindow: null, prefixSuffixRatio: 3, temperature: 0, threads: 4, languages: ['python', 'rust'],
    fimTemplate: 'auto', fimOrder: 'auto', logLevel: 'debug', enableInlineSuggestions: true,
  };
  assert.deepEqual(toServerSettings((k) => values[k]), {
    model: 'codellama/CodeLlama-7b-hf:model.gguf', max_tokens: 64, prefix_suffix_ratio: 3, temperature: 0,
    threads: 4, languages: ['python', 'rust'], fim_template: 'auto', log_level: 'debug',
  });
  assert.deepEqual(toServerSettings((k) => (k === 'fimOrder' ? 'spm' : undefined)), { fim_order: 'spm' });
});

test('package.json defaults produce only keys with a meaning of their own', () => {
  const props = pkg.contributes.configuration.properties;
  const sent = toServerSettings((k) => props[`codellama.${k}`]?.default);
  assert.deepEqual(sent, { backend: 'local', remote: {}, languages: [], fim_template: 'auto', log_level: 'info' });
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
