// A small stand-in for the `vscode` module so that the extension and vscode-languageclient run under plain Node.
// Real (tiny) classes where behaviour matters; every other member is a permissive stub returning disposables.
'use strict';
const Module = require('module');

class Disposable {
  constructor(fn) { this._fn = fn; }
  static from(...ds) { return new Disposable(() => ds.forEach((d) => d && d.dispose && d.dispose())); }
  dispose() { if (this._fn) { this._fn(); this._fn = undefined; } }
}

class EventEmitter {
  constructor() { this._listeners = new Set(); }
  get event() {
    return (listener, thisArg, disposables) => {
      const l = thisArg ? listener.bind(thisArg) : listener;
      this._listeners.add(l);
      const d = new Disposable(() => this._listeners.delete(l));
      if (Array.isArray(disposables)) disposables.push(d);
      return d;
    };
  }
  fire(e) { for (const l of [...this._listeners]) l(e); }
  dispose() { this._listeners.clear(); }
}

class Uri {
  constructor(scheme, path) { this.scheme = scheme; this.path = path; this.authority = ''; this.query = ''; this.fragment = ''; }
  static file(p) { return new Uri('file', p); }
  static parse(s) {
    const m = /^([a-z][a-z0-9+.-]*):(?:\/\/[^/]*)?(.*)$/i.exec(s);
    return m ? new Uri(m[1], decodeURIComponent(m[2])) : new Uri('file', s);
  }
  get fsPath() { return this.path; }
  with(change) { return Object.assign(new Uri(this.scheme, this.path), change); }
  toString() { return this.scheme === 'file' ? 'file://' + encodeURI(this.path) : `${this.scheme}:${this.path}`; }
  toJSON() { return this.toString(); }
}

class Position {
  constructor(line, character) { this.line = line; this.character = character; }
  isEqual(o) { return o.line === this.line && o.character === this.character; }
  isBefore(o) { return this.line < o.line || (this.line === o.line && this.character < o.character); }
  translate(dl = 0, dc = 0) { return new Position(this.line + dl, this.character + dc); }
}

class Range {
  constructor(a, b, c, d) {
    if (typeof a === 'number') { this.start = new Position(a, b); this.end = new Position(c, d); }
    else { this.start = a; this.end = b; }
  }
  get isEmpty() { return this.start.isEqual(this.end); }
}

class Selection extends Range {
  constructor(anchor, active) { super(anchor.isBefore(active) ? anchor : active, anchor.isBefore(active) ? active : anchor); this.anchor = anchor; this.active = active; }
}

class TextEdit { constructor(range, newText) { this.range = range; this.newText = newText; } }

class WorkspaceEdit {
  constructor() { this.entries = []; }
  set(uri, edits) { for (const e of edits) { const edit = Array.isArray(e) ? e[0] : e; this.entries.push([uri, edit]); } }
  replace(uri, range, newText) { this.entries.push([uri, new TextEdit(range, newText)]); }
  insert(uri, position, newText) { this.replace(uri, new Range(position, position), newText); }
}

/** Hierarchical code action kinds, as VS Code has them ("refactor.rewrite" contains "refactor.rewrite.x"). */
class CodeActionKind {
  constructor(value) { this.value = value; }
  append(part) { return new CodeActionKind(this.value ? `${this.value}.${part}` : part); }
  contains(other) { return this.value === '' || other.value === this.value || other.value.startsWith(this.value + '.'); }
  intersects(other) { return this.contains(other) || other.contains(this); }
}
for (const [name, value] of Object.entries({
  Empty: '', QuickFix: 'quickfix', Refactor: 'refactor', RefactorExtract: 'refactor.extract', RefactorInline: 'refactor.inline',
  RefactorMove: 'refactor.move', RefactorRewrite: 'refactor.rewrite', Source: 'source',
  SourceOrganizeImports: 'source.organizeImports', SourceFixAll: 'source.fixAll', Notebook: 'notebook',
})) CodeActionKind[name] = new CodeActionKind(value);

class CodeAction { constructor(title, kind) { this.title = title; this.kind = kind; } }

class InlineCompletionItem { constructor(insertText, range, command) { this.insertText = insertText; this.range = range; this.command = command; } }
class InlineCompletionList { constructor(items) { this.items = items; } }
class SnippetString { constructor(value) { this.value = value || ''; } }
class MarkdownString {
  constructor(value, supportThemeIcons) { this.value = value || ''; this.supportThemeIcons = supportThemeIcons; }
  appendMarkdown(s) { this.value += s; return this; }
  appendText(s) { this.value += s; return this; }
  appendCodeblock(s) { this.value += '\n```\n' + s + '\n```\n'; return this; }
}
class ThemeColor { constructor(id) { this.id = id; } }
class CancellationError extends Error {}
class CancellationTokenSource {
  constructor() {
    const emitter = new EventEmitter();
    this._emitter = emitter;
    this.token = { isCancellationRequested: false, onCancellationRequested: emitter.event };
  }
  cancel() { if (!this.token.isCancellationRequested) { this.token.isCancellationRequested = true; this._emitter.fire(); } }
  dispose() {}
}

