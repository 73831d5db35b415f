"""Built-in methods, one module each; harmony_core.registry imports them on first use."""
