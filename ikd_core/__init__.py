"""IKD Studio engine: Informative Knowledge Distillation for image anomaly segmentation."""

__version__ = "0.1.0"
