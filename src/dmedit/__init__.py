"""dmedit: edit an object in a video from text with DreamMotion (score distillation on a video
diffusion model), keeping its motion and everything around it.

One package per layer; imports only go down (import-linter contracts in pyproject.toml, the
picture and the "where do I change..." table in docs/ARCHITECTURE.md):

    cli -> batch -> evaluation -> runs -> engine | masks -> media | models -> core
"""
