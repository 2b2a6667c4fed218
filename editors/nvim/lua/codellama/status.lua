-- What the server is doing, for the statusline and :CodellamaLog: the last `codellama/status` (completion model and
-- chat model apart), the running `$/progress` reports (a download or a load with its percentage) and the server's
-- `window/logMessage` lines. `handlers` goes into the client's config (lsp/codellama.lua and setup() both use it);
-- each handler records what it got and then runs Neovim's own handler, so vim.lsp.status() and :LspLog still work.
local M = {}

--- Last `codellama/status` params about the completion model and the server ({state, message?, progress?, model?,
--- timings?, client_id}), or nil.
M.current = nil

--- Last `codellama/status` params about the chat model (role = "chat"), when `chat_model` names one; or nil.
M.chat = nil

--- The server's log lines (window/logMessage), oldest first, at most `LOG_LINES`.
M.log = {}

local LOG_LINES = 2000

--- Running `$/progress` reports of the codellama client, by token: {message?, percentage?, seq}.
local progress = {}
local progress_seq = 0

--- The last model named by a status and the last generation's timings (kept when a later status has none).
local model_name, last_timings = nil, nil

local function notify_error(msg)
  vim.notify('Code Llama: ' .. msg, vim.log.levels.ERROR, { title = 'Code Llama' })
end

--- Something the statusline shows changed: redraw it and tell listeners (User CodellamaStatus).
local function changed(data)
  vim.api.nvim_exec_autocmds('User', { pattern = 'CodellamaStatus', modeline = false, data = data })
  pcall(vim.cmd.redrawstatus)
end

function M.on_status(params, client_id)
  params = vim.tbl_extend('force', { client_id = client_id }, params or {})
  if params.role == 'chat' then
    -- The chat model loads beside the completion model: its state is kept apart (its failure is shown by the
    -- server with window/showMessage).
    M.chat = params
  else
    if not (M.current and M.current.client_id == client_id) then
      model_name, last_timings = nil, nil -- a new server: what the last one said no longer holds
    end
    M.current = params
    model_name = params.model or (params.state ~= 'error' and model_name or nil)
    -- A model (re)loading: the last suggestion's timings were another model's.
    last_timings = params.timings or (params.state ~= 'loading' and last_timings or nil)
    if params.state == 'error' and params.message then
      notify_error(params.message)
    end
  end
  changed(params)
end

function M.on_progress(params)
  local value = params and params.value
  if type(value) ~= 'table' or params.token == nil then
    return
  end
  if value.kind == 'end' then
    progress[params.token] = nil
  else
    local p = progress[params.token] or {}
    progress_seq = progress_seq + 1
    p.seq, p.message = progress_seq, value.message or p.message
    p.percentage = value.percentage or p.percentage
    progress[params.token] = p
  end
  changed(M.current)
end

local level_names = { 'ERROR', 'WARN', 'INFO', 'LOG' }

--- Listeners of new log lines (the :CodellamaLog buffer), called with the new line.
M.log_listeners = {}

function M.on_log_message(params)
  if not params or type(params.message) ~= 'string' then
    return
  end
  local line = ('[%s] %s %s'):format(os.date('%H:%M:%S'), level_names[params.type] or 'DEBUG', params.message)
  table.insert(M.log, line)
  if #M.log > LOG_LINES then
    table.remove(M.log, 1)
  end
  for _, listener in pairs(M.log_listeners) do
    listener(line)
  end
end

--- Shows the log in a scratch buffer (codellama://log) in a split, or goes to its window; while the buffer exists,
--- new lines are appended to it.
function M.open_log()
  local buf = M.log_buf
  if not (buf and vim.api.nvim_buf_is_valid(buf)) then
    buf = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_buf_set_name(buf, 'codellama://log')
    vim.bo[buf].bufhidden = 'hide'
    M.log_buf = buf
  end
  local header = ('-- codellama-lsp: window/logMessage lines (its stderr goes to %s)'):format(vim.lsp.get_log_path())
  local function write(first, last, lines)
    vim.bo[buf].modifiable = true
    vim.api.nvim_buf_set_lines(buf, first, last, false, lines)
    vim.bo[buf].modifiable = false
  end
  write(0, -1, vim.list_extend({ header }, M.log))
  M.log_listeners.buffer = function(line)
    if vim.api.nvim_buf_is_valid(buf) then
      write(-1, -1, { line })
    else
      M.log_listeners.buffer = nil
    end
  end
  local win = vim.fn.bufwinid(buf)
  if win == -1 then
    vim.cmd('botright split')
    win = vim.api.nvim_get_current_win()
    vim.api.nvim_win_set_buf(win, buf)
  end
  vim.api.nvim_set_current_win(win)
  vim.api.nvim_win_set_cursor(win, { vim.api.nvim_buf_line_count(buf), 0 })
end

--- The handlers for the client's config.
M.handlers = {
  ['codellama/status'] = function(_, params, ctx)
    M.on_status(params, ctx.client_id)
  end,
  ['$/progress'] = function(err, params, ctx, config)
    M.on_progress(params)
    return vim.lsp.handlers['$/progress'](err, params, ctx, config)
  end,
  ['window/logMessage'] = function(err, params, ctx, config)
    M.on_log_message(params)
    return vim.lsp.handlers['window/logMessage'](err, params, ctx, config)
  end,
}

--- The newest running progress report, or nil.
local function latest_progress()
  local latest
  for _, p in pairs(progress) do
    if not latest or p.seq > latest.seq then
      latest = p
    end
  end
  return latest
end

--- "loading 40%", "downloading 12%", "connecting": the verb that starts the message of the newest progress report
--- (a download is reported only there) or of the status, and its percentage.
local function activity(s)
  local p = latest_progress()
  local verb = p and (p.message or ''):match('^(%a+ing)%f[%A]')
  local percent = p and p.percentage
  if not verb then
    verb = (s.message or ''):match('^(%a+ing)%f[%A]') or s.state
    percent = s.progress
  end
  return percent and ('%s %d%%'):format(verb, percent) or verb
end

--- "312 ms, 45 tok/s" from the status timings.
local function speed(t)
  local text = ('%d ms'):format(math.floor((t.total_ms or 0) + 0.5))
  if (t.decode_ms or 0) > 0 and (t.generated_tokens or 0) > 0 then
    text = text .. (', %d tok/s'):format(math.floor(t.generated_tokens * 1000 / t.decode_ms + 0.5))
  end
  return text
end

local ERROR_WIDTH = 60

--- The statusline text (see codellama.statusline()).
---@param client_id integer? the running codellama client, if any
function M.statusline(client_id)
  if not client_id then
    return ''
  end
  local s = M.current
  if not (s and s.client_id == client_id) then
    return 'Code Llama: starting' -- nothing heard from this server yet (what an earlier one said is stale)
  end
  local parts = { 'Code Llama: ' .. s.state }
  if s.state == 'loading' then
    parts[1] = 'Code Llama: ' .. activity(s)
  elseif s.state == 'error' then
    local msg = vim.split(s.message or '', '\n', { plain = true })[1]
    if vim.fn.strchars(msg) > ERROR_WIDTH then
      msg = vim.fn.strcharpart(msg, 0, ERROR_WIDTH - 1) .. '…'
    end
    parts[1] = parts[1] .. ': ' .. msg
  else
    if model_name then
      table.insert(parts, model_name)
    end
    if last_timings then
      table.insert(parts, speed(last_timings))
    end
  end
  return table.concat(parts, ' · ')
end

return M
