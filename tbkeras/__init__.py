"""tbkeras: TimeBalance (CVPR 2023) semi-supervised video action recognition in Keras 3."""

__version__ = "0.1.0"
