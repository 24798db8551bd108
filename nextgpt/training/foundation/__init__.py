"""Trainers of the foundation components on the shapes world (issue 12): the encoder, the diffusion
pipelines and the base LLM that the `shapes` profile is made of, each saved in its real on-disk format
and loaded by the same code as the real weights. `loop.py` is the training loop they share."""
