"""Prediction engines: ``local`` (this process, ``generalad.predict``) and ``ray`` (a Ray Data actor pool).

Both write the same files — ``predictions.jsonl`` / ``.csv`` in input order, ``images/*_overlay.png``,
``failed.txt`` — and the same rows except ``latency_ms`` (docs/SCALE.md). ``generalad.engines.ray`` imports
Ray only when used (``pip install "generalad[ray]"``).
"""

ENGINES = ("local", "ray")

__all__ = ["ENGINES"]
