// The extension's `codellama.*` settings are the server's keys in camelCase (VS Code's convention): `maxTokens` is
// `max_tokens`. Their list is package.json's `contributes.configuration`, generated from the server's crates/server/src/config.rs.
// Only the values the user has set are sent; for the rest the server keeps its own default (or the environment's).

/** Settings of the extension itself, which the server never sees. */
export const CLIENT_ONLY: readonly string[] = ['serverPath', 'enableInlineSuggestions'];

/** `maxTokens` -> `max_tokens`. */
export function serverKey(setting: string): string {
  return setting.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** The settings the server reads (without the `codellama.` prefix), from `contributes.configuration.properties`. */
export function serverSettingNames(properties: Readonly<Record<string, unknown>>): string[] {
  return Object.keys(properties)
    .map((name) => name.replace(/^codellama\./, ''))
    .filter((name) => !CLIENT_ONLY.includes(name));
}

const contributed: Record<string, unknown> = require('../package.json').contributes.configuration.properties;

/** The settings the server reads, as this extension contributes them. */
export const SERVER_SETTINGS: readonly string[] = serverSettingNames(contributed);

export type ServerSettings = Record<string, unknown>;

/** What `WorkspaceConfiguration.inspect` says of one setting (the parts read here). */
export interface Inspected {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

/** The value the user set for a setting (folder, then workspace, then user settings); never the default. */
export function userValue(inspected: Inspected | undefined): unknown {
  return inspected?.workspaceFolderValue ?? inspected?.workspaceValue ?? inspected?.globalValue;
}

/**
 * Builds the settings object the server expects (snake_case keys) from a getter of the user's values over the
 * `codellama` configuration section. Settings the user has not set (undefined) are left out.
 */
export function toServerSettings(get: (setting: string) => unknown): ServerSettings {
  const out: ServerSettings = {};
  for (const setting of SERVER_SETTINGS) {
    const value = get(setting);
    if (value !== undefined) out[serverKey(setting)] = value;
  }
  return out;
}

/** The languages the client serves: an empty list means every language. */
export function documentSelector(languages: readonly string[] | undefined): { scheme: string; language?: string }[] {
  if (languages && languages.length > 0) {
    return languages.flatMap((language) => [
      { scheme: 'file', language },
      { scheme: 'untitled', language },
    ]);
  }
  return [{ scheme: 'file' }, { scheme: 'untitled' }];
}
