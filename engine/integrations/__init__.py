"""Integrations with the gateways apps already run (`litellm`: LiteLLM's Router)."""
