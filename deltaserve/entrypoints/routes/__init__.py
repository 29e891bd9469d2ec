"""HTTP routers, one module per area: OpenAI API, admin adapters, tenants, tokenize, health."""
