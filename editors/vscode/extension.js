// Starts `engine lsp` for mapping files and connects it to VS Code over stdio.
const vscode = require('vscode');
const { LanguageClient } = require('vscode-languageclient/node');

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration('signalmap');
  const command = config.get('server.path', 'engine');
  const serverOptions = { command, args: ['lsp'] };
  const clientOptions = {
    documentSelector: [
      { scheme: 'file', language: 'signalmap' },
      { scheme: 'untitled', language: 'signalmap' },
    ],
    initializationOptions: { params: config.get('server.params', {}) },
  };
  client = new LanguageClient('signalmap', 'Signal mappings (engine lsp)', serverOptions, clientOptions);
  client.start();
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration('signalmap.server')) {
        vscode.window.showInformationMessage('Signal mappings: reload the window to restart `engine lsp` with the new settings.');
      }
    }),
  );
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
