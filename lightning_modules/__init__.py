"""The model side: model factory, CLIP LightningModule, losses, metrics."""
