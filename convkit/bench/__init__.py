"""``convkit bench``: convkit's hand-written kernels against the libraries torch ships.

Every row of the report is one (shape, op, implementation). For each row the harness follows
llm.c's pattern: build the row's tensors, call the implementation once (timed separately as the
*first call*, which includes Numba's JIT compile or cache load the first time a kernel is used in
the process), check that output against torch's on the same tensors, warm up, then time repeated
calls and keep the median and spread. Ratios are convkit's median over torch's median measured in
the same process, so they are comparable across machines even when absolute times are not.
On CUDA the torch column runs cuDNN with ``cudnn.benchmark=True`` and TF32 off (the fair fp32
comparison); a second ``torch-tf32`` column runs with TF32 on.

One job per module:

- ``shapes``: the named shape table (the single source for this command and ``benchmarks/``),
  the ops and the ``--shapes`` / ``--ops`` selection, and whole networks' convs (``WORKLOADS``:
  each distinct conv with its occurrence count, e.g. ``--shapes resnet18-convs``);
- ``weighted``: a workload's occurrence-weighted fwd+bwd total against torch, and the (conv,
  pass) terms that cost the most time over torch;
- ``cases``: what is called on each side for one (shape, op), through convkit's public API;
- ``harness``: validate before timing, the timer, the statistics of a row;
- ``machine``: the environment a run records (also ``convkit train``'s) and the SGEMM / copy roofs;
- ``runner``: one run over the selected shapes and ops;
- ``model``: ``--model module:callable``, a user's whole model (checked, timed, per layer);
- ``report``: terminal and markdown tables, speed targets, PNG, JSON, the README section;
- ``cli``: the options and ``main`` (``python -m convkit.bench``, ``convkit bench``).
"""
