"""Built-in methods; importing this package registers them (one module per method family)."""

from harmony_core.methods import classical  # noqa: F401
