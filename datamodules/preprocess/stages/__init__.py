"""Preprocessing stages: one file each, listed in the `stages` config group (conf/stages/)."""
