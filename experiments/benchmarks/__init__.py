"""The commands of ``experiments/benchmark.py``, one module each (``step``, ``data``, ``infer``,
``report``), and what they share (``common``)."""
