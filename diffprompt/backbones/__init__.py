"""Backbones that turn images into multi-scale feature maps.

- ``diffusion``: a Stable Diffusion UNet read through forward hooks (any diffusers checkpoint).
- ``comparators``: supervised and self-supervised backbones through transformers.
- ``toy_sd``: builds and pretrains the embedded tiny Stable-Diffusion-style model.
- ``hub``: where a model comes from (bundled, local folder or hub id), offline-safe.

Every backbone maps images to a dict ``{name: (B, C, H/s, W/s)}`` and says its channel
counts in ``feature_channels`` and strides in ``feature_strides``.
"""
