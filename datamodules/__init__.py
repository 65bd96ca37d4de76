"""The data side: records, sources, the synthetic world, datasets, the DataModule, benchmarks."""
