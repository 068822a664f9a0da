"""The language server (`policyctl lsp`): `policy_set` (a document's policy set, checked
as `policyctl check` checks it), `knowledge` (completion, hover, definition, outline) and
`server` (the protocol, on pygls: the only module that imports it)."""
