// The platform .vsix (scripts/package-vscode) in real VS Code (code-server) in headless Chromium, running the server
// it brings: no codellama-lsp on PATH, in ~/.cargo/bin or in serverPath. Run through scripts/test-vscode-e2e, which
// installs everything and sets the environment variables read below.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; run scripts/test-vscode-e2e`);
  return v;
};
const CODE_SERVER = env('CODE_SERVER');
const VSIX = env('VSIX');
const MODEL = env('CODELLAMA_LSP_MODEL');
const SCREENSHOTS = env('SCREENSHOTS');
const { chromium } = require(env('PLAYWRIGHT_CORE'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// A start whose suggestion (SmolLM2 135M, temperature 0) has several words on its first line and more lines after
// it, so that accepting a word, a line and the rest are three different edits.
const ORIGINAL = 'def fib(n):\n    \n';
const TYPED = 'if';
// The model comes as a user's would: a Hub reference, downloaded (from the stand-in Hub below) with progress.
const HUB_MODEL = 'HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2.gguf';
// VS Code binds acceptNextWord to Ctrl+Right (Cmd+Right on macOS); acceptNextLine has no default key, so the
// profile binds one, as a user would.
const ACCEPT_WORD = 'Control+ArrowRight';
const ACCEPT_LINE = 'Control+Alt+KeyL';

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

function writeJson(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value, null, 2));
}

/** A fresh profile every run: code-server restores unsaved editors from a reused one. */
function makeProfile(tmp) {
  const dirs = { user: path.join(tmp, 'user'), ext: path.join(tmp, 'ext'), ws: path.join(tmp, 'ws') };
  fs.mkdirSync(dirs.ws, { recursive: true });
  fs.writeFileSync(path.join(dirs.ws, 'sample.py'), ORIGINAL);
  // model is machine-scoped: code-server's extension host is "remote" and ignores it in User settings. No serverPath:
  // the bundled server must be found.
  writeJson(path.join(dirs.user, 'Machine', 'settings.json'), { 'codellama.model': HUB_MODEL });
  writeJson(path.join(dirs.user, 'User', 'keybindings.json'), [
    { key: 'ctrl+alt+l', command: 'editor.action.inlineSuggest.acceptNextLine', when: 'inlineSuggestionVisible' },
  ]);
  writeJson(path.join(dirs.user, 'User', 'settings.json'), {
    'codellama.maxTokens': 32,
    'codellama.actionMaxTokens': 48,
    'codellama.temperature': 0,
    'editor.inlineSuggest.enabled': true,
    // Keep the suggest widget away so that Tab goes to the ghost text.
    'editor.quickSuggestions': { other: 'off', comments: 'off', strings: 'off' },
    'editor.wordBasedSuggestions': 'off',
    'editor.suggestOnTriggerCharacters': false,
    'workbench.startupEditor': 'none',
    'workbench.tips.enabled': false,
    'workbench.secondarySideBar.defaultVisibility': 'hidden',
    'chat.disableAIFeatures': true,
    'security.workspace.trust.enabled': false,
    'telemetry.telemetryLevel': 'off',
    'extensions.autoCheckUpdates': false,
    'extensions.autoUpdate': false,
  });
  return dirs;
}

/**
 * Stands in for the Hugging Face Hub, because CI has no network. It answers as huggingface.co does for a file kept
 * in LFS (as tests/lsp_model.rs's HubStandIn does): `/{repo}/resolve/main/{file}` is a 302 to a CDN address with
 * `x-repo-commit`, `x-linked-etag` (the SHA-256) and `x-linked-size`; the CDN answers `Range` requests with 206. It
 * sends 1 MiB per 300 ms until `fast()`, so that the download is on screen long enough for its screenshot.
 */
function startHub(body) {
  const sha = crypto.createHash('sha256').update(body).digest('hex');
  const hub = { sent: 0, slow: true, fast() { this.slow = false; } };
  hub.server = http.createServer(async (req, res) => {
    if (req.url.includes('/resolve/main/')) {
      res.writeHead(302, {
        Location: `/cdn/${sha}`, 'x-repo-commit': '0123456789abcdef0123456789abcdef01234567',
        'x-linked-etag': `"${sha}"`, 'x-linked-size': String(body.length), ETag: '"0123456789abcdef"', 'Content-Length': 0,
      });
      res.end();
      return;
    }
    const m = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? '');
    const from = m ? Number(m[1]) : 0;
    const to = m && m[2] ? Number(m[2]) : body.length - 1;
    res.writeHead(206, { 'Content-Range': `bytes ${from}-${to}/${body.length}`, 'Content-Length': to + 1 - from });
    for (let at = from; at <= to && !res.destroyed; at += 1 << 20) {
      const piece = body.subarray(at, Math.min(at + (1 << 20), to + 1));
      if (!res.write(piece)) await new Promise((resolve) => res.once('drain', resolve));
      hub.sent += piece.length;
      if (hub.slow) await new Promise((resolve) => setTimeout(resolve, 300));
    }
    res.end();
  });
  return new Promise((resolve) => hub.server.listen(0, '127.0.0.1', () => {
    hub.url = `http://127.0.0.1:${hub.server.address().port}`;
    resolve(hub);
  }));
}

