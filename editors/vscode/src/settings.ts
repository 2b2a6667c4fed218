// The extension's `codellama.*` settings (camelCase, VS Code convention) and the server's keys (snake_case).
// Only values the user has given are sent; for the rest the server's own defaults apply.

/** camelCase setting name -> server key. `serverPath` and `enableInlineSuggestions` are client-only. */
export const SERVER_KEYS: Readonly<Record<string, string>> = {
  model: 'model',
  chatModel: 'chat_model',
  backend: 'backend',
  remote: 'remote',
  maxTokens: 'max_tokens',
  actionMaxTokens: 'action_max_tokens',
  contextWindow: 'context_window',
  prefixSuffixRatio: 'prefix_suffix_ratio',
  temperature: 'temperature',
  threads: 'threads',
  languages: 'languages',
  fimTemplate: 'fim_template',
  fimOrder: 'fim_order',
  logLevel: 'log_level',
};

export type ServerSettings = Record<string, unknown>;

/**
 * Builds the settings object the server expects, from a getter over the `codellama` configuration section.
 * Unset values (undefined, null, empty strings) are left out, and `fimOrder: "auto"` means "the server's choice".
 */
export function toServerSettings(get: (key: string) => unknown): ServerSettings {
  const out: ServerSettings = {};
  for (const [key, serverKey] of Object.entries(SERVER_KEYS)) {
    const value = get(key);
    if (value === undefined || value === null || value === '') continue;
    if (key === 'fimOrder' && value === 'auto') continue;
    out[serverKey] = value;
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
