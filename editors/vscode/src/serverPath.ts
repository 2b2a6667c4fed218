import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export const SERVER_BINARY = 'codellama-lsp';

export const MISSING_SERVER_MESSAGE =
  "Code Llama: the language server binary '{0}' was not found. Install the extension's .vsix for your platform " +
  '(it brings the server), or build the server with `cargo install --path .` in the codellama-lsp repository ' +
  '(it goes to ~/.cargo/bin), or set `codellama.serverPath` to the binary.';

export function missingServerMessage(what: string): string {
  return MISSING_SERVER_MESSAGE.replace('{0}', what);
}

/** This extension: its folder (out/ is one level down) and the version in its package.json. */
export interface ExtensionInfo {
  root: string;
  version: string;
}

export function thisExtension(): ExtensionInfo {
  const root = path.resolve(__dirname, '..');
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
  return { root, version: pkg.version };
}

/** Where a platform-specific .vsix carries the server (scripts/package-vscode puts it there). */
export function bundledServer(extensionRoot: string): string {
  return path.join(extensionRoot, 'server', SERVER_BINARY + (process.platform === 'win32' ? '.exe' : ''));
}

/** A server binary and which rule of the lookup found it (for the log and the mismatch message). */
export interface FoundServer {
  path: string;
  source: 'serverPath' | 'bundled' | 'PATH' | 'cargo';
}

function isExecutableFile(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    if (process.platform !== 'win32') fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

/**
 * Finds the server binary: the `codellama.serverPath` setting if given (a path, or a name looked up on PATH);
 * otherwise the server bundled in the extension (the platform .vsix), so that the server and the extension match;
 * otherwise `codellama-lsp` on PATH, then in ~/.cargo/bin (where `cargo install` puts it, often not on the PATH that
 * GUI-launched editors see). Returns undefined when nothing executable is found.
 */
export function findServer(
  setting: string | undefined,
  extensionRoot: string,
  env: NodeJS.ProcessEnv = process.env,
): FoundServer | undefined {
  const configured = (setting ?? '').trim();
  const exe = process.platform === 'win32' ? '.exe' : '';
  const found = (source: FoundServer['source']) => (p: string | undefined) => (p ? { path: p, source } : undefined);
  if (configured) {
    const expanded = expandHome(configured);
    if (expanded.includes('/') || expanded.includes(path.sep)) {
      return found('serverPath')(isExecutableFile(expanded) ? path.resolve(expanded) : undefined);
    }
    return found('serverPath')(searchPath(expanded, env));
  }
  const home = env.HOME ?? os.homedir();
  const cargo = path.join(env.CARGO_HOME ?? path.join(home, '.cargo'), 'bin', SERVER_BINARY + exe);
  return (
    found('bundled')([bundledServer(extensionRoot)].find(isExecutableFile)) ??
    found('PATH')(searchPath(SERVER_BINARY + exe, env)) ??
    found('cargo')([cargo].find(isExecutableFile))
  );
}

function searchPath(name: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return undefined;
}

/**
 * The one message shown when the server's version (its `serverInfo.version`) is not the extension's: settings and
 * commands are made for one version, so a stale `codellama-lsp` on PATH or in `serverPath` is worth knowing about.
 * Undefined when they match.
 */
export function versionMismatchMessage(
  server: FoundServer,
  serverVersion: string | undefined,
  extensionVersion: string,
): string | undefined {
  if (serverVersion === extensionVersion) return undefined;
  const what = serverVersion ? `is version ${serverVersion}` : 'reports no version';
  const fix =
    server.source === 'bundled'
      ? 'Reinstall the extension.'
      : `Remove \`codellama.serverPath\` to use the server this extension brings (the .vsix for your platform), or ` +
        `point it at codellama-lsp ${extensionVersion}.`;
  return `Code Llama: the language server ${server.path} (found by ${server.source}) ${what}, but the extension is version ${extensionVersion}. ${fix}`;
}