/**
 * code-server's environment: the user's, minus every PATH entry that holds a codellama-lsp and with an empty
 * CARGO_HOME, so that the only server the extension can find is the one in the .vsix; the Hub is the stand-in, the
 * Hugging Face cache is empty, and the model is only what the settings say.
 */
function serverlessEnv(tmp, hub) {
  const dirs = (process.env.PATH ?? '').split(path.delimiter);
  const PATH = dirs.filter((d) => d && !fs.existsSync(path.join(d, 'codellama-lsp'))).join(path.delimiter);
  const env = {
    ...process.env, PATH, CARGO_HOME: path.join(tmp, 'cargo'), HF_ENDPOINT: hub.url, HF_HOME: path.join(tmp, 'hf'),
    XDG_CONFIG_HOME: path.join(tmp, 'config'), XDG_DATA_HOME: path.join(tmp, 'data'),
  };
  for (const name of ['CODELLAMA_LSP_MODEL', 'CODELLAMA_LSP_MODELS', 'HF_TOKEN']) delete env[name];
  return env;
}

function startCodeServer(dirs, port, env) {
  const child = spawn(
    CODE_SERVER,
    ['--auth', 'none', '--bind-addr', `127.0.0.1:${port}`, '--disable-telemetry', '--disable-update-check',
      '--disable-workspace-trust', '--user-data-dir', dirs.user, '--extensions-dir', dirs.ext, dirs.ws],
    { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  let log = '';
  const listening = new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d;
      if (/HTTP server listening/.test(log)) resolve();
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`code-server exited (${code}):\n${log}`)));
    setTimeout(() => reject(new Error(`code-server did not listen within 60 s:\n${log}`)), 60000).unref();
  });
  return { child, listening, log: () => log };
}

/** On failure: the extension's output channel and the extension host log, from the profile's logs folder. */
function printLogs(dir) {
  const walk = (d) => fs.readdirSync(d, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
  if (!fs.existsSync(dir)) return;
  for (const file of walk(dir).filter((f) => /Code Llama|exthost\.log|remoteexthost\.log/.test(f))) {
    console.error(`----- ${file}\n${fs.readFileSync(file, 'utf8').slice(-6000)}`);
  }
}

/** Ends code-server and everything it started (it runs in its own process group). */
async function stop(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const signal = (sig) => { try { process.kill(-child.pid, sig); } catch { /* gone */ } };
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
  child.stdout.destroy();
  child.stderr.destroy();
}

const nbsp = (s) => s.replace(/\u00a0/g, ' ');

/** The executables of code-server's process group (it runs detached, so the group is everything it started). */
function groupExecutables(pgid) {
  const exes = [];
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      // Field 5 of /proc/PID/stat is the process group; the command name (field 2) may hold spaces, so split after it.
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]) === pgid) exes.push(fs.readlinkSync(`/proc/${pid}/exe`));
    } catch {
      // exited meanwhile
    }
  }
  return exes;
}

/**
 * Saves, waits until `file` differs from `before` and has stopped changing (a read can land between the editor's
 * truncate and write), and returns its text.
 */
async function savedText(page, file, before) {
  await page.keyboard.press('Control+S');
  const deadline = Date.now() + 15000;
  let [previous, text] = [before, fs.readFileSync(file, 'utf8')];
  while ((text === before || text !== previous) && Date.now() < deadline) {
    await page.waitForTimeout(100);
    [previous, text] = [text, fs.readFileSync(file, 'utf8')];
  }
  return text;
}

