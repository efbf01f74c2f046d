"""Flower apps of ReGL: ClientApp, ServerApp and their strategy (Message API, Flower 1.41)."""
