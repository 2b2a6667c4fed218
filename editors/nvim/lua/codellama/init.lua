-- codellama.nvim: inline suggestions, explanations and code generation from the codellama-lsp language server.
-- The server starts through vim.lsp.enable('codellama') (lsp/codellama.lua, built by lsp_config() here) or setup();
-- plugin/codellama.lua defines the commands and calls attach() for every buffer the client attaches to.
local compat = require('codellama.compat')
local ghost = require('codellama.ghost')
local keymaps = require('codellama.keymaps')
local status = require('codellama.status')

local M = {}

M.NAME = 'codellama'

--- The options given to setup(), or nil when it was not called.
---@type codellama.Config?
M.config = nil

-- M.status: the last `codellama/status` params from the server ({state, message?, progress?, model?, timings?}),
-- or nil; M.chat_status: the same about the chat model (role = "chat"). Both are kept by codellama.status.
setmetatable(M, {
  __index = function(_, key)
    if key == 'status' then
      return status.current
    elseif key == 'chat_status' then
      return status.chat
    end
  end,
})

local notified_missing = false
local client_commands -- handlers for the server's commands, defined with explain/generate below

local function notify(msg, level)
  vim.notify('Code Llama: ' .. msg, level or vim.log.levels.INFO, { title = 'Code Llama' })
end

--- The running codellama client (attached to `bufnr` when given), or nil.
---@return vim.lsp.Client?
function M.get_client(bufnr)
  return vim.lsp.get_clients({ name = M.NAME, bufnr = bufnr })[1]
end

local function apply_options(cfg)
  ghost.options.enabled = cfg.inline.enabled
  ghost.options.debounce_ms = cfg.inline.debounce_ms
  ghost.options.hl_group = cfg.inline.hl_group
end

local fallback_options -- the options without setup(), resolved on first use

--- The plugin's options: setup()'s, else vim.g.codellama (a table of the same shape) over the defaults.
---@return codellama.Config
function M.options()
  if M.config then
    return M.config
  end
  if not fallback_options then
    fallback_options = require('codellama.config').resolve(vim.g.codellama)
    apply_options(fallback_options)
  end
  return fallback_options
end

--- A short text for a statusline: "Code Llama: loading 40%", "Code Llama: ready · <model> · 312 ms, 45 tok/s",
--- "Code Llama: error: <message>"; "" while no server runs.
function M.statusline()
  local client = M.get_client()
  return status.statusline(client and client.id)
end

--- Opens the server's log (its window/logMessage lines) in a split; it grows while it stays open.
function M.show_log()
  status.open_log()
end

local function wanted(bufnr)
  local cfg = M.config
  if not cfg or vim.bo[bufnr].buftype ~= '' then
    return false
  end
  local ft = vim.bo[bufnr].filetype
  if ft == '' then
    return false
  end
  return not cfg.filetypes or #cfg.filetypes == 0 or vim.tbl_contains(cfg.filetypes, ft)
end

local function root_dir(bufnr)
  local root = vim.fs.root and vim.fs.root(bufnr, M.config.root_markers)
  return root or vim.fn.getcwd()
end

--- One server per Neovim: it holds the model in memory, whatever the project.
local function reuse_client(client, config)
  return client.name == config.name
end

--- The client's configuration (lsp/codellama.lua returns it): the server command, the handlers of its
--- notifications and commands. Server settings go in `init_options` (snake_case, as the server names them); none
--- here, as an empty table would go out as a JSON array.
---@return vim.lsp.Config
function M.lsp_config()
  return {
    cmd = { 'codellama-lsp', 'serve' },
    root_markers = { '.git' },
    handlers = status.handlers,
    commands = client_commands,
    reuse_client = reuse_client,
  }
end

