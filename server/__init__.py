"""The tokenwire server: WebSocket sessions relaying LiteLLM streams."""
