"""Video backbones (R3D-18, Slow-R50) and the heads TimeBalance puts on them."""
from tbkeras.models.heads import Classifier, ProjectionHead
from tbkeras.models.r3d import BACKBONES, R3D18, R3D50, build_backbone, r3d18, r3d50

__all__ = ["r3d18", "r3d50", "build_backbone", "BACKBONES", "R3D18", "R3D50", "ProjectionHead", "Classifier"]