--- Starts the server (or attaches the running one) for a buffer, with setup()'s options.
function M.start(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local cfg = assert(M.config, 'call require("codellama").setup() first')
  if vim.fn.executable(cfg.cmd[1]) ~= 1 then
    if not notified_missing then
      notified_missing = true
      notify(
        ("server binary '%s' not found. Install it with `cargo install --path .` in the codellama-lsp repository, "
          .. 'or set cmd = { "/path/to/codellama-lsp", "serve" } in setup().'):format(cfg.cmd[1]),
        vim.log.levels.ERROR
      )
    end
    return nil
  end
  local config = vim.tbl_extend('force', M.lsp_config(), {
    name = M.NAME,
    cmd = cfg.cmd,
    root_dir = root_dir(bufnr),
    init_options = cfg.settings,
    settings = { codellama = cfg.settings },
  })
  config.root_markers = nil -- root_dir is given
  return vim.lsp.start(config, { bufnr = bufnr, reuse_client = reuse_client })
end

--- Sends new server settings (merged into the current ones) with workspace/didChangeConfiguration.
function M.update_settings(settings)
  local cfg = M.options()
  cfg.settings = require('codellama.config').merge(cfg.settings, settings or {})
  local client = M.get_client()
  if client then
    client.settings = { codellama = cfg.settings }
    compat.call(client, 'notify', 'workspace/didChangeConfiguration', { settings = { codellama = cfg.settings } })
  end
end

--- Whether Neovim's own inline completion (0.12+) shows the suggestions.
local function use_builtin()
  return M.options().inline.builtin and compat.builtin_inline_completion() ~= nil
end

--- The <Plug> mappings (plugin/codellama.lua) that act on the shown suggestion.
local ghost_keys = {
  accept = '<Plug>(codellama-accept)',
  accept_word = '<Plug>(codellama-accept-word)',
  accept_line = '<Plug>(codellama-accept-line)',
  dismiss = '<Plug>(codellama-dismiss)',
  next = '<Plug>(codellama-next)',
  prev = '<Plug>(codellama-prev)',
}

--- What a key does now (see keymaps.attach): act on the shown suggestion, or nil to fall back.
local function resolve_key(name)
  if not ghost.options.enabled then
    return nil
  end
  if use_builtin() then
    local ic = compat.builtin_inline_completion()
    if name == 'accept' then
      return ic.get() and '' or nil
    elseif name == 'next' or name == 'prev' then
      ic.select({ count = name == 'next' and 1 or -1 })
      return ''
    end
    return nil
  end
  if name == 'next' or ghost.visible() then
    return ghost_keys[name]
  end
  return nil
end

--- Ghost text and keys for a buffer the client attached to (called from LspAttach).
function M.attach(bufnr, client_id)
  local cfg = M.options()
  if use_builtin() then
    compat.builtin_inline_completion().enable(cfg.inline.enabled, { bufnr = bufnr })
  else
    ghost.attach(bufnr, client_id)
  end
  keymaps.attach(bufnr, cfg.keymaps, resolve_key)
end

function M.detach(bufnr)
  ghost.detach(bufnr)
end

--- Accepts the shown suggestion (part: nil = all, "word", "line"). Returns false when none is shown.
function M.accept(part)
  return ghost.accept(part)
end

function M.dismiss()
  return ghost.dismiss()
end

function M.next()
  return ghost.cycle(1)
end

function M.prev()
  return ghost.cycle(-1)
end

--- Whether a suggestion is shown in the current buffer.
function M.visible()
  return ghost.visible()
end

--- Turns inline suggestions on or off (nil: toggle).
function M.toggle(enable)
  M.options() -- resolved first: resolving sets ghost.options.enabled
  if enable == nil then
    enable = not ghost.options.enabled
  end
  ghost.options.enabled = enable
  if use_builtin() then
    compat.builtin_inline_completion().enable(enable)
  elseif not enable then
    ghost.clear(vim.api.nvim_get_current_buf())
  end
  notify('inline suggestions ' .. (enable and 'on' or 'off'))
end

--- LSP range of a command's range: the characters of a charwise visual selection, else whole lines.
local function command_range(bufnr, client, line1, line2)
  local enc = client.offset_encoding
  local vs, ve = vim.api.nvim_buf_get_mark(bufnr, '<'), vim.api.nvim_buf_get_mark(bufnr, '>')
  if vim.fn.visualmode() == 'v' and vs[1] == line1 and ve[1] == line2 then
    return vim.lsp.util.make_given_range_params(vs, ve, bufnr, enc).range
  end
  local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, false)[1] or ''
  return {
    start = { line = line1 - 1, character = 0 },
    ['end'] = { line = line2 - 1, character = compat.char_len(last, enc) },
  }
end

local REQUEST_CANCELLED = -32800

local function execute(client, bufnr, command, args, on_result)
  compat.call(client, 'request', 'workspace/executeCommand', { command = command, arguments = args }, function(err, result)
    if err then
      if err.code == REQUEST_CANCELLED then
        vim.api.nvim_echo({ { 'Code Llama: cancelled' } }, false, {})
      else
        notify(('%s failed: %s'):format(command, err.message or vim.inspect(err)), vim.log.levels.ERROR)
      end
      return
    end
    on_result(result)
  end, bufnr)
end

local function attached_client(bufnr)
  local client = M.get_client(bufnr)
  if not client then
    notify('the server is not attached to this buffer (see :checkhealth codellama)', vim.log.levels.WARN)
  end
  return client
end

