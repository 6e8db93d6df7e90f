"""ViViT (Arnab et al. 2021), spatio-temporal attention variant, as the Keras "Video Vision Transformer" example.

Tubelets (non-overlapping D x H x W patches) are embedded by one strided Conv3D, a learned position
embedding is added, and pre-norm transformer blocks attend over all tokens at once. The head outputs
logits (the example ends in softmax; training here uses `from_logits`), so the parameter count is the
example's: 1,656,971 for (28, 28, 28, 1) inputs, 8^3 patches, width 128, 8 heads, 8 layers, 11 classes.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from vidcli.errors import VidcliError
from vidcli.families.vivit import VivitParams

Params = VivitParams


@keras.saving.register_keras_serializable(package="vidcli")
def gelu_erf(x):
    """Exact GELU through erf: TensorFlow lowers Keras' own exact GELU to Erfc, which ONNX lacks."""
    return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


@keras.saving.register_keras_serializable(package="vidcli")
class TubeletEmbedding(layers.Layer):
    """Cut (B, D, H, W, C) into non-overlapping tubelets and project each to one token: (B, tokens, dim)."""

    def __init__(self, embed_dim: int, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.patch_size = tuple(int(p) for p in patch_size)
        self.projection = layers.Conv3D(
            embed_dim, self.patch_size, strides=self.patch_size, padding="valid", name="projection"
        )
        self.flatten = layers.Reshape((-1, embed_dim), name="flatten")

    def build(self, input_shape):
        self.projection.build(input_shape)
        super().build(input_shape)

    def call(self, videos):
        # The Conv3D's own weights, applied as one matmul over cut-out tubelets: the same numbers, but
        # TensorFlow's CPU gradient of a strided Conv3D takes minutes per step for 7^3 or 8^3 kernels.
        (pd, ph, pw), channels = self.patch_size, int(videos.shape[-1])
        gd, gh, gw = (int(s) // p for s, p in zip(videos.shape[1:4], self.patch_size, strict=True))
        x = videos[:, : gd * pd, : gh * ph, : gw * pw, :]
        x = ops.reshape(x, (-1, gd, pd, gh, ph, gw, pw, channels))
        x = ops.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
        x = ops.reshape(x, (-1, gd * gh * gw, pd * ph * pw * channels))
        kernel = ops.reshape(self.projection.kernel, (pd * ph * pw * channels, self.embed_dim))
        return ops.matmul(x, ops.cast(kernel, x.dtype)) + ops.cast(self.projection.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        grid = self.projection.compute_output_shape(input_shape)[1:4]
        tokens = None if None in grid else grid[0] * grid[1] * grid[2]
        return (input_shape[0], tokens, self.embed_dim)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package="vidcli")
class PositionalEncoder(layers.Layer):
    """Add a learned embedding of each token's position; the token count is fixed by the input shape."""

    def __init__(self, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_tokens: int | None = None
        self.position_embedding: layers.Embedding | None = None

    def build(self, input_shape):
        self.num_tokens = int(input_shape[1])
        self.position_embedding = layers.Embedding(self.num_tokens, self.embed_dim, name="position_embedding")
        self.position_embedding.build((self.num_tokens,))
        super().build(input_shape)

    def call(self, tokens):
        positions = ops.arange(self.num_tokens, dtype="int32")
        return tokens + ops.cast(self.position_embedding(positions), tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim}


def check(params: VivitParams, num_classes: int, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Reject settings that would fail deep inside Keras; return the patch size as a tuple."""
    patch = tuple(params.patch_size) if isinstance(params.patch_size, (list, tuple)) else (params.patch_size,) * 3
    if len(patch) != 3 or not all(isinstance(p, int) and p >= 1 for p in patch):
        raise VidcliError(f"model.params.patch_size: expected three positive integers (D, H, W), got {patch}")
    if len(input_shape) != 4:
        raise VidcliError(f"ViViT input must be (frames/depth, height, width, channels), got {tuple(input_shape)}")
    if any(p > s for p, s in zip(patch, input_shape[:3], strict=True)):
        raise VidcliError(f"model.params.patch_size: {patch} is larger than the input {tuple(input_shape[:3])}")
    for field in ("projection_dim", "num_heads", "num_layers"):
        if getattr(params, field) < 1:
            raise VidcliError(f"model.params.{field}: must be at least 1, got {getattr(params, field)}")
    if params.projection_dim % params.num_heads:
        raise VidcliError(
            f"model.params.projection_dim: {params.projection_dim} is not divisible by num_heads={params.num_heads}"
        )
    if not 0 <= params.dropout < 1:
        raise VidcliError(f"model.params.dropout: must be in [0, 1), got {params.dropout}")
    if params.layer_norm_eps <= 0:
        raise VidcliError(f"model.params.layer_norm_eps: must be positive, got {params.layer_norm_eps}")
    if num_classes < 1:
        raise VidcliError(f"need at least one class, got {num_classes}")
    return patch


def build(params: VivitParams, num_classes: int, input_shape: tuple[int, int, int, int]) -> keras.Model:
    """ViViT classifier for (D, H, W, C) inputs (C=1 volumes, C=3 RGB frames); outputs logits."""
    patch = check(params, num_classes, input_shape)
    dim, eps = params.projection_dim, params.layer_norm_eps
    inputs = keras.Input(tuple(input_shape), name="video")
    tokens = TubeletEmbedding(dim, patch, name="tubelet_embedding")(inputs)
    x = PositionalEncoder(dim, name="positional_encoder")(tokens)
    for i in range(params.num_layers):
        name = f"block{i + 1}"
        y = layers.LayerNormalization(epsilon=eps, name=f"{name}_ln1")(x)
        y = layers.MultiHeadAttention(
            params.num_heads, key_dim=dim // params.num_heads, dropout=params.dropout, name=f"{name}_attention"
        )(y, y)
        x = layers.Add(name=f"{name}_add1")([y, x])
        y = layers.LayerNormalization(epsilon=eps, name=f"{name}_ln2")(x)
        y = layers.Dense(dim * 4, activation=gelu_erf, name=f"{name}_mlp1")(y)
        y = layers.Dense(dim, activation=gelu_erf, name=f"{name}_mlp2")(y)
        x = layers.Add(name=f"{name}_add2")([y, x])
    x = layers.LayerNormalization(epsilon=eps, name="final_ln")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vivit")
