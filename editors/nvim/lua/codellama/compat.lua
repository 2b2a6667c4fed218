-- Differences between Neovim 0.10, 0.11 and 0.12 in one place.
local M = {}

local has_011 = vim.fn.has('nvim-0.11') == 1

--- Calls a method of an LSP client: `client:method(...)` on 0.11+, `client.method(...)` on 0.10.
---@param client vim.lsp.Client
---@param method string
function M.call(client, method, ...)
  if has_011 then
    return client[method](client, ...)
  end
  return client[method](...)
end

--- Byte index in `line` of an LSP `character` offset in `encoding` (clamped to the line).
---@param line string
---@param encoding string "utf-8"|"utf-16"|"utf-32"
---@param character integer
---@return integer
function M.byte_col(line, encoding, character)
  if has_011 then
    return vim.str_byteindex(line, encoding, character, false)
  end
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  return ok and col or #line
end

--- Length of `line` in LSP characters of `encoding`.
function M.char_len(line, encoding)
  if has_011 then
    return vim.str_utfindex(line, encoding)
  end
  local utf32, utf16 = vim.str_utfindex(line)
  return encoding == 'utf-8' and #line or encoding == 'utf-16' and utf16 or utf32
end

--- vim.validate for one value, without the deprecation of the table form on 0.11+.
function M.validate(name, value, types, optional)
  if has_011 then
    vim.validate(name, value, types, optional)
  else
    vim.validate({ [name] = { value, types, optional } })
  end
end

--- The built-in inline completion module of Neovim 0.12+, or nil.
function M.builtin_inline_completion()
  return vim.lsp.inline_completion
end

return M
