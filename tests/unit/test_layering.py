"""Layering: ``mutirao`` never imports kopf or the operator, and imports the Kubernetes client
only when the ``kubernetes`` lease backend is chosen."""

from __future__ import annotations

import subprocess
import sys

IMPORT_ALL = """
import importlib, pkgutil, sys
import mutirao
for info in pkgutil.walk_packages(mutirao.__path__, "mutirao."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print(",".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def imported_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(proc.stdout.strip().split(","))


def test_importing_every_mutirao_module_imports_neither_kopf_nor_the_operator() -> None:
    top = imported_after(IMPORT_ALL)
    assert "mutirao" in top
    assert not {"kopf", "mutirao_operator", "kubernetes", "kmock"} & top


def test_the_operator_may_import_mutirao() -> None:
    top = imported_after(
        "import sys, mutirao_operator.app, mutirao_operator.handlers\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    assert {"kopf", "mutirao", "mutirao_operator"} <= top


def test_the_orchestrator_service_does_not_import_the_role_controller() -> None:
    """The role and its acknowledgement rule live in ``mutirao.ha.role``; the controller
    drives the service and is never imported back by it (no import cycle)."""
    loaded = imported_after(
        "import sys, mutirao.orchestrator.service\nprint(','.join(sorted(sys.modules)))"
    )
    assert "mutirao.ha.role" in loaded
    assert "mutirao.ha.controller" not in loaded
