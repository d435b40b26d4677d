"""Models, one module per paper (and ``handcrafted`` for the pre-deep baselines)."""
