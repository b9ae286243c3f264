"""Linear probes on a record run's activations (`nnpatch probe RUN_DIR`): for each cell and
each tracked value (the run's own answer, each step's result), how well a cross-validated
linear probe decodes it, against the majority class and a control task.

- `fit`: the probe, folds by pair, the control labels, the Wilson interval;
- `labels`: what each (pair, run) is labelled with;
- `study`: every cell and value of a run folder;
- `report`: probe.parquet, probe.md, the heatmaps and the command's summary.
"""

from nnpatch.probe.study import Probed, probe_run, probe_table

__all__ = ["Probed", "probe_run", "probe_table"]
