-- Options of require('codellama').setup(), with their defaults.
local M = {}

---@class codellama.Keymaps
---@field accept string|false       accept the whole suggestion
---@field accept_line string|false  accept up to the end of the line (or the next line)
---@field accept_word string|false  accept the next word
---@field dismiss string|false      hide the suggestion until the text changes
---@field next string|false         next suggestion (or ask for one when none is shown)
---@field prev string|false         previous suggestion

---@class codellama.Config
M.defaults = {
  --- Command that starts the server (stdio).
  cmd = { 'codellama-lsp', 'serve' },
  --- Filetypes to start the server for; nil or {} = every buffer that has a filetype and is a normal file.
  filetypes = nil,
  --- Server settings (snake_case keys, sent as init_options and on update_settings()): see :help codellama-settings.
  settings = {},
  --- Files or folders that mark a project root (for the LSP root_dir); the server is shared across roots.
  root_markers = { '.git' },
  --- Inline suggestions (ghost text).
  inline = {
    enabled = true,
    --- Use Neovim's own vim.lsp.inline_completion when it exists (0.12+); false = always this plugin's renderer.
    builtin = true,
    --- Milliseconds to wait after typing before asking the server.
    debounce_ms = 75,
    --- Highlight group of the ghost text (linked to Comment by default).
    hl_group = 'CodellamaSuggestion',
  },
  --- Insert-mode keys. Each one acts only while a suggestion is shown; otherwise the key does what it did before
  --- (an earlier mapping of it, or the key itself). false disables a key.
  ---@type codellama.Keymaps
  keymaps = {
    accept = '<Tab>',
    accept_line = '<M-C-Right>',
    accept_word = '<M-Right>',
    dismiss = '<C-]>',
    next = '<M-]>',
    prev = '<M-[>',
  },
}

local islist = vim.islist or vim.tbl_islist

--- Deep merge where a list given by the user replaces the default list instead of merging index by index.
function M.merge(default, given)
  if type(default) ~= 'table' or type(given) ~= 'table' or islist(given) then
    return vim.deepcopy(given)
  end
  local out = vim.deepcopy(default)
  for k, v in pairs(given) do
    out[k] = default[k] == nil and vim.deepcopy(v) or M.merge(default[k], v)
  end
  return out
end

---@param opts table|nil
---@return codellama.Config
function M.resolve(opts)
  local compat = require('codellama.compat')
  compat.validate('opts', opts, 'table', true)
  -- An empty table is also an empty list to vim.islist, which merge() would take as replacing the defaults.
  local cfg = next(opts or {}) and M.merge(M.defaults, opts) or vim.deepcopy(M.defaults)
  compat.validate('cmd', cfg.cmd, 'table')
  compat.validate('filetypes', cfg.filetypes, 'table', true)
  compat.validate('settings', cfg.settings, 'table')
  compat.validate('inline.debounce_ms', cfg.inline.debounce_ms, 'number')
  for name, lhs in pairs(cfg.keymaps) do
    compat.validate('keymaps.' .. name, lhs, { 'string', 'boolean' })
  end
  return cfg
end

return M
