// The packaged extension in real VS Code (code-server) in headless Chromium, against the real codellama-lsp.
// Run through scripts/test-vscode-e2e, which installs everything and sets the environment variables read below.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
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
const BIN = env('CODELLAMA_LSP_BIN');
const MODEL = env('CODELLAMA_LSP_MODEL');
const SCREENSHOT = env('SCREENSHOT');
const { chromium } = require(env('PLAYWRIGHT_CORE'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const ORIGINAL = 'def add(a, b):\n    \n';
const TYPED = 're';

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
  // serverPath and model are machine-scoped: code-server's extension host is "remote" and ignores them in User settings.
  writeJson(path.join(dirs.user, 'Machine', 'settings.json'), {
    'codellama.serverPath': BIN,
    'codellama.model': MODEL,
  });
  writeJson(path.join(dirs.user, 'User', 'settings.json'), {
    'codellama.maxTokens': 24,
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

function startCodeServer(dirs, port, tmp) {
  const child = spawn(
    CODE_SERVER,
    ['--auth', 'none', '--bind-addr', `127.0.0.1:${port}`, '--disable-telemetry', '--disable-update-check',
      '--disable-workspace-trust', '--user-data-dir', dirs.user, '--extensions-dir', dirs.ext, dirs.ws],
    { env: { ...process.env, XDG_CONFIG_HOME: path.join(tmp, 'config'), XDG_DATA_HOME: path.join(tmp, 'data') },
      stdio: ['ignore', 'pipe', 'pipe'], detached: true },
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

test('ghost text from codellama-lsp in VS Code; Tab accepts exactly it', { timeout: 300000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'codellama-vscode-e2e-'));
  const dirs = makeProfile(tmp);
  execFileSync(CODE_SERVER, ['--user-data-dir', dirs.user, '--extensions-dir', dirs.ext, '--install-extension', VSIX],
    { stdio: 'inherit', env: { ...process.env, XDG_CONFIG_HOME: path.join(tmp, 'config'), XDG_DATA_HOME: path.join(tmp, 'data') } });
  const port = await freePort();
  const server = startCodeServer(dirs, port, tmp);
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

    // The extension's status bar item says when the model is loaded: no fixed sleeps.
    const ready = page.locator('[aria-label="Code Llama: ready"]').first();
    const error = page.locator('[aria-label="Code Llama: error"]').first();
    await Promise.race([ready.waitFor({ timeout: 120000 }), error.waitFor({ timeout: 120000 }).then(() => {
      throw new Error('the status bar shows Code Llama: error');
    })]);

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
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
    console.log(`# ghost text (first line): ${JSON.stringify(firstLineGhost)}; screenshot: ${SCREENSHOT}`);

    await page.keyboard.press('Tab');
    await page.keyboard.press('Control+S');
    const file = path.join(dirs.ws, 'sample.py');
    const saveDeadline = Date.now() + 15000;
    while (fs.readFileSync(file, 'utf8') === ORIGINAL && Date.now() < saveDeadline) await page.waitForTimeout(200);
    const saved = fs.readFileSync(file, 'utf8');
    console.log(`# saved: ${JSON.stringify(saved)}`);
    const line = saved.split('\n')[1];
    assert.ok(line.startsWith(`    ${TYPED}${firstLineGhost}`), `line 2 is ${JSON.stringify(line)}, expected "    ${TYPED}" + the ghost text`);
    assert.ok(saved.length > ORIGINAL.length + TYPED.length, 'Tab inserted the suggestion, not just the typed text');
  } catch (err) {
    console.error(server.log().slice(-4000));
    printLogs(path.join(dirs.user, 'logs'));
    throw err;
  } finally {
    await browser?.close().catch(() => {});
    await stop(server.child);
    fs.rmSync(tmp, { recursive: true, force: true, maxRetries: 3 });
  }
});
