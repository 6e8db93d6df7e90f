"""PyTorch backend: TSM on a ResNet-50. Imported only when a torch model is used."""
