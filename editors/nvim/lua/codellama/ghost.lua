-- Ghost text for Neovim 0.10/0.11 (0.12+ can use vim.lsp.inline_completion instead): asks the server with
-- textDocument/inlineCompletion while typing (debounced, older requests cancelled, stale answers dropped) and shows
-- the suggestion with extmarks: inline virtual text for its first line, virtual lines for the rest.
local compat = require('codellama.compat')

local M = {}

M.ns = vim.api.nvim_create_namespace('codellama.ghost')

--- LSP 3.18 InlineCompletionTriggerKind.
local INVOKED, AUTOMATIC = 1, 2

---@class codellama.Item
---@field text string          what is still to be inserted at the anchor
---@field delete_after integer bytes after the anchor, on its line, that the suggestion replaces

---@class codellama.BufState
---@field client_id integer
---@field timer uv.uv_timer_t?
---@field request {client: vim.lsp.Client, id: integer}?
---@field seq integer           bumped for every request: answers to older ones are stale
---@field items codellama.Item[]
---@field index integer
---@field anchor integer[]?     {row (1-based), col (0-based byte)} of the shown suggestion
---@field tick integer?         b:changedtick when it was shown
---@field dismissed_tick integer?

---@type table<integer, codellama.BufState>
local buffers = {}

M.options = { enabled = true, debounce_ms = 75, hl_group = 'CodellamaSuggestion' }

local function in_insert_mode()
  return vim.api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

local function tick(bufnr)
  return vim.api.nvim_buf_get_changedtick(bufnr)
end

local function cancel_request(st)
  if st.request then
    pcall(compat.call, st.request.client, 'cancel_request', st.request.id)
    st.request = nil
  end
end

--- Removes the shown suggestion and forgets pending work for the buffer.
function M.clear(bufnr)
  local st = buffers[bufnr]
  if not st then
    return
  end
  if st.timer then
    st.timer:stop()
  end
  st.seq = st.seq + 1
  cancel_request(st)
  st.items, st.index, st.anchor, st.tick = {}, 1, nil, nil
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

local function current(st)
  return st and st.anchor and st.items[st.index] or nil
end

local function render(bufnr)
  local st = buffers[bufnr]
  vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  local item = current(st)
  if not item then
    return
  end
  local tab = string.rep(' ', vim.bo[bufnr].tabstop)
  local lines = vim.split(item.text:gsub('\t', tab), '\n', { plain = true })
  local hl = M.options.hl_group
  local opts = { hl_mode = 'combine', priority = 200 }
  if lines[1] ~= '' then
    opts.virt_text = { { lines[1], hl } }
    opts.virt_text_pos = 'inline'
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { lines[i], hl } })
    end
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.ns, st.anchor[1] - 1, st.anchor[2], opts)
end

--- Turns the server's items into what remains to insert at the cursor; items that do not fit the text are dropped.
---@return codellama.Item[]
local function normalize(result, bufnr, cursor, encoding)
  local raw = result and (result.items or result) or {}
  local row, col = cursor[1], cursor[2]
  local line = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, false)[1] or ''
  local items, seen = {}, {}
  for _, it in ipairs(raw) do
    local insert = it.insertText
    if type(insert) == 'table' then -- StringValue (snippet): keep the text, drop tab stops
      insert = (insert.value or ''):gsub('%$%d+', ''):gsub('%${%d+:?([^}]*)}', '%1')
    end
    local text, delete_after = insert, 0
    if type(insert) == 'string' and it.range then
      local s, e = it.range.start, it.range['end']
      if s.line ~= row - 1 then
        text = nil
      else
        local typed = line:sub(compat.byte_col(line, encoding, s.character) + 1, col)
        text = insert:sub(1, #typed) == typed and insert:sub(#typed + 1) or nil
        if text and e.line == row - 1 then
          delete_after = math.max(0, compat.byte_col(line, encoding, e.character) - col)
        end
      end
    end
    if type(text) == 'string' and text ~= '' and not seen[text] then
      seen[text] = true
      table.insert(items, { text = text, delete_after = delete_after })
    end
  end
  return items
end

local function client_for(bufnr)
  local st = buffers[bufnr]
  local client = st and vim.lsp.get_client_by_id(st.client_id)
  if client and not (client.is_stopped and compat.call(client, 'is_stopped')) then
    return client
  end
end

--- Asks the server for a suggestion at the cursor now.
---@param trigger_kind integer? 1 = invoked by the user, 2 = automatic (typing)
function M.request(bufnr, trigger_kind)
  local st = buffers[bufnr]
  local client = client_for(bufnr)
  if not (st and client and M.options.enabled) then
    return
  end
  if st.timer then
    st.timer:stop()
  end
  cancel_request(st)
  st.seq = st.seq + 1
  local seq, requested_tick = st.seq, tick(bufnr)
  local cursor = vim.api.nvim_win_get_cursor(0)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = trigger_kind or AUTOMATIC }
  local ok, id = compat.call(client, 'request', 'textDocument/inlineCompletion', params, function(err, result)
    if st.seq ~= seq then
      return -- a newer request, or the suggestion was cleared meanwhile
    end
    st.request = nil
    if err or not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_get_current_buf() ~= bufnr then
      return
    end
    local now = vim.api.nvim_win_get_cursor(0)
    if not in_insert_mode() or tick(bufnr) ~= requested_tick or now[1] ~= cursor[1] or now[2] ~= cursor[2] then
      return -- stale: the text or the cursor moved on
    end
    local items = normalize(result, bufnr, cursor, client.offset_encoding)
    if #items == 0 then
      return
    end
    st.items, st.index, st.anchor, st.tick = items, 1, cursor, requested_tick
    render(bufnr)
  end, bufnr)
  if ok and id then
    st.request = { client = client, id = id }
  end
