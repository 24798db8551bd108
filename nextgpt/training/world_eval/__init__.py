"""Independent classifiers for the shapes world: what a picture, video or sound shows, read from signal
statistics (no learned model), what a text claims, and a scorer that compares them with a caption's
attributes. Validated on the world's own media in tests/nextgpt/training/test_world_eval.py."""