test('the platform .vsix runs its own server: model download, ghost text, accept word, line, rest; explain', { timeout: 420000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'codellama-vscode-e2e-'));
  const dirs = makeProfile(tmp);
  const model = fs.readFileSync(MODEL);
  const hub = await startHub(model);
  const env = serverlessEnv(tmp, hub);
  assert.ok(!env.PATH.split(path.delimiter).some((d) => fs.existsSync(path.join(d, 'codellama-lsp'))));
  execFileSync(CODE_SERVER, ['--user-data-dir', dirs.user, '--extensions-dir', dirs.ext, '--install-extension', VSIX],
    { stdio: 'inherit', env });
  const installed = fs.readdirSync(dirs.ext).filter((d) => d.startsWith('codellama-lsp.codellama-lsp-'));
  assert.equal(installed.length, 1, `one installed copy of the extension in ${dirs.ext}: ${installed}`);
  const bundled = path.join(dirs.ext, installed[0], 'server', 'codellama-lsp');
  const port = await freePort();
  const server = startCodeServer(dirs, port, env);
  let browser;
  try {
    await server.listening;
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
    const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.ws)}`);
    await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });

    // Quick Open is flaky while the file index builds; the Explorer row is reliable.
    const row = page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'sample.py' });
    await row.waitFor({ timeout: 60000 });
    await row.dblclick();
    await page.locator('.monaco-editor .view-lines').first().waitFor({ timeout: 30000 });

    // The extension's status bar item says what the server does (no fixed sleeps); an error ends the wait at once.
    const error = page.locator('[aria-label="Code Llama: error"]').first();
    const unlessError = (locator, timeout) => Promise.race([
      locator.waitFor({ timeout }),
      error.waitFor({ timeout }).then(() => { throw new Error('the status bar shows Code Llama: error (its log is below)'); }),
    ]);

    // The model downloads: our status item counts the percentage, and the server's $/progress (which
    // vscode-languageclient shows in the status bar) names the file.
    const downloading = page.locator('[aria-label="Code Llama: loading"]', { hasText: /\d+%/ }).first();
    await unlessError(downloading, 90000);
    const progress = page.locator('.statusbar-item', { hasText: /downloading smollm2\.gguf/ }).first();
    await progress.waitFor({ timeout: 10000 });
    const percent = async () => Number(/(\d+)%/.exec(await downloading.textContent())?.[1] ?? 100);
    for (let last = await percent(); last < 20; last = await percent()) await page.waitForTimeout(200);
    await page.screenshot({ path: path.join(SCREENSHOTS, 'vscode-download.png') });
    console.log(`# while downloading: ${JSON.stringify(await progress.innerText())}, ${JSON.stringify(await downloading.innerText())}`);
    hub.fast();

    await unlessError(page.locator('[aria-label="Code Llama: ready"]').first(), 120000);

    assert.ok(hub.sent >= model.length, `the Hub sent ${hub.sent} of ${model.length} bytes`);
    const servers = groupExecutables(server.child.pid).filter((exe) => path.basename(exe) === 'codellama-lsp');
    assert.deepEqual(servers, [bundled], 'the one codellama-lsp that code-server started is the bundled one');
    console.log(`# the server running: ${servers[0]}`);

    await page.locator('.monaco-editor .view-lines').first().click();
    await page.keyboard.press('Control+End');
    await page.keyboard.press('ArrowUp');
    await page.keyboard.press('End');
    await page.keyboard.type(TYPED, { delay: 50 });

    const ghost = page.locator('.monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text');
    const deadline = Date.now() + 90000;
    let lastRetype = Date.now();
    while (!(await ghost.count())) {
      if (Date.now() > deadline) throw new Error('no ghost text within 90 s');
      if (Date.now() - lastRetype > 8000) {
        // A keystroke may have raced the document sync; ask again the way a user would, by typing.
        await page.keyboard.press('Backspace');
        await page.keyboard.type(TYPED.slice(-1));
        lastRetype = Date.now();
      }
      await page.waitForTimeout(250);
    }
    await page.waitForTimeout(300); // let the decoration finish rendering before the screenshot
    const firstLineGhost = nbsp(
      await page.locator('.monaco-editor .view-line .ghost-text-decoration').allTextContents().then((t) => t.join('')),
    );
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, 'vscode-ghost-text.png') });
    console.log(`# ghost text (first line): ${JSON.stringify(firstLineGhost)}`);

    const file = path.join(dirs.ws, 'sample.py');
    const lineStart = `    ${TYPED}`;
    const line2 = (text) => text.split('\n')[1];
    // The typed text on its own, saved, is what the accepts below build on.
    let text = await savedText(page, file, ORIGINAL);
    assert.equal(line2(text), lineStart);

    // One word at a time: each accept adds a piece of the ghost text's first line, and the rest stays shown.
    const accepted = [];
    for (let i = 0; i < 2; i += 1) {
      await page.keyboard.press(ACCEPT_WORD);
      const before = text;
      text = await savedText(page, file, before);
      console.log(`# after acceptNextWord: ${JSON.stringify(text)}`);
      const got = line2(text).slice(lineStart.length);
      assert.ok(got.length > (accepted.at(-1) ?? '').length, `acceptNextWord added nothing: line 2 is ${JSON.stringify(line2(text))}`);
      assert.ok(firstLineGhost.startsWith(got), `line 2 ${JSON.stringify(line2(text))} is not "${lineStart}" + a prefix of the ghost text`);
      assert.ok(got.length < firstLineGhost.length, 'one word, not the whole line');
      assert.equal(text.split('\n').length, ORIGINAL.split('\n').length, 'no line break accepted with a word');
      accepted.push(got);
      await ghost.first().waitFor({ timeout: 5000 });
    }
    await page.waitForTimeout(300);
    await page.screenshot({ path: path.join(SCREENSHOTS, 'vscode-accept-word.png') });

    // The rest of the line, with its line break: the suggestion's first line is now in the document.
    await page.keyboard.press(ACCEPT_LINE);
    text = await savedText(page, file, text);
    console.log(`# after acceptNextLine: ${JSON.stringify(text)}`);
    assert.equal(line2(text), lineStart + firstLineGhost.trimEnd());
    const linesAfterLine = text.split('\n').length;
    assert.equal(linesAfterLine, ORIGINAL.split('\n').length + 1, 'acceptNextLine took the line break too');

    // Tab: everything left (the suggestion's further lines). The cursor is now at the start of an empty line and
    // the rest starts with indentation, so VS Code's first Tab indents (as it does for any ghost text that starts
    // with indentation) and the next one accepts.
    await ghost.first().waitFor({ timeout: 5000 });
    await page.waitForTimeout(300);
    const rest = nbsp(
      await page.locator('.monaco-editor .view-line .ghost-text-decoration').allTextContents().then((t) => t.join('')),
    );
    console.log(`# ghost text left (its first line): ${JSON.stringify(rest)}`);
    assert.match(rest, /\S/, 'the rest of the suggestion is shown');
    for (let tabs = 0; (await ghost.count()) > 0; tabs += 1) {
      assert.ok(tabs < 3, 'Tab accepts the rest within two presses');
      await page.keyboard.press('Tab');
      text = await savedText(page, file, text);
      console.log(`# after Tab: ${JSON.stringify(text)}`);
      await page.waitForTimeout(300);
    }
    assert.ok(text.split('\n').length >= linesAfterLine, 'nothing accepted so far was lost');
    assert.ok(text.startsWith(`def fib(n):\n${lineStart}${firstLineGhost.trimEnd()}\n`), 'the first line stays');
    const line3 = text.split('\n')[2];
    assert.ok(line3.trimStart().startsWith(rest.trimStart().trimEnd()) && line3.trim().length > 0,
      `line 3 ${JSON.stringify(line3)} is the rest of the suggestion ${JSON.stringify(rest)}`);

    // Explain: select everything, open the code actions (Ctrl+.), run "Explain this code"; its answer is a comment
    // block above the selection.
    // A Ctrl+. that lands while the editor is still busy with the accepted suggestion opens nothing (seen
    // once in CI), so the keys are pressed again every 5 s until the widget shows, 30 s at most.
    const explain = page.locator('.action-widget .monaco-list-row', { hasText: 'Explain this code' });
    const actionsDeadline = Date.now() + 30000;
    for (;;) {
      await page.keyboard.press('Control+A');
      await page.keyboard.press('Control+Period');
      try {
        await explain.waitFor({ timeout: 5000 });
        break;
      } catch (err) {
        if (Date.now() > actionsDeadline) throw err;
        console.log('# no code-action widget after Ctrl+. within 5 s: pressing again');
      }
    }
    await explain.click();
    const code = text;
    const explainDeadline = Date.now() + 120000;
    while (fs.readFileSync(file, 'utf8') === code && Date.now() < explainDeadline) {
      await page.keyboard.press('Control+S');
      await page.waitForTimeout(500);
    }
    const explained = fs.readFileSync(file, 'utf8');
    console.log(`# after Explain this code: ${JSON.stringify(explained)}`);
    assert.ok(explained.endsWith(code), 'the code is kept, below the explanation');
    const comment = explained.slice(0, explained.length - code.length);
    assert.match(comment, /^(#.*\n)+$/, 'the explanation is a block of Python comments');
  } catch (err) {
    console.error(server.log().slice(-4000));
    printLogs(path.join(dirs.user, 'logs'));
    throw err;
  } finally {
    await browser?.close().catch(() => {});
    await stop(server.child);
    hub.server.closeAllConnections();
    hub.server.close();
    fs.rmSync(tmp, { recursive: true, force: true, maxRetries: 3 });
  }
});
