// Tokenise policy texts with the real VS Code TextMate engine (vscode-textmate over
// vscode-oniguruma) and the grammar of grammar/vscode/. Driven by tests/test_editors.py.
//
//   node tokenize.mjs GRAMMAR.json < [{"name": "...", "text": "..."}, ...]
//
// Prints one JSON object: for each text, its `illegal` tokens (scope `invalid.illegal.*`:
// the grammar's catch-all for a character no rule takes) and its `tokens` (text and
// innermost scope), so the test can also check what a word was taken for.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);
const oniguruma = require("vscode-oniguruma");
const textmate = require("vscode-textmate");

const grammarPath = process.argv[2];
const wasm = readFileSync(join(dirname(require.resolve("vscode-oniguruma")), "onig.wasm"));
await oniguruma.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));

const registry = new textmate.Registry({
  onigLib: Promise.resolve({
    createOnigScanner: (patterns) => new oniguruma.OnigScanner(patterns),
    createOnigString: (s) => new oniguruma.OnigString(s),
  }),
  loadGrammar: async () =>
    textmate.parseRawGrammar(readFileSync(grammarPath, "utf8"), grammarPath),
});
const grammar = await registry.loadGrammar("source.policy");

const inputs = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const { name, text } of inputs) {
  let state = textmate.INITIAL;
  const illegal = [];
  const tokens = [];
  text.split(/\r?\n/).forEach((line, index) => {
    const result = grammar.tokenizeLine(line, state);
    for (const token of result.tokens) {
      const piece = line.slice(token.startIndex, token.endIndex);
      const scope = token.scopes[token.scopes.length - 1];
      tokens.push([piece, scope]);
      if (token.scopes.some((s) => s.startsWith("invalid.illegal"))) {
        illegal.push({ line: index + 1, column: token.startIndex + 1, text: piece });
      }
    }
    state = result.ruleStack;
  });
  results.push({ name, illegal, tokens });
}
process.stdout.write(JSON.stringify(results));
