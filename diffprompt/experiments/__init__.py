"""What the notebooks run, and the tables they write (pandas).

One module per notebook family, each turning a notebook's parameters into configurations
and runs of the algorithm modules (:mod:`diffprompt.dg`, :mod:`diffprompt.tta`,
:mod:`diffprompt.probing`, :mod:`diffprompt.domain_gap`) and their results into tables:

- :mod:`~diffprompt.experiments.data`: notebook 00 (samples, class frequencies, the
  domain gap of a small CNN);
- :mod:`~diffprompt.experiments.probing`: notebook 01 (probes of frozen backbones, sweeps,
  CKA / MMD against the mIoU drop);
- :mod:`~diffprompt.experiments.dg`: notebook 02 (DG runs, mIoU and per-class tables);
- :mod:`~diffprompt.experiments.tta`: notebook 03 (every row of a target's TTA table);
- :mod:`~diffprompt.experiments.ablation`: notebook 04 (the prompt-ablation grid);
- :mod:`~diffprompt.experiments.stats`: mean ± std over seeds; bootstrap CIs of mIoU and
  of differences against a baseline row (:mod:`diffprompt.bootstrap`).

Their parameters are checked and turned into configurations by :mod:`diffprompt.parameters`.
Nothing in the package imports this package but the benchmark and the paper's tables.
"""
