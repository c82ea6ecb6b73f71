"""The module ``kopf run`` loads (``kopf run --module=mutirao_operator.handlers ...``).

Importing it registers the handlers on kopf's default registry, as kopf expects; the
settings are read from the environment only when kopf starts the operator.
"""

from __future__ import annotations

import kopf

from mutirao_operator.app import register
from mutirao_operator.runtime import Runtime
from mutirao_operator.settings import from_env


async def _start() -> Runtime:
    return await Runtime.start(from_env())


register(kopf.get_default_registry(), _start)
