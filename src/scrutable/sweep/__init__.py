"""Sweep engine: launch, track and summarise multi-objective Ray Tune sweeps.

The modules, in the order a sweep uses them (`launcher.run_sweep` is the recipe):

    the spec        spec.py (the schema, loading), spec_checks.py (checks against the machine
                    and the data), search_space.py (the one decoder of searched values)
    the folder      folder.py (its layout and `SweepFolder`, the one way to open one),
                    storage.py (local path or bucket), driver_sync.py (the folder's copy in
                    a bucket), resume.py (what --resume may change), trust.py (signed state)
    Ray             ray_start.py (local on 127.0.0.1, or a cluster), cluster.py, probe.py,
                    placement.py (the device and threads of each worker)
    tracking        tracking_store.py (MLflow's store, parent run), tracking.py (the Tune
                    callback), tracking_repair.py, tracking_cards.py, artifacts.py
    the search      searcher.py (Optuna behind Tune), trainable.py (each trial),
                    scorer_actor.py (the shared perplexity model)
    while it runs   progress.py (the live table), terminal.py (80 columns, one clock),
                    tune_log.py (Tune's warnings), timing.py (start-up marks for
                    benchmarks/startup.py)
    the results     results.py (Tune's files as `TrialRecord`s), frontier.py + pareto.py
                    (the frontier, hypervolume), plots_view.py + plots.py + plots_html.py,
                    ui.py (`scrutable ui`)

The files stay side by side (not subpackages) because Tune pickles some of their classes
by module path into a sweep folder (the tracking callback in its experiment state), and a
folder written before a move must still resume.
"""
