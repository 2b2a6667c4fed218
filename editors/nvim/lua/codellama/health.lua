-- :checkhealth codellama
local M = {}

local health = vim.health

function M.check()
  local codellama = require('codellama')
  health.start('codellama')

  local v = vim.version()
  local version = ('%d.%d.%d'):format(v.major, v.minor, v.patch)
  if vim.fn.has('nvim-0.10') ~= 1 then
    health.error('Neovim ' .. version .. ' is too old; 0.10 or newer is needed')
  elseif require('codellama.compat').builtin_inline_completion() then
    health.ok('Neovim ' .. version .. ': built-in vim.lsp.inline_completion available')
  else
    health.ok('Neovim ' .. version .. ': ghost text drawn by this plugin (extmarks)')
  end

  -- How the server is started: setup(), or vim.lsp.enable('codellama') with lsp/codellama.lua (0.11+).
  local cmd, settings
  if codellama.config then
    cmd, settings = codellama.config.cmd, codellama.config.settings
    health.ok('started by setup()')
  elseif vim.lsp.is_enabled and vim.lsp.is_enabled(codellama.NAME) then
    local config = vim.lsp.config[codellama.NAME]
    cmd, settings = config.cmd, config.init_options or {}
    health.ok("started by vim.lsp.enable('codellama')")
  else
    health.error("neither setup() nor vim.lsp.enable('codellama') was called", {
      "Add vim.lsp.enable('codellama') (Neovim 0.11+) or require('codellama').setup({}) to your config",
    })
    return
  end

  local exe = type(cmd) == 'table' and vim.fn.exepath(cmd[1]) or ''
  if exe == '' then
    health.error(("server binary '%s' not found"):format(type(cmd) == 'table' and cmd[1] or tostring(cmd)), {
      'Install it with `cargo install --path .` in the codellama-lsp repository (it goes to ~/.cargo/bin)',
      'or set cmd = { "/path/to/codellama-lsp", "serve" } in setup() or vim.lsp.config("codellama", {...})',
    })
  else
    local ok, out = pcall(function()
      return vim.system({ exe, '--version' }, { text = true }):wait(5000)
    end)
    if ok and out.code == 0 then
      health.ok(('server binary: %s (%s)'):format(exe, vim.trim(out.stdout or '')))
    else
      health.warn(('server binary %s found, but `--version` failed: %s'):format(exe, ok and (out.stderr or '') or out))
    end
  end

  local model = settings.model
  if model and model ~= '' then
    health.info('model: ' .. model)
  else
    health.info("model: the server's default (set settings.model in setup(), or init_options.model)")
  end

  local client = codellama.get_client()
  if not client then
    health.warn('server not running', { 'Open a file of a configured filetype, or check :LspLog' })
    return
  end
  local buffers = vim.tbl_keys(client.attached_buffers or {})
  health.ok(('server running (client id %d, attached to %d buffer%s)'):format(client.id, #buffers, #buffers == 1 and '' or 's'))

  local status = codellama.status
  if not status then
    health.warn('no codellama/status received yet from the server')
  elseif status.state == 'ready' or status.state == 'generating' then
    health.ok('model loaded (' .. status.state .. ')' .. (status.model and (': ' .. status.model) or ''))
  elseif status.state == 'loading' then
    health.warn(('model loading%s'):format(status.progress and (' (' .. status.progress .. '%)') or ''))
  else
    health.error('model not loaded: ' .. (status.message or status.state))
  end
  local chat = codellama.chat_status
  if chat then
    if chat.state == 'error' then
      health.error('chat model not loaded: ' .. (chat.message or chat.state))
    elseif chat.state == 'loading' then
      health.warn(('chat model loading%s'):format(chat.progress and (' (' .. chat.progress .. '%)') or ''))
    else
      health.ok('chat model loaded' .. (chat.model and (': ' .. chat.model) or ''))
    end
  end
  if status and status.timings then
    local t = status.timings
    health.info(
      ('last completion: %d ms total (prefill %d ms, decode %d ms; %d prompt tokens, %d reused, %d generated)'):format(
        t.total_ms or 0, t.prefill_ms or 0, t.decode_ms or 0, t.prompt_tokens or 0, t.reused_tokens or 0, t.generated_tokens or 0
      )
    )
  end
end

return M
