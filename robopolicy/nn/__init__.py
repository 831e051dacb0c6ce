"""Shared networks: sinusoidal embeddings, the 1-D conditional UNet, image and state encoders."""

from robopolicy.nn.embeddings import SinusoidalEmbedding
from robopolicy.nn.mlp import MLP
from robopolicy.nn.unet1d import UNET_PRESETS, ConditionalUnet1D, UNetConfig, check_horizon, unet_preset
from robopolicy.nn.vision import IMAGE_ENCODER_PRESETS, ImageEncoder, ImageEncoderConfig, SpatialSoftmax

__all__ = [
    "IMAGE_ENCODER_PRESETS", "MLP", "UNET_PRESETS", "ConditionalUnet1D", "ImageEncoder", "ImageEncoderConfig",
    "SinusoidalEmbedding", "SpatialSoftmax", "UNetConfig", "check_horizon", "unet_preset",
]
