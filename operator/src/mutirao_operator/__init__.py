"""The Mutirão operator: ``Task`` resources (``tasks.mutirao.dev``) run as Mutirão tasks.

kopf calls thin handlers (:mod:`mutirao_operator.handlers` for ``kopf run``, built by
:func:`mutirao_operator.app.register`); the decisions are pure functions
(:mod:`~mutirao_operator.reconcile` for Tasks, :mod:`~mutirao_operator.leader` for the
orchestrators' Lease), and :class:`~mutirao_operator.runtime.Runtime` carries them out
against the orchestrator API and the Kubernetes API. This package may import ``mutirao``;
``mutirao`` never imports it.
"""
