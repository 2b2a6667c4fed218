-- The client's configuration for Neovim 0.11+: `vim.lsp.enable('codellama')` starts the server with it, no setup()
-- needed. Change it with vim.lsp.config('codellama', { cmd = ..., init_options = { model = ... } }).
return require('codellama').lsp_config()
