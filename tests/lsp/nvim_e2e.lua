-- Neovim 0.11 (headless) as a real LSP client of the server: vim.lsp.start, a buffer, then a non-empty
-- textDocument/inlineCompletion result and a textDocument/completion item, both at the cursor.
-- Run: nvim --headless --clean -l tests/lsp/nvim_e2e.lua <server binary> <model.gguf>
-- Prints PASS lines on stdout; exits 1 with FAIL on stderr.
local bin, model = arg[1], arg[2]
local function fail(m)
  io.stderr:write('FAIL: ' .. m .. '\n')
  os.exit(1)
end
local function pass(m)
  io.stdout:write('PASS ' .. m .. '\n')
end

local dir = vim.fn.tempname()
vim.fn.mkdir(dir, 'p')
local buf = vim.api.nvim_create_buf(true, false)
vim.api.nvim_buf_set_name(buf, dir .. '/stats.py')
vim.api.nvim_set_current_buf(buf)
vim.bo[buf].filetype = 'python'
vim.api.nvim_buf_set_lines(buf, 0, -1, false, { '# 平均 😀', 'def mean(values):', '    total = sum(values)', '    ' })

local status = {}
local id = vim.lsp.start({
  name = 'codellama-lsp',
  cmd = { bin, 'serve', '--model', model, '--context-window', '256', '--max-tokens', '16' },
  root_dir = dir,
  handlers = {
    ['codellama/status'] = function(_, params)
      table.insert(status, params.state)
    end,
  },
}, { bufnr = buf })
if not id then
  fail('vim.lsp.start returned nil')
end
local client = vim.lsp.get_client_by_id(id)
if not vim.wait(20000, function()
  return client.initialized
end, 20) then
  fail('the server did not initialize')
end
pass('initialized, position encoding ' .. tostring(client.offset_encoding))
if not client:supports_method('textDocument/inlineCompletion') then
  fail('inlineCompletion is not advertised')
end
if not vim.wait(120000, function()
  return vim.tbl_contains(status, 'ready') or vim.tbl_contains(status, 'error')
end, 50) then
  fail('no codellama/status ready')
end
if vim.tbl_contains(status, 'error') then
  fail('the model did not load')
end
pass('model ready')

-- The cursor at the end of the last line ("    "), in the client's encoding (ASCII line: the same in all).
local pos = { line = 3, character = 4 }
local params = { textDocument = { uri = vim.uri_from_bufnr(buf) }, position = pos, context = { triggerKind = 1 } }
local r = client:request_sync('textDocument/inlineCompletion', params, 120000, buf)
if not r or r.err or not r.result then
  fail('inlineCompletion: ' .. vim.inspect(r))
end
local item = (r.result.items or r.result)[1]
if not item or type(item.insertText) ~= 'string' or item.insertText == '' then
  fail('empty inlineCompletion result: ' .. vim.inspect(r.result))
end
if item.range.start.line ~= 3 or item.range.start.character ~= 4 then
  fail('the range does not start at the cursor: ' .. vim.inspect(item.range))
end
pass('inlineCompletion: ' .. vim.inspect(item.insertText))

params.context = nil
r = client:request_sync('textDocument/completion', params, 120000, buf)
if not r or r.err or not r.result then
  fail('completion: ' .. vim.inspect(r))
end
local c = (r.result.items or r.result)[1]
if not c or not vim.startswith(c.label, 'Code Llama: ') or not c.textEdit or c.textEdit.newText ~= item.insertText then
  fail('completion item: ' .. vim.inspect(r.result))
end
pass('completion item: ' .. c.label)

client:stop()
vim.wait(5000, function()
  return client:is_stopped()
end, 20)
pass('stopped')
os.exit(0)
