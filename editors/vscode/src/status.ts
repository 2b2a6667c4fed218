import * as vscode from 'vscode';

/** Params of the server's `codellama/status` notification. */
export interface Timings {
  prefill_ms: number;
  decode_ms: number;
  prompt_tokens: number;
  reused_tokens: number;
  generated_tokens: number;
  total_ms: number;
}

export type ServerState = 'starting' | 'loading' | 'ready' | 'generating' | 'error' | 'stopped';

export interface StatusParams {
  state: 'loading' | 'ready' | 'generating' | 'error';
  message?: string;
  progress?: number;
  model?: string;
  timings?: Timings;
  /** "chat": about the chat model (`chat_model`) loading beside the completion model. */
  role?: 'chat';
}

export const STATUS_METHOD = 'codellama/status';

/** The status bar item: what the server is doing, the model, and the last completion's timings. */
export class StatusBar implements vscode.Disposable {
  readonly item: vscode.StatusBarItem;
  state: ServerState = 'starting';
  private message: string | undefined;
  private progress: number | undefined;
  private model: string | undefined;
  private timings: Timings | undefined;
  /** The chat model's own loading state, when `chat_model` names one: a line of the tooltip. */
  private chat: string | undefined;
  private inlineEnabled = true;

  constructor() {
    this.item = vscode.window.createStatusBarItem('codellama.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'Code Llama';
    this.item.command = 'codellama.toggleInlineSuggestions';
    this.render();
    this.item.show();
  }

  /** Applies a `codellama/status` notification. */
  update(params: StatusParams): void {
    if (params.role === 'chat') {
      this.chat = chatLine(params);
      this.render();
      return;
    }
    this.state = params.state;
    this.message = params.message;
    this.progress = params.progress;
    if (params.model) this.model = params.model;
    if (params.timings) this.timings = params.timings;
    this.render();
  }

  setState(state: ServerState, message?: string): void {
    this.state = state;
    this.message = message;
    this.progress = undefined;
    this.render();
  }

  setInlineEnabled(enabled: boolean): void {
    this.inlineEnabled = enabled;
    this.render();
  }

  private render(): void {
    const { icon, label } = this.describe();
    const downloading = this.state === 'loading' && this.message?.startsWith('downloading');
    const percent = this.state === 'loading' && this.progress !== undefined ? ` ${Math.round(this.progress)}%` : '';
    this.item.text = `${icon} Code Llama${downloading ? ': downloading' : ''}${percent}`;
    // The e2e test waits on this label; keep "Code Llama: <state>" stable.
    this.item.accessibilityInformation = { label: `Code Llama: ${this.state}` };
    this.item.backgroundColor =
      this.state === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
    const md = new vscode.MarkdownString(undefined, true);
    md.appendMarkdown(`**Code Llama**: ${label}`);
    if (this.message) md.appendMarkdown(`\n\n${escapeMarkdown(this.message)}`);
    if (this.model) md.appendMarkdown(`\n\nModel: \`${this.model.replace(/`/g, "'")}\``);
    if (this.chat) md.appendMarkdown(`\n\n${escapeMarkdown(this.chat)}`);
    if (this.timings) md.appendMarkdown(`\n\n${timingsMarkdown(this.timings)}`);
    md.appendMarkdown(`\n\nClick to ${this.inlineEnabled ? 'disable' : 'enable'} inline suggestions.`);
    this.item.tooltip = md;
  }

  private describe(): { icon: string; label: string } {
    switch (this.state) {
      case 'starting':
        return { icon: '$(loading~spin)', label: 'starting the server' };
      case 'loading':
        // The server reports a Hub download as loading with the message "downloading FILE (X of Y MB)".
        return this.message?.startsWith('downloading')
          ? { icon: '$(cloud-download)', label: 'downloading the model' }
          : { icon: '$(loading~spin)', label: 'loading the model' };
      case 'ready':
        return this.inlineEnabled
          ? { icon: '$(check)', label: 'ready' }
          : { icon: '$(circle-slash)', label: 'ready (inline suggestions off)' };
      case 'generating':
        return { icon: '$(sync~spin)', label: 'generating' };
      case 'error':
        return { icon: '$(error)', label: 'error' };
      case 'stopped':
        return { icon: '$(debug-stop)', label: 'server not running' };
    }
  }

  dispose(): void {
    this.item.dispose();
  }
}

/** The tooltip line for the chat model: "Chat model: loading 40%", "Chat model: ready (name)", ... */
export function chatLine(p: StatusParams): string {
  const name = p.model ? ` (${p.model})` : '';
  switch (p.state) {
    case 'loading':
      return `Chat model: loading${p.progress !== undefined ? ` ${Math.round(p.progress)}%` : ''}${name}`;
    case 'error':
      return `Chat model: error: ${p.message ?? ''}`;
    default:
      return `Chat model: ${p.state}${name}`;
  }
}

export function timingsMarkdown(t: Timings): string {
  const tokPerS = t.decode_ms > 0 ? ((t.generated_tokens * 1000) / t.decode_ms).toFixed(1) : '–';
  return [
    '| last completion | |',
    '|---|---:|',
    `| prompt tokens (reused) | ${t.prompt_tokens} (${t.reused_tokens}) |`,
    `| prefill | ${t.prefill_ms} ms |`,
    `| generated tokens | ${t.generated_tokens} (${tokPerS} tok/s) |`,
    `| decode | ${t.decode_ms} ms |`,
    `| total | ${t.total_ms} ms |`,
  ].join('\n');
}

function escapeMarkdown(s: string): string {
  return s.replace(/[\\`*_{}[\]()#+\-.!|<>]/g, '\\$&');
}
