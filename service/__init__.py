"""The local FastAPI generation service (see the README's architecture section)."""
