"""Data sources: each yields `Record`s per split (train / val / test)."""