/** A text document over a string, enough for languageclient's sync and converters. */
class TextDocument {
  constructor(uri, languageId, text) { this.uri = uri; this.languageId = languageId; this.version = 1; this._text = text; this.isClosed = false; this.isUntitled = false; this.isDirty = false; this.eol = 1; }
  get fileName() { return this.uri.fsPath; }
  get lineCount() { return this._text.split('\n').length; }
  getText(range) { if (!range) return this._text; return this._text.slice(this.offsetAt(range.start), this.offsetAt(range.end)); }
  offsetAt(p) { const lines = this._text.split('\n'); let o = 0; for (let i = 0; i < p.line && i < lines.length; i++) o += lines[i].length + 1; return o + p.character; }
  positionAt(offset) { const before = this._text.slice(0, offset).split('\n'); return new Position(before.length - 1, before[before.length - 1].length); }
  lineAt(lineOrPos) {
    const line = typeof lineOrPos === 'number' ? lineOrPos : lineOrPos.line;
    const text = this._text.split('\n')[line];
    return { lineNumber: line, text, range: new Range(line, 0, line, text.length), isEmptyOrWhitespace: text.trim() === '' };
  }
  applyEdit(edit) {
    const s = this.offsetAt(edit.range.start), e = this.offsetAt(edit.range.end);
    this._text = this._text.slice(0, s) + edit.newText + this._text.slice(e);
    this.version++;
  }
}

/** Anything not modelled: callable, constructible, and every property is another stub; calls return a disposable. */
function stub(name) {
  const fn = function () {};
  return new Proxy(fn, {
    get(_t, prop) {
      if (prop === 'dispose') return () => {};
      if (prop === 'then') return undefined; // not a thenable
      if (prop === Symbol.toPrimitive) return () => name;
      if (prop === Symbol.iterator) return undefined;
      return stub(`${name}.${String(prop)}`);
    },
    apply() { return new Disposable(); },
    construct() { return stub(`new ${name}`); },
  });
}

function contributedDefault(key) {
  const props = require('../package.json').contributes.configuration.properties;
  return props[key]?.default;
}

