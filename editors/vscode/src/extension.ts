import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
  TransportKind,
} from 'vscode-languageclient/node';
import { ExplanationView } from './explain';
import {
  ExtensionInfo,
  findServer,
  missingServerMessage,
  SERVER_BINARY,
  thisExtension,
  versionMismatchMessage,
} from './serverPath';
import { documentSelector, toServerSettings, userValue } from './settings';
import { SHOW_LOG_COMMAND, STATUS_METHOD, StatusBar, StatusParams } from './status';

const SECTION = 'codellama';
/** Settings that need a new client (command line or document selector), not just didChangeConfiguration. */
const RESTART_SETTINGS = ['serverPath', 'languages'];

interface ExplainResult {
  markdown?: string;
}
interface GenerateResult {
  applied?: boolean;
  code?: string;
}

/** The running extension: one language client, its status bar item and the explanation panel. */
export class CodeLlama implements vscode.Disposable {
  client: LanguageClient | undefined;
  readonly status = new StatusBar();
  readonly explanation = new ExplanationView();
  private readonly output = vscode.window.createOutputChannel('Code Llama', { log: true });
  private readonly disposables: vscode.Disposable[] = [];

  /** `extension`: where to find the bundled server and which server version to expect (tests pass another). */
  constructor(private readonly extension: ExtensionInfo = thisExtension()) {
    this.status.setInlineEnabled(this.inlineEnabled());
    this.disposables.push(
      this.status,
      this.explanation,
      this.output,
      vscode.commands.registerCommand('codellama.explainSelection', () => this.explainSelection()),
      vscode.commands.registerCommand('codellama.generateFromInstruction', () => this.generateFromInstruction()),
      vscode.commands.registerCommand('codellama.toggleInlineSuggestions', () => this.toggleInlineSuggestions()),
      vscode.commands.registerCommand('codellama.restartServer', () => this.restart()),
      vscode.commands.registerCommand(SHOW_LOG_COMMAND, () => this.showLog()),
      vscode.workspace.onDidChangeConfiguration((e) => this.onConfigurationChanged(e)),
    );
  }

  private config(): vscode.WorkspaceConfiguration {
    return vscode.workspace.getConfiguration(SECTION);
  }

  private inlineEnabled(): boolean {
    return this.config().get<boolean>('enableInlineSuggestions', true);
  }

  /** Starts the server. Resolves once it is initialized (the model may still be loading), or after reporting why not. */
  async start(): Promise<void> {
    const cfg = this.config();
    const serverPath = cfg.get<string>('serverPath', '');
    const server = findServer(serverPath, this.extension.root);
    if (!server) {
      const message = missingServerMessage(serverPath || SERVER_BINARY);
      this.output.error(message);
      this.status.setState('error', message);
      void vscode.window.showErrorMessage(message, 'Open Settings').then((choice) => {
        if (choice) void vscode.commands.executeCommand('workbench.action.openSettings', `${SECTION}.serverPath`);
      });
      return;
    }
    const command = server.path;
    this.output.info(`server: ${command} (found by ${server.source})`);
    const serverOptions: ServerOptions = { command, args: ['serve'], transport: TransportKind.stdio };
    const clientOptions: LanguageClientOptions = {
      documentSelector: documentSelector(cfg.get<string[]>('languages', [])),
      initializationOptions: toServerSettings((key) => userValue(cfg.inspect(key))),
      outputChannel: this.output,
      middleware: {
        provideInlineCompletionItems: (document, position, context, token, next) =>
          this.inlineEnabled() ? next(document, position, context, token) : undefined,
        // The server's `textDocument/completion` item is a fallback for editors without inline completion. VS Code
        // shows ghost text, so the same suggestion in the suggest widget would be a duplicate (and would take Tab).
        provideCompletionItem: () => undefined,
        executeCommand: (name, args, next) => this.executeServerCommand(name, args, next),
      },
    };
    const client = new LanguageClient('codellama', 'Code Llama', serverOptions, clientOptions);
    this.client = client;
    this.status.setState('starting');
    client.onNotification(STATUS_METHOD, (params: StatusParams) => this.status.update(params));
    client.onDidChangeState((e) => {
      if (e.newState === State.Stopped && this.client === client) this.status.setState('stopped');
    });
    try {
      await client.start();
      const mismatch = versionMismatchMessage(server, client.initializeResult?.serverInfo?.version, this.extension.version);
      if (mismatch) {
        this.output.warn(mismatch);
        void vscode.window.showWarningMessage(mismatch);
      }
    } catch (err) {
      const message = `Code Llama: could not start ${command}: ${err instanceof Error ? err.message : String(err)}`;
      this.output.error(message);
      this.status.setState('error', message);
      void vscode.window.showErrorMessage(message);
    }
  }