local function not_ready_reason()
  local state = status.current and status.current.state or 'starting'
  return (state == 'ready' or state == 'generating') and 'the model returned nothing' or ('the server is ' .. state)
end

--- Runs codellama.explain and shows the Markdown it returns in a floating window.
local function run_explain(client, bufnr, args)
  vim.api.nvim_echo({ { 'Code Llama: explaining…' } }, false, {})
  execute(client, bufnr, 'codellama.explain', args, function(result)
    local markdown = result and result.markdown
    if type(markdown) ~= 'string' or vim.trim(markdown) == '' then
      notify('no explanation (' .. not_ready_reason() .. ')', vim.log.levels.WARN)
      return
    end
    vim.api.nvim_echo({ { '' } }, false, {})
    local lines = vim.split(markdown, '\n', { plain = true })
    M.explain_buf, M.explain_win = vim.lsp.util.open_floating_preview(lines, 'markdown', {
      border = 'rounded',
      focus_id = 'codellama_explain',
      max_width = math.max(40, math.min(100, vim.o.columns - 4)),
      max_height = math.max(5, math.floor(vim.o.lines * 0.6)),
    })
  end)
end

--- Runs codellama.generate; the server applies the edit itself (workspace/applyEdit).
local function run_generate(client, bufnr, args)
  vim.api.nvim_echo({ { 'Code Llama: generating…' } }, false, {})
  execute(client, bufnr, 'codellama.generate', args, function(result)
    vim.api.nvim_echo({ { '' } }, false, {})
    if not (result and result.applied) then
      local why = result and result.code and result.code ~= '' and 'the edit was not applied' or not_ready_reason()
      notify('nothing generated (' .. why .. ')', vim.log.levels.WARN)
    end
  end)
end

--- Client-side handlers for the server's commands, so that code actions carrying them (e.g. "Explain this code")
--- show their result instead of dropping it.
client_commands = {
  ['codellama.explain'] = function(command, ctx)
    run_explain(vim.lsp.get_client_by_id(ctx.client_id), ctx.bufnr, command.arguments or {})
  end,
  ['codellama.generate'] = function(command, ctx)
    local client = vim.lsp.get_client_by_id(ctx.client_id)
    local args = command.arguments or {}
    local arg = args[1]
    if type(arg) == 'table' and (arg.instruction or '') ~= '' then
      run_generate(client, ctx.bufnr, args)
      return
    end
    -- The "Generate code from instruction" code action carries no instruction: ask for it.
    vim.ui.input({ prompt = 'Code Llama: generate: ' }, function(instruction)
      if instruction and vim.trim(instruction) ~= '' then
        run_generate(client, ctx.bufnr, { vim.tbl_extend('force', arg or {}, { instruction = instruction }) })
      end
    end)
  end,
}

--- Explains lines line1..line2 (or the visual selection) in a floating window.
function M.explain(line1, line2)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = attached_client(bufnr)
  if client then
    run_explain(client, bufnr, { { uri = vim.uri_from_bufnr(bufnr), range = command_range(bufnr, client, line1, line2) } })
  end
end

--- Generates code from an instruction: at the cursor, or replacing lines line1..line2 when a range is given.
function M.generate(instruction, line1, line2)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = attached_client(bufnr)
  if not client then
    return
  end
  local arg = { uri = vim.uri_from_bufnr(bufnr), instruction = instruction }
  if line1 then
    arg.range = command_range(bufnr, client, line1, line2)
  else
    arg.position = vim.lsp.util.make_position_params(0, client.offset_encoding).position
  end
  run_generate(client, bufnr, { arg })
end

--- Stops a running explanation or generation.
function M.cancel()
  local client = M.get_client()
  if client then
    execute(client, nil, 'codellama.cancel', {}, function() end)
  end
end

--- Configures the plugin and starts the server for matching buffers (now and on FileType). With Neovim 0.11+,
--- vim.lsp.enable('codellama') does the same without setup() (see lsp/codellama.lua).
---@param opts table? see codellama.config.defaults
function M.setup(opts)
  M.config = require('codellama.config').resolve(opts)
  apply_options(M.config)
  if not vim.g.loaded_codellama then
    -- The plugin folder was added to 'runtimepath' after startup: its plugin/ file (commands, LspAttach) did not run.
    vim.cmd.runtime('plugin/codellama.lua')
  end

  local group = vim.api.nvim_create_augroup('codellama', { clear = true })
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    callback = function(ev)
      if wanted(ev.buf) then
        M.start(ev.buf)
      end
    end,
  })
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and wanted(bufnr) then
      M.start(bufnr)
    end
  end
end

return M
