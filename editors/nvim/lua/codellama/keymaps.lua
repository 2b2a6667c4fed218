-- Insert-mode keys that act only while a suggestion is shown. Otherwise a key does exactly what it did before we
-- mapped it: the earlier mapping (buffer-local or global, copied to a <Plug> key when we attach) or the key itself.
local M = {}

local DESC = 'codellama: '

local function plug_for(name)
  return ('<Plug>(codellama-fallback-%s)'):format(name)
end

--- Makes <Plug>(codellama-fallback-NAME) do what `lhs` does now in the buffer's insert mode.
local function save_fallback(bufnr, name, lhs)
  local plug = plug_for(name)
  local old = vim.api.nvim_buf_call(bufnr, function()
    return vim.fn.maparg(lhs, 'i', false, true)
  end)
  if old.lhs and (old.desc or ''):find(DESC, 1, true) then
    return plug -- attached before: the fallback is already in place
  end
  if old.lhs then
    old.lhs = plug
    old.lhsraw = vim.api.nvim_replace_termcodes(plug, true, true, true)
    old.lhsrawalt = nil
    old.buffer = 1
    vim.api.nvim_buf_call(bufnr, function()
      vim.fn.mapset('i', false, old)
    end)
  else
    -- Nothing was mapped: type the key itself (noremap, so this mapping is not reached again).
    vim.keymap.set('i', plug, lhs, { buffer = bufnr, noremap = true, desc = 'codellama fallback' })
  end
  return plug
end

--- Maps the configured keys in a buffer.
---@param bufnr integer
---@param keymaps codellama.Keymaps
---@param resolve fun(name: string): string|nil called when a key is pressed (in an expression mapping, so it must
---  not edit the buffer): the keys to run instead, e.g. a <Cmd> that acts, or nil to fall back to the old meaning
function M.attach(bufnr, keymaps, resolve)
  for name, lhs in pairs(keymaps) do
    if lhs then
      local plug = save_fallback(bufnr, name, lhs)
      vim.keymap.set('i', lhs, function()
        return resolve(name) or plug
      end, { buffer = bufnr, expr = true, remap = true, silent = true, desc = DESC .. name })
    end
  end
end

return M
