"""The policy language: AST, parser (the only Lark user), request-field schema, checker,
the compiled `Program` types, the compiler, and the loader (files to a `Program`)."""
