"""The embedded model's training project: a tiny Stable-Diffusion-style model pretrained on
the miniature, how it is measured and described (shipped as ``diffprompt/assets/toy-sd``).

- ``config``: ``ToySDConfig``, the architecture and hyper-parameters of a recipe, and how a
  recipe is recorded;
- ``recipe``: what is trained: the data, components and objective;
- ``options``: what the options of the next recipes are made of (``recipe`` builds with
  them; both read ``config``, neither imports the other's configuration);
- ``pretrain``: how: the training stages, checkpoints, the whole run and its command line
  (``python -m diffprompt.toysd.pretrain``);
- ``eval``: evidence of what it learned; ``python -m diffprompt.toysd.eval`` writes its card;
- ``card``: its model card;
- ``text_use``: how much its text reaches its features (what a candidate is judged by);
- ``candidates``: a candidate recipe trained and measured in one command
  (``python -m diffprompt.toysd.candidates``).

It sits above the data, prompts, evaluation and results; the feature extractors it trains
and reads are :mod:`diffprompt.backbones`, which import nothing from here.
"""
