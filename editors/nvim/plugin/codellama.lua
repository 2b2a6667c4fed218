-- Loaded at startup, so it stays cheap: it defines the user commands, the <Plug> mappings and the LspAttach hook,
-- and requires the plugin's modules only when one of them is used. The server itself starts through
-- vim.lsp.enable('codellama') (lsp/codellama.lua, Neovim 0.11+) or require('codellama').setup().
if vim.g.loaded_codellama then
  return
end
vim.g.loaded_codellama = true

local function codellama()
  return require('codellama')
end

local command = vim.api.nvim_create_user_command

command('CodellamaExplain', function(o)
  codellama().explain(o.line1, o.line2)
end, { range = true, desc = 'Code Llama: explain the selected lines' })

command('CodellamaGenerate', function(o)
  if o.range > 0 then
    codellama().generate(o.args, o.line1, o.line2)
  else
    codellama().generate(o.args)
  end
end, { nargs = '+', range = true, desc = 'Code Llama: generate code from an instruction' })

command('CodellamaCancel', function()
  codellama().cancel()
end, { desc = 'Code Llama: stop generating' })

command('CodellamaToggle', function()
  codellama().toggle()
end, { desc = 'Code Llama: inline suggestions on/off' })

command('CodellamaStatus', function()
  local text = codellama().statusline()
  vim.api.nvim_echo({ { text ~= '' and text or 'Code Llama: not running' } }, false, {})
end, { desc = 'Code Llama: server status' })

command('CodellamaLog', function()
  codellama().show_log()
end, { desc = "Code Llama: the server's log" })

-- Insert-mode actions for your own keys, e.g. vim.keymap.set('i', '<C-l>', '<Plug>(codellama-accept-word)').
local plugs = {
  accept = function()
    codellama().accept()
  end,
  ['accept-word'] = function()
    codellama().accept('word')
  end,
  ['accept-line'] = function()
    codellama().accept('line')
  end,
  dismiss = function()
    codellama().dismiss()
  end,
  next = function()
    codellama().next()
  end,
  prev = function()
    codellama().prev()
  end,
}
for name, fn in pairs(plugs) do
  vim.keymap.set('i', ('<Plug>(codellama-%s)'):format(name), fn, { desc = 'codellama: ' .. name })
end

vim.api.nvim_set_hl(0, 'CodellamaSuggestion', { link = 'Comment', default = true })

-- Ghost text and keys for every buffer the codellama client attaches to, however it was started.
local group = vim.api.nvim_create_augroup('codellama.attach', { clear = true })
local function ours(ev)
  local client = vim.lsp.get_client_by_id(ev.data.client_id)
  return client and client.name == 'codellama'
end
vim.api.nvim_create_autocmd('LspAttach', {
  group = group,
  callback = function(ev)
    if ours(ev) then
      codellama().attach(ev.buf, ev.data.client_id)
    end
  end,
})
vim.api.nvim_create_autocmd('LspDetach', {
  group = group,
  callback = function(ev)
    if ours(ev) then
      codellama().detach(ev.buf)
    end
  end,
})
