"""Chapter recipes: data assembly, losses and training/evaluation loops a chapter runs.

A recipe only composes lower layers (data, models, losses, train, metrics); notebooks call it so
that their cells explain and run rather than re-implement.
"""
