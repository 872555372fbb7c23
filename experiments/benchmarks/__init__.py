"""The commands of ``experiments/benchmark.py``, one module each (``step``, ``data``, ``infer``,
``export`` in ``export_bench``, ``report``), and what they share (``common``)."""
