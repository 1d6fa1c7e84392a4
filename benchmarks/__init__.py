"""Benchmarks of IKD Studio: speed, memory, load and quality measurements, each writing a markdown report.

Run each from the repository root as a module:

* ``python -m benchmarks.perf``: CSL, training step, training loop, step breakdown and inference sections of
  ``benchmarks/REPORT.md`` (``--append-gpu FILE`` adds a GPU check's report);
* ``python -m benchmarks.inference``: CPU inference engines (torch, torch.compile, onnxruntime, OpenVINO);
* ``python -m benchmarks.live_fps``: frame rate of the Live tab's processing path;
* ``python -m benchmarks.load_test``: inspection requests from several clients while the app trains;
* ``python -m benchmarks.attack_load``: the public-mode app's memory and latency under hostile requests;
* ``python -m benchmarks.csl``: exact fast CSL vs the naive Gram form (``benchmarks/CSL_REPORT.md``);
* ``python -m benchmarks.quality``: AU-PRO within training-time budgets, schedules and ablations;
* ``python -m benchmarks.demo_recipe``: the demo checkpoints with the CPU recipe, and its ablations;
* ``python -m benchmarks.startup``: seconds until the app serves and until its first heatmaps;
* ``python -m benchmarks.train_loop``: training loops through the real files (used by ``perf``);
* ``python -m benchmarks.real_bench``: IKD, plain STFPM, PatchCore and issue 16's levers at one time budget on
  real photographs (``results/real_bench.md``); ``python -m benchmarks.real_data`` builds that bench's data;
* ``python -m benchmarks.gpu_check`` (or ``bash benchmarks/gpu_check.sh``): the check for a lent GPU machine.

Shared modules, not benchmarks themselves: ``report`` (report sections, machine description, command line),
``measure`` (measurement cases of ``perf``, ``gpu_check`` and ``csl``) and ``app_server`` (the app in a
subprocess for the load tests).

Not to be confused with ``python -m ikd_core benchmark`` (``ikd_core.reproduce``), which trains and evaluates
categories and writes the quality tables of ``results/``.
"""
