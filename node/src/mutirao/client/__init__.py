"""Clients of the orchestrator API: an async library and the interactive shell."""
