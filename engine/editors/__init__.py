"""Editor support: the policy language's words (from the grammar) and a Pygments lexer.

Nothing in the engine imports this package; Pygments finds the lexer through the
`pygments.lexers` entry point, and `grammar/vscode/` holds the TextMate grammar.
"""
