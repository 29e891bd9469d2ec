"""The HTTP layer: OpenAI-compatible API, CLI, metrics (see app.create_app and cli.main)."""
