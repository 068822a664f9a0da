"""`policyctl migrate litellm`: a LiteLLM Router / proxy config into a policy and a catalog.

`config` reads the YAML into typed records with key paths and positions, `translate` turns
them into the policy text, the catalog document and a `Report` (`report`) of every key that
was approximated or not translated. docs/migrate.md has the mapping.
"""
