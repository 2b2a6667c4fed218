import * as vscode from 'vscode';

/** Shows explanations (Markdown from the server) in one webview panel beside the editor, reused across calls. */
export class ExplanationView implements vscode.Disposable {
  private panel: vscode.WebviewPanel | undefined;

  async show(markdown: string): Promise<void> {
    const html = await renderMarkdown(markdown);
    if (!this.panel) {
      this.panel = vscode.window.createWebviewPanel(
        'codellama.explanation',
        'Code Llama: Explanation',
        { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true },
        { enableScripts: false, enableFindWidget: true },
      );
      this.panel.onDidDispose(() => (this.panel = undefined));
    } else {
      this.panel.reveal(vscode.ViewColumn.Beside, true);
    }
    this.panel.webview.html = page(html);
  }

  /** The HTML shown now (for tests). */
  get html(): string | undefined {
    return this.panel?.webview.html;
  }

  dispose(): void {
    this.panel?.dispose();
  }
}

/** Renders with VS Code's built-in Markdown extension; falls back to preformatted text where it is absent. */
async function renderMarkdown(markdown: string): Promise<string> {
  try {
    const html = await vscode.commands.executeCommand<string>('markdown.api.render', markdown);
    if (typeof html === 'string' && html.length > 0) return html;
  } catch {
    // markdown-language-features disabled or missing
  }
  return `<pre>${escapeHtml(markdown)}</pre>`;
}

function page(body: string): string {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline';">
<style>
  body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); line-height: 1.5; }
  pre, code { font-family: var(--vscode-editor-font-family); }
  pre { background: var(--vscode-textCodeBlock-background); padding: 8px; overflow-x: auto; white-space: pre-wrap; }
</style>
</head>
<body>
${body}
</body>
</html>`;
}

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