  /** The server's log: its stderr and the client's own messages (the client's output channel is this one). */
  showLog(): void {
    this.output.show(true);
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client?.isRunning()) await client.stop();
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  private async onConfigurationChanged(e: vscode.ConfigurationChangeEvent): Promise<void> {
    if (!e.affectsConfiguration(SECTION)) return;
    this.status.setInlineEnabled(this.inlineEnabled());
    if (RESTART_SETTINGS.some((key) => e.affectsConfiguration(`${SECTION}.${key}`)) || !this.client) {
      await this.restart();
      return;
    }
    if (this.client.isRunning()) {
      const cfg = this.config();
      const settings = toServerSettings((key) => userValue(cfg.inspect(key)));
      await this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: { [SECTION]: settings } });
    }
  }

  /**
   * Every server command goes through here, whether from our commands or from a code action, so an explanation is
   * always shown and a long run can always be cancelled.
   */
  private executeServerCommand(
    name: string,
    args: unknown[],
    next: (command: string, args: unknown[]) => vscode.ProviderResult<unknown>,
  ): vscode.ProviderResult<unknown> {
    switch (name) {
      case 'codellama.explain':
        return this.withProgress('Code Llama: explaining…', async () => {
          const result = (await next(name, args)) as ExplainResult | undefined;
          if (result?.markdown) {
            await this.explanation.show(result.markdown);
          } else {
            void vscode.window.showInformationMessage(`Code Llama: no explanation (${this.notReadyReason()}).`);
          }
          return result;
        });
      case 'codellama.generate':
        return this.withProgress('Code Llama: generating…', async () => {
          // The "Generate code from instruction" code action carries no instruction: ask for it here.
          const arg = (args[0] ?? {}) as { instruction?: string };
          if (!arg.instruction) {
            const instruction = await this.askInstruction(isEmptyRange(arg));
            if (!instruction) return undefined;
            args = [{ ...arg, instruction }, ...args.slice(1)];
          }
          const result = (await next(name, args)) as GenerateResult | undefined;
          if (!result?.applied) {
            void vscode.window.showWarningMessage(
              result?.code ? 'Code Llama: the generated code could not be applied.' : `Code Llama: nothing generated (${this.notReadyReason()}).`,
            );
          }
          return result;
        });
      case 'codellama.applyAction':
        // A code action run as a command (clients that cannot resolve edits); VS Code resolves them, but a long
        // run should be cancellable either way.
        return this.withProgress('Code Llama: working…', async () => next(name, args));
      default:
        return next(name, args);
    }
  }

  private askInstruction(atCursor: boolean): Thenable<string | undefined> {
    return vscode.window.showInputBox({
      title: 'Code Llama: Generate Code',
      prompt: atCursor ? 'What should be generated at the cursor?' : 'What should the selected code be replaced with?',
      placeHolder: 'e.g. a function that parses an ISO 8601 date',
      ignoreFocusOut: true,
    });
  }

  private notReadyReason(): string {
    return this.status.state === 'ready' || this.status.state === 'generating'
      ? 'the model returned nothing'
      : `the server is ${this.status.state}`;
  }

  private withProgress<T>(title: string, work: () => Promise<T>): Thenable<T> {
    return vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title, cancellable: true },
      async (_progress, token) => {
        const cancel = token.onCancellationRequested(() => {
          void this.client?.sendRequest(ExecuteCommandRequest.type, { command: 'codellama.cancel', arguments: [] });
        });
        try {
          return await work();
        } finally {
          cancel.dispose();
        }
      },
    );
  }

  /** The active editor and the protocol form of its document, or undefined after telling the user why not. */
  private activeTarget(): { editor: vscode.TextEditor; client: LanguageClient } | undefined {
    const editor = vscode.window.activeTextEditor;
    if (!editor) {
      void vscode.window.showInformationMessage('Code Llama: open a file first.');
      return undefined;
    }
    if (!this.client?.isRunning()) {
      void vscode.window.showErrorMessage('Code Llama: the language server is not running.');
      return undefined;
    }
    return { editor, client: this.client };
  }

  async explainSelection(): Promise<unknown> {
    const target = this.activeTarget();
    if (!target) return undefined;
    const { editor, client } = target;
    const selection = editor.selection;
    const range = selection.isEmpty ? editor.document.lineAt(selection.active.line).range : selection;
    return vscode.commands.executeCommand('codellama.explain', {
      uri: client.code2ProtocolConverter.asUri(editor.document.uri),
      range: client.code2ProtocolConverter.asRange(range),
    });
  }

  async generateFromInstruction(): Promise<unknown> {
    const target = this.activeTarget();
    if (!target) return undefined;
    const { editor, client } = target;
    const instruction = await this.askInstruction(editor.selection.isEmpty);
    if (!instruction) return undefined;
    const c2p = client.code2ProtocolConverter;
    const where = editor.selection.isEmpty
      ? { position: c2p.asPosition(editor.selection.active) }
      : { range: c2p.asRange(editor.selection) };
    return vscode.commands.executeCommand('codellama.generate', {
      uri: c2p.asUri(editor.document.uri),
      ...where,
      instruction,
    });
  }

  async toggleInlineSuggestions(): Promise<void> {
    const cfg = this.config();
    const enabled = !this.inlineEnabled();
    const inspected = cfg.inspect<boolean>('enableInlineSuggestions');
    const target =
      inspected?.workspaceValue !== undefined ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    await cfg.update('enableInlineSuggestions', enabled, target);
    vscode.window.setStatusBarMessage(`Code Llama inline suggestions ${enabled ? 'on' : 'off'}`, 3000);
  }

  dispose(): void {
    void this.stop();
    for (const d of this.disposables) d.dispose();
  }
}

/** Whether a command argument's LSP range is empty (a cursor). */
function isEmptyRange(arg: unknown): boolean {
  const r = (arg as { range?: { start: { line: number; character: number }; end: { line: number; character: number } } })
    .range;
  return !r || (r.start.line === r.end.line && r.start.character === r.end.character);
}

let instance: CodeLlama | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<CodeLlama> {
  instance = new CodeLlama();
  context.subscriptions.push(instance);
  await instance.start();
  return instance;
}

export async function deactivate(): Promise<void> {
  await instance?.stop();
  instance = undefined;
}
