"""A helper shared by the tests that evaluate an exported checkpoint through ``corrlib eval``."""

from __future__ import annotations

from corrlib import cli


def eval_checkpoint(method: str, checkpoint, data_root, out, limit: int = 2) -> int:
    """``corrlib eval --method METHOD --checkpoint FILE --dataset pf-willow`` on the first
    ``limit`` pairs, in process; returns the exit code (read the output with ``capsys``)."""
    return cli.main(
        [
            "eval", "--method", method, "--checkpoint", str(checkpoint), "--dataset", "pf-willow",
            "--data-root", str(data_root), "--out", str(out), "--limit", str(limit),
            "--no-progress",
        ]
    )  # fmt: skip
