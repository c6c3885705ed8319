"""Transfer-learning workbench: frozen pretrained features, scikit-learn heads,
baselines, fine-tuning and an HTML comparison report (see README.md)."""

__version__ = "0.1.0"
