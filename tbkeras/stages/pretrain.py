"""Self-supervised pretraining stages (paper Sec. 3.1, Algorithm 1 lines 8-15, DESIGN.md section 2).

- `InvariantPretrainer`: teacher f_I, L_I (Eq. 1) on the n local clips.
- `DistinctivePretrainer`: teacher f_D, L_D = L_D1 (Eq. 3, pooled local clips of two views)
  + L_D2 (TCLR's global-local loss: global clip temporal slices vs pooled local clips).
- `SSLPretrainer`: the full TCLR objective w_I L_I + w_D1 L_D1 + w_D2 L_D2 (default 1/1/1), used to
  initialise the student.

Input: one `ssl_dataset` element `{"local": [B, V, n, L, S, S, 3], "global": [B, V, G, S, S, 3]}`.
All clips (B*V*n local, plus B*V global when a term needs them) go through the backbone in ONE call
when G = L (the official code); a global clip of its own length G goes through in a second call.
Augmentation happens in tf.data, never here.

The global clip's `temporal` output has T' slices (R3D-18 with `dilated_layer4` keeps 4 of a
16-frame clip). L_D2 needs n of them: when T' > n the slices are average-pooled over time into n
equal spans (PyTorch's adaptive average pooling); T' < n is an error, since slices cannot be made
up (use a longer global clip or `dilated_layer4=True`).

Logged metrics: "loss" (weighted total) and the active terms among "loss_i", "loss_d1", "loss_d2".
"""
from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from tbkeras.losses import global_local_loss, temporal_distinctiveness_loss, temporal_invariance_loss
from tbkeras.stages.base import StageModel

