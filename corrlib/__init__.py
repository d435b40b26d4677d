"""corrlib: models, losses, metrics and data for the semantic-correspondence notebooks.

Layers (lower never imports higher): ``geometry``, ``correlation``, ``matching`` (primitives)
-> ``metrics`` -> ``models`` -> ``data``, ``eval``, ``series`` -> notebooks.
"""

__version__ = "0.1.0"
