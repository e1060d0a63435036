"""Backbones that turn images into multi-scale feature maps.

- ``diffusion``: a Stable Diffusion UNet read through forward hooks (any diffusers checkpoint).
- ``comparators``: supervised and self-supervised backbones through transformers.
- ``variants``: the embedded UNet pretrained, supervised (stored and read back; trained by
  :mod:`diffprompt.supervised`) or with random weights.
- ``hub``: where a model comes from (bundled, local folder or hub id), offline-safe.
- ``tokenizer``: a small CLIP tokenizer built from the project's caption words.
- the embedded tiny Stable-Diffusion-style model: ``toy_sd_recipe`` (what is trained: the
  configuration, data, components and objective), ``toy_sd`` (how: the training stages,
  checkpoints, the whole run and its command line), ``toy_sd_eval`` (evidence of what it
  learned) and ``toy_sd_card`` (its model card).

Every backbone maps images to a dict ``{name: (B, C, H/s, W/s)}`` and says its channel
counts in ``feature_channels`` and strides in ``feature_strides``.
"""
