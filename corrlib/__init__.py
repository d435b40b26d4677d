"""corrlib: models, losses, metrics and data for the semantic-correspondence notebooks.

Layers (a lower layer never imports a higher one; ``lint-imports`` checks the contract written in
``pyproject.toml``): primitives (``_check``, ``checkpoint``, ``geometry``, ``correlation``,
``matching``, ``color``, ``flo``) -> ``losses``, ``metrics`` -> ``data`` -> ``models`` (one module
per paper, owning its trained weights) -> ``methods`` (inference adapters), ``train``, ``stereo``
-> ``eval``, ``exercises``, ``viz`` -> ``recipes`` (each chapter's config, data and loops) ->
``series`` -> ``cli``.
"""

__version__ = "0.1.0"
