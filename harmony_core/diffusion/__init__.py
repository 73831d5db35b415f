"""Shared diffusion toolkit: loading (components), DDIM math (ddim), UNet parts, hooks, random models (tiny).

Modules are imported on use (torch and diffusers are heavy), so `import harmony_core.diffusion`
costs nothing for the classical methods.
"""