DENOMINATORS = ("standard", "paper")


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    """Settings shared by the contrastive losses.

    Attributes:
        temperature: tau in h(u, v) = exp(cos(u, v) / tau).
        denominator: "standard" NT-Xent (positive in the denominator, official code) or "paper"
            (negatives only, Eq. 1 / Eq. 3 as printed).
        gather_negatives: L_I draws negatives from every replica's batch (all_gather).
        global_clip_as_timestamp: L_I also treats the global clip as an (n+1)-th timestamp.
    """

    temperature: float = 0.1
    denominator: str = "standard"
    gather_negatives: bool = False
    global_clip_as_timestamp: bool = False

    def __post_init__(self):
        if self.denominator not in DENOMINATORS:
            raise ValueError(f"denominator must be one of {DENOMINATORS}, got {self.denominator!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the three SSL terms: L = invariance*L_I + pooled*L_D1 + global_local*L_D2."""

    invariance: float = 1.0
    pooled: float = 1.0
    global_local: float = 1.0

    def __post_init__(self):
        values = dataclasses.asdict(self)
        if any(w < 0 for w in values.values()) or not any(w > 0 for w in values.values()):
            raise ValueError(f"loss weights must be >= 0 with at least one > 0, got {values}")


def pool_time(temporal, num_slices: int):
    """Adaptive average pooling over time: `[B, T', C]` -> `[B, num_slices, C]`.

    Slice i averages frames floor(i T'/n) .. ceil((i+1) T'/n) - 1, as torch's AdaptiveAvgPool1d.
    """
    t = temporal.shape[1]
    if t is None:
        raise ValueError("the global clip's temporal feature length must be static to pool it to n slices")
    if t < num_slices:
        raise ValueError(
            f"the global clip's backbone output has {t} temporal slices but L_D2 needs one per local clip "
            f"(n={num_slices}); use a longer global clip or a backbone that keeps more time (r3d18 with "
            "dilated_layer4=True keeps 4 slices of a 16-frame clip)")
    if t == num_slices:
        return temporal
    spans = [(math.floor(i * t / num_slices), math.ceil((i + 1) * t / num_slices)) for i in range(num_slices)]
    return ops.stack([ops.mean(temporal[:, a:b], axis=1) for a, b in spans], axis=1)


class SSLPretrainer(StageModel):
    """Backbone + projection head trained with w_I L_I + w_D1 L_D1 + w_D2 L_D2 (TCLR).

    Args:
        backbone: a built video backbone returning {"pooled": [N, C], "temporal": [N, T', C]} and
            having `feature_dim` (e.g. `tbkeras.models.r3d18(...)`).
        head: a `ProjectionHead` (L2-normalised float32 output, works on [N, C] and [B, n, C]).
        config: `ContrastiveConfig`.
        weights: `LossWeights` (default 1/1/1). A zero weight skips its term entirely.

    Example:
        model = SSLPretrainer(r3d18(width_multiplier=0.125), ProjectionHead())
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(ssl_dataset(cfg), epochs=...)
        save_encoder(stage_dir, model.backbone, model.head)
    """

    def __init__(self, backbone: keras.Model, head: keras.layers.Layer,
                 config: ContrastiveConfig = ContrastiveConfig(), weights: LossWeights = LossWeights(),
                 name: str = "ssl_pretrainer", **kwargs):
        names = ["loss"] + [n for n, w in (("loss_i", weights.invariance), ("loss_d1", weights.pooled),
                                           ("loss_d2", weights.global_local)) if w > 0]
        super().__init__(names, name=name, **kwargs)
        self.backbone = backbone
        self.head = head
        self.config = config
        self.ssl_weights = weights
        self.head(ops.zeros((1, backbone.feature_dim)))  # build, so fit() never has to trace call()
        self.built = True

    def call(self, clips, training=False):
        """Project clips `[N, L, S, S, 3]` -> z `[N, d]` (pooled features through the head)."""
        return self.head(self.backbone(clips, training=training)["pooled"], training=training)

    @property
    def _needs_global(self) -> bool:
        return self.ssl_weights.global_local > 0 or (
            self.ssl_weights.invariance > 0 and self.config.global_clip_as_timestamp)

    def compute_terms(self, data, training: bool) -> dict:
        local, global_clip = data["local"], data["global"]
        _, num_views, n = local.shape[:3]
        clip_shape = tuple(local.shape[3:])
        batch = ops.shape(local)[0]
        w, cfg = self.ssl_weights, self.config
        if w.pooled > 0 and num_views != 2:
            raise ValueError(f"L_D1 needs 2 views of each clip (ssl_dataset views=2), got {num_views}")

        clips = ops.reshape(local, (-1,) + clip_shape)                        # [B*V*n, L, S, S, 3]
        global_clips = ops.reshape(global_clip, (-1,) + tuple(global_clip.shape[2:]))  # [B*V, G, S, S, 3]
        num_local = batch * num_views * n
        if self._needs_global and global_clip.shape[2] == local.shape[3]:
            features = self.backbone(ops.concatenate([clips, global_clips], axis=0), training=training)
            pooled_local, pooled_global = features["pooled"][:num_local], features["pooled"][num_local:]
            temporal_global = features["temporal"][num_local:]
        else:
            pooled_local = self.backbone(clips, training=training)["pooled"]
            if self._needs_global:
                features = self.backbone(global_clips, training=training)
                pooled_global, temporal_global = features["pooled"], features["temporal"]
        z_local = self.head(pooled_local, training=training)
        dim = z_local.shape[-1]
        z_local = ops.reshape(z_local, (batch, num_views, n, dim))            # [B, V, n, d]

        terms = {}
        if w.invariance > 0:
            z_inv = z_local
            if cfg.global_clip_as_timestamp:
                z_global = self.head(pooled_global, training=training)
                z_inv = ops.concatenate([z_local, ops.reshape(z_global, (batch, num_views, 1, dim))], axis=2)
            terms["loss_i"] = _mean([
                temporal_invariance_loss(z_inv[:, v], temperature=cfg.temperature, denominator=cfg.denominator,
                                         gather_across_replicas=cfg.gather_negatives)
                for v in range(num_views)])
        if w.pooled > 0:
            terms["loss_d1"] = temporal_distinctiveness_loss(
                z_local[:, 0], z_local[:, 1], temperature=cfg.temperature, denominator=cfg.denominator)
        if w.global_local > 0:
            slices = pool_time(temporal_global, n)                             # [B*V, n, C]
            z_slices = ops.reshape(self.head(slices, training=training), (batch, num_views, n, dim))
            terms["loss_d2"] = _mean([
                global_local_loss(z_slices[:, v], z_local[:, v], temperature=cfg.temperature)
                for v in range(num_views)])
        weight_of = {"loss_i": w.invariance, "loss_d1": w.pooled, "loss_d2": w.global_local}
        terms["loss"] = sum(weight_of[k] * v for k, v in terms.items())
        return terms


class InvariantPretrainer(SSLPretrainer):
    """Temporally-invariant teacher f_I: L_I only (Eq. 1). With `global_clip_as_timestamp` the
    global clip joins the n local clips as one more timestamp. One view suffices; with two views
    L_I is averaged over them."""

    def __init__(self, backbone: keras.Model, head: keras.layers.Layer,
                 config: ContrastiveConfig = ContrastiveConfig(), name: str = "invariant_pretrainer", **kwargs):
        super().__init__(backbone, head, config, LossWeights(1.0, 0.0, 0.0), name=name, **kwargs)


class DistinctivePretrainer(SSLPretrainer):
    """Temporally-distinctive teacher f_D: L_D = L_D1 + L_D2 (Eq. 3 + TCLR's global-local loss).
    Needs two views (`ssl_dataset` views=2)."""

    def __init__(self, backbone: keras.Model, head: keras.layers.Layer,
                 config: ContrastiveConfig = ContrastiveConfig(), name: str = "distinctive_pretrainer", **kwargs):
        super().__init__(backbone, head, config, LossWeights(0.0, 1.0, 1.0), name=name, **kwargs)


def _mean(values: list):
    return values[0] if len(values) == 1 else ops.mean(ops.stack(values))
