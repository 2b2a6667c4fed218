import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export const SERVER_BINARY = 'codellama-lsp';

export const MISSING_SERVER_MESSAGE =
  "Code Llama: the language server binary '{0}' was not found. Install it by running `cargo install --path .` " +
  'in the codellama-lsp repository (it goes to ~/.cargo/bin), or set `codellama.serverPath` to the binary.';

export function missingServerMessage(what: string): string {
  return MISSING_SERVER_MESSAGE.replace('{0}', what);
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
 * Finds the server binary: the `codellama.serverPath` setting if given (a path, or a name looked up on PATH),
 * otherwise `codellama-lsp` on PATH, then in ~/.cargo/bin (where `cargo install` puts it, often not on the
 * PATH that GUI-launched editors see). Returns undefined when nothing executable is found.
 */
export function findServer(setting: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const configured = (setting ?? '').trim();
  const exe = process.platform === 'win32' ? '.exe' : '';
  if (configured) {
    const expanded = expandHome(configured);
    if (expanded.includes('/') || expanded.includes(path.sep)) {
      return isExecutableFile(expanded) ? path.resolve(expanded) : undefined;
    }
    return searchPath(expanded, env);
  }
  const home = env.HOME ?? os.homedir();
  return (
    searchPath(SERVER_BINARY + exe, env) ??
    [path.join(env.CARGO_HOME ?? path.join(home, '.cargo'), 'bin', SERVER_BINARY + exe)].find(isExecutableFile)
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
