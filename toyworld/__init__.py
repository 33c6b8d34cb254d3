"""A toy world to measure FreeFuse on: synthetic scenes, a small Flux trained on them, character LoRAs."""
