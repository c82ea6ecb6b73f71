"""The orchestrator: sans-IO engine, journal and the aiohttp service around them."""
