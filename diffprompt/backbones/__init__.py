"""Backbones that turn images into multi-scale feature maps.

- ``diffusion``: a Stable Diffusion UNet read through forward hooks (any diffusers checkpoint).
- ``comparators``: supervised and self-supervised backbones through transformers.
- ``variants``: the embedded UNet pretrained, supervised (stored and read back; trained by
  :mod:`diffprompt.supervised`) or with random weights.
- ``hub``: where a model comes from (bundled, local folder or hub id), offline-safe.
- ``tokenizer``: a small CLIP tokenizer built from the project's caption words.

Feature extractors only: how the embedded tiny Stable-Diffusion-style model is trained,
measured and described is :mod:`diffprompt.toysd`, which sits above the data, prompts,
evaluation and results; nothing here imports those.

Every backbone maps images to a dict ``{name: (B, C, H/s, W/s)}`` and says its channel
counts in ``feature_channels`` and strides in ``feature_strides``.
"""
