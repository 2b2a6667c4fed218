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
/** What a click on the item does: normally toggle inline suggestions; after an error, show the server's log. */
export const TOGGLE_COMMAND = 'codellama.toggleInlineSuggestions';
export const SHOW_LOG_COMMAND = 'codellama.showLog';
/** The model's name is cut to this many characters in the status bar (the tooltip has it whole). */
const MODEL_WIDTH = 32;

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
    // A model (re)loading: the last suggestion's timings were another model's.
    if (params.state === 'loading') this.timings = undefined;
    this.state = params.state;
    this.message = params.message;
    this.progress = params.progress;
    if (params.model) this.model = params.model;
    if (params.timings) this.timings = params.timings;
    this.render();
  }

  setState(state: ServerState, message?: string): void {
    if (state === 'starting') {
      // A new server: what the last one said about its model and completions no longer holds.
      this.model = this.timings = this.chat = undefined;
    }
    this.state = state;
    this.message = message;
    this.progress = undefined;
    this.render();
  }

  setInlineEnabled(enabled: boolean): void {
    this.inlineEnabled = enabled;
    this.render();
  }

  /** After an error, or once the server has stopped, the log says why: a click shows it. */
  private failed(): boolean {
    return this.state === 'error' || this.state === 'stopped';
  }

  private render(): void {
    const { icon, label } = this.describe();
    this.item.text = `${icon} ${this.summary()}`;
    // The e2e test waits on this label; keep "Code Llama: <state>" stable.
    this.item.accessibilityInformation = { label: `Code Llama: ${this.state}` };
    this.item.backgroundColor =
      this.state === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
    this.item.command = this.failed() ? SHOW_LOG_COMMAND : TOGGLE_COMMAND;
    const md = new vscode.MarkdownString(undefined, true);
    md.appendMarkdown(`**Code Llama**: ${label}`);
    if (this.message) md.appendMarkdown(`\n\n${escapeMarkdown(this.message)}`);
    if (this.model) md.appendMarkdown(`\n\nModel: \`${this.model.replace(/`/g, "'")}\``);
    if (this.chat) md.appendMarkdown(`\n\n${escapeMarkdown(this.chat)}`);
    if (this.timings) md.appendMarkdown(`\n\n${timingsMarkdown(this.timings)}`);
    md.appendMarkdown(
      this.failed()
        ? "\n\nClick to show the server's log."
        : `\n\nClick to ${this.inlineEnabled ? 'disable' : 'enable'} inline suggestions.`,
    );
    this.item.tooltip = md;
  }

  /**
   * The item's text after its icon: "Code Llama: loading 40%", "Code Llama: downloading 12%", and once the model
   * is loaded its name with the last suggestion's latency and speed: "SmolLM2 135M · 312 ms · 45 tok/s".
   */
  private summary(): string {
    switch (this.state) {
      case 'loading': {
        const verb = this.downloading() ? 'downloading' : 'loading';
        return `Code Llama: ${verb}${this.progress !== undefined ? ` ${Math.round(this.progress)}%` : ''}`;
      }
      case 'ready':
      case 'generating': {
        const parts = [this.model ? shorten(this.model, MODEL_WIDTH) : 'Code Llama'];
        if (this.timings) parts.push(...speed(this.timings));
        return parts.join(' · ');
      }
      default:
        return `Code Llama: ${this.state}`;
    }
  }

  /** The server reports a Hub download as loading with the message "downloading FILE (X of Y MB)". */
  private downloading(): boolean {
    return this.state === 'loading' && this.message?.startsWith('downloading') === true;
  }

  private describe(): { icon: string; label: string } {
    switch (this.state) {
      case 'starting':
        return { icon: '$(loading~spin)', label: 'starting the server' };
      case 'loading':
        return this.downloading()
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

/** Tokens per second while decoding, or undefined when nothing was decoded (as Neovim's statusline counts them). */
export function tokensPerSecond(t: Timings): number | undefined {
  return t.decode_ms > 0 && t.generated_tokens > 0 ? (t.generated_tokens * 1000) / t.decode_ms : undefined;
}

/** ["312 ms", "45 tok/s"]: the last suggestion's latency (request to answer, in the server) and decoding speed. */
export function speed(t: Timings): string[] {
  const tokPerS = tokensPerSecond(t);
  return [`${Math.round(t.total_ms)} ms`, ...(tokPerS === undefined ? [] : [`${Math.round(tokPerS)} tok/s`])];
}

export function timingsMarkdown(t: Timings): string {
  const tokPerS = tokensPerSecond(t)?.toFixed(1) ?? '–';
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

/** `s` cut to `width` characters, with an ellipsis when cut. */
function shorten(s: string, width: number): string {
  return s.length > width ? `${s.slice(0, width - 1)}…` : s;
}

function escapeMarkdown(s: string): string {
  return s.replace(/[\\`*_{}[\]()#+\-.!|<>]/g, '\\$&');
}