function createMock() {
  const state = {
    settings: {},            // "codellama.model" -> value
    commands: new Map(),     // registered commands
    inlineProviders: [],
    codeActionProviders: [],
    statusItems: [],
    outputChannels: [],
    webviews: [],
    messages: { error: [], warning: [], info: [] },
    inputBoxValue: undefined,
    appliedEdits: [],
    configEmitter: new EventEmitter(),
    openEmitter: new EventEmitter(),
  };

  const workspace = {
    textDocuments: [],
    workspaceFolders: undefined,
    notebookDocuments: [],
    onDidChangeConfiguration: state.configEmitter.event,
    onDidOpenTextDocument: state.openEmitter.event,
    getConfiguration(section) {
      const full = (key) => (section ? `${section}.${key}` : key);
      return {
        // Like VS Code: the user's value, else the caller's default, else the default contributed in package.json.
        get: (key, dflt) => (full(key) in state.settings ? state.settings[full(key)]
          : dflt !== undefined ? dflt : contributedDefault(full(key))),
        has: (key) => full(key) in state.settings,
        inspect: (key) => ({ key: full(key), globalValue: state.settings[full(key)] }),
        update: async (key, value) => {
          state.settings[full(key)] = value;
          state.configEmitter.fire({ affectsConfiguration: (s) => full(key) === s || full(key).startsWith(s + '.') });
        },
      };
    },
    async applyEdit(edit) {
      for (const [uri, textEdit] of edit.entries) {
        const doc = workspace.textDocuments.find((d) => d.uri.toString() === uri.toString());
        if (!doc) return false;
        doc.applyEdit(textEdit);
        state.appliedEdits.push({ uri: uri.toString(), newText: textEdit.newText });
      }
      return true;
    },
  };

  const message = (kind) => (msg, ...items) => { state.messages[kind].push(msg); return Promise.resolve(undefined); };
  const window = {
    activeTextEditor: undefined,
    visibleTextEditors: [],
    tabGroups: { all: [], onDidChangeTabs: () => new Disposable(), onDidChangeTabGroups: () => new Disposable() },
    showErrorMessage: message('error'),
    showWarningMessage: message('warning'),
    showInformationMessage: message('info'),
    showInputBox: async () => state.inputBoxValue,
    setStatusBarMessage: () => new Disposable(),
    createOutputChannel(name) {
      const lines = [];
      const log = (...a) => lines.push(a.join(' '));
      const channel = { name, lines, shown: 0, append: log, appendLine: log, replace: log, clear() {}, show() { channel.shown++; },
        hide() {}, dispose() {}, trace: log, debug: log, info: log, warn: log, error: log, logLevel: 2,
        onDidChangeLogLevel: () => new Disposable() };
      state.outputChannels.push(channel);
      return channel;
    },
    createStatusBarItem(id, alignment, priority) {
      // `texts`: every text the item showed, in order (a state can pass between two polls of a test).
      let text = '';
      const item = { id, alignment, priority, texts: [], tooltip: undefined, show() { this.visible = true; }, hide() { this.visible = false; }, dispose() {},
        get text() { return text; }, set text(t) { text = t; this.texts.push(t); } };
      state.statusItems.push(item);
      return item;
    },
    createWebviewPanel(viewType, title, showOptions, options) {
      const disposeEmitter = new EventEmitter();
      const panel = { viewType, title, showOptions, options, webview: { html: '' }, reveal() {}, onDidDispose: disposeEmitter.event,
        dispose() { disposeEmitter.fire(); } };
      state.webviews.push(panel);
      return panel;
    },
    async withProgress(options, task) {
      const source = new CancellationTokenSource();
      return task({ report() {} }, source.token);
    },
    onDidChangeActiveTextEditor: () => new Disposable(),
    onDidChangeVisibleTextEditors: () => new Disposable(),
  };

  const commands = {
    registerCommand(name, fn) {
      if (state.commands.has(name)) throw new Error(`command '${name}' already exists`);
      state.commands.set(name, fn);
      return new Disposable(() => state.commands.delete(name));
    },
    async executeCommand(name, ...args) {
      const fn = state.commands.get(name);
      if (!fn) return undefined; // e.g. markdown.api.render: not available here
      return fn(...args);
    },
  };

  const languages = {
    match(selector, document) {
      const filters = Array.isArray(selector) ? selector : [selector];
      return filters.some((f) => (typeof f === 'string' ? f === document.languageId
        : (!f.language || f.language === document.languageId) && (!f.scheme || f.scheme === document.uri.scheme))) ? 10 : 0;
    },
    registerCodeActionsProvider(selector, provider, metadata) {
      const entry = { selector, provider, metadata };
      state.codeActionProviders.push(entry);
      return new Disposable(() => state.codeActionProviders.splice(state.codeActionProviders.indexOf(entry), 1));
    },
    registerInlineCompletionItemProvider(selector, provider) {
      const entry = { selector, provider };
      state.inlineProviders.push(entry);
      return new Disposable(() => state.inlineProviders.splice(state.inlineProviders.indexOf(entry), 1));
    },
  };

  const real = {
    version: '1.91.0',
    env: { appName: 'mock', language: 'en', machineId: 'mock', sessionId: 'mock', uiKind: 1, openExternal: async () => true },
    Disposable, EventEmitter, Uri, Position, Range, Selection, TextEdit, WorkspaceEdit, InlineCompletionItem,
    InlineCompletionList, SnippetString, MarkdownString, ThemeColor, CancellationError, CancellationTokenSource,
    CodeActionKind, CodeAction,
    InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 },
    CodeActionTriggerKind: { Invoke: 1, Automatic: 2 },
    StatusBarAlignment: { Left: 1, Right: 2 },
    ViewColumn: { Active: -1, Beside: -2, One: 1, Two: 2 },
    ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
    ConfigurationTarget: { Global: 1, Workspace: 2, WorkspaceFolder: 3 },
    LogLevel: { Off: 0, Trace: 1, Debug: 2, Info: 3, Warning: 4, Error: 5 },
    workspace: withStubs(workspace, 'workspace'),
    window: withStubs(window, 'window'),
    commands: withStubs(commands, 'commands'),
    languages: withStubs(languages, 'languages'),
  };
  /** Forgets what one test left behind (commands are unregistered by disposing the extension). */
  function reset() {
    state.settings = {};
    state.inlineProviders.length = 0;
    state.codeActionProviders.length = 0;
    state.statusItems.length = 0;
    state.outputChannels.length = 0;
    state.webviews.length = 0;
    state.appliedEdits.length = 0;
    state.messages = { error: [], warning: [], info: [] };
    state.inputBoxValue = undefined;
    workspace.textDocuments.length = 0;
    window.activeTextEditor = undefined;
  }
  return { vscode: withStubs(real, 'vscode'), state, reset, TextDocument, window };
}

function withStubs(obj, name) {
  return new Proxy(obj, { get: (t, p) => (p in t ? t[p] : typeof p === 'symbol' ? undefined : stub(`${name}.${p}`)) });
}

const mock = createMock();
const originalResolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === 'vscode') return 'vscode';
  return originalResolve.call(this, request, ...rest);
};
require.cache.vscode = { id: 'vscode', filename: 'vscode', loaded: true, exports: mock.vscode };

module.exports = mock;