end

local function schedule(bufnr)
  local st = buffers[bufnr]
  st.timer = st.timer or vim.uv.new_timer()
  st.timer:stop()
  st.timer:start(
    M.options.debounce_ms,
    0,
    vim.schedule_wrap(function()
      if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_current_buf() == bufnr and in_insert_mode() then
        M.request(bufnr, AUTOMATIC)
      end
    end)
  )
end

--- After a keystroke: keep the suggestion if the user typed what it suggested, otherwise clear it and ask again.
local function on_change(bufnr)
  local st = buffers[bufnr]
  if not (st and M.options.enabled and in_insert_mode()) then
    return
  end
  local now_tick, cursor = tick(bufnr), vim.api.nvim_win_get_cursor(0)
  local item = current(st)
  if item then
    local row, col = st.anchor[1], st.anchor[2]
    if now_tick == st.tick and cursor[1] == row and cursor[2] == col then
      return -- nothing changed (e.g. our own partial accept)
    end
    if cursor[1] == row and cursor[2] > col then
      local line = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, false)[1] or ''
      local typed = line:sub(col + 1, cursor[2])
      local kept = {}
      for _, it in ipairs(st.items) do
        if #it.text > #typed and it.text:sub(1, #typed) == typed then
          table.insert(kept, { text = it.text:sub(#typed + 1), delete_after = it.delete_after })
        end
      end
      if #kept > 0 then -- typed through the suggestion: show the rest, no new request
        st.items, st.index, st.anchor, st.tick = kept, 1, cursor, now_tick
        render(bufnr)
        return
      end
    end
    M.clear(bufnr)
  end
  if st.dismissed_tick == now_tick then
    return
  end
  schedule(bufnr)
end

--- Starts ghost text for a buffer served by the client.
function M.attach(bufnr, client_id)
  if buffers[bufnr] then
    buffers[bufnr].client_id = client_id
    return
  end
  buffers[bufnr] = { client_id = client_id, seq = 0, items = {}, index = 1 }
  local group = vim.api.nvim_create_augroup('codellama.ghost.' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ 'TextChangedI', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_change(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd('InsertEnter', {
    group = group,
    buffer = bufnr,
    callback = function()
      if M.options.enabled then
        schedule(bufnr)
      end
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.clear(bufnr)
    end,
  })
end

function M.detach(bufnr)
  local st = buffers[bufnr]
  if not st then
    return
  end
  M.clear(bufnr)
  if st.timer then
    st.timer:close()
  end
  buffers[bufnr] = nil
  pcall(vim.api.nvim_del_augroup_by_name, 'codellama.ghost.' .. bufnr)
end

function M.attached(bufnr)
  return buffers[(bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr] ~= nil
end

--- The suggestion shown in the buffer: {text, anchor = {row, col}, index, count}, or nil.
function M.get(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr]
  local item = current(st)
  if item then
    return { text = item.text, anchor = { st.anchor[1], st.anchor[2] }, index = st.index, count = #st.items }
  end
end

function M.visible(bufnr)
  return in_insert_mode() and M.get(bufnr) ~= nil
end

local function next_word(text)
  return text:match('^[ \t]*[%w_]+') or text:match('^[ \t]*[^%w_%s]+') or text:match('^%s+') or text
end

local function next_line(text)
  return text:match('^\n[^\n]*') or text:match('^[^\n]+') or text
end

--- Inserts all of the suggestion, or its next word or line ('word', 'line'); the rest stays shown.
---@param part? 'all'|'word'|'line'
function M.accept(part)
  local bufnr = vim.api.nvim_get_current_buf()
  local st = buffers[bufnr]
  local item = current(st)
  if not item then
    return false
  end
  local text = item.text
  local chunk = (part == 'word' and next_word(text)) or (part == 'line' and next_line(text)) or text
  local rest = text:sub(#chunk + 1)
  local row, col = st.anchor[1], st.anchor[2]
  local lines = vim.split(chunk, '\n', { plain = true })
  local delete = rest == '' and item.delete_after or 0
  M.clear(bufnr)
  vim.api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col + delete, lines)
  local new_row = row + #lines - 1
  local new_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { new_row, new_col })
  if rest ~= '' then
    st.items, st.index, st.anchor, st.tick = { { text = rest, delete_after = item.delete_after } }, 1, { new_row, new_col }, tick(bufnr)
    render(bufnr)
  end
  return true
end

--- Hides the suggestion until the text changes.
function M.dismiss()
  local bufnr = vim.api.nvim_get_current_buf()
  if not M.get(bufnr) then
    return false
  end
  M.clear(bufnr)
  buffers[bufnr].dismissed_tick = tick(bufnr)
  return true
end

--- Shows the next (delta 1) or previous (-1) suggestion; with none shown, asks the server now.
function M.cycle(delta)
  local bufnr = vim.api.nvim_get_current_buf()
  local st = buffers[bufnr]
  if not st then
    return false
  end
  if not current(st) then
    st.dismissed_tick = nil
    M.request(bufnr, INVOKED)
    return true
  end
  st.index = (st.index - 1 + delta) % #st.items + 1
  render(bufnr)
  return true
end

return M
