"""Hard-negative generators: one file each, one YAML each in conf/negatives/ (multi-select)."""
