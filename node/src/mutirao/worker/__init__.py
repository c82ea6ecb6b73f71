"""The worker: runs task handlers for an orchestrator."""
