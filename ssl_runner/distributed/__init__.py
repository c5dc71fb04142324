"""Multi-process runs.

Every rank runs the whole pipeline, in lockstep, from the first stage to the
last, so a stage that is not a Lightning `fit` (kNN, feature extraction) can
use collectives too.

- `collectives`: where this process stands (rank, world size, main process,
  its device) and the gathers and sums the methods and evaluation stages
  share, differentiable ones included; all of them work on one process too.
- `launch`: before and around the run: the checks of the planned world
  (`check_plan`), starting or joining the ranks (our own workers, torchrun,
  SLURM) and the process group (`start`, `DistributedSession`), and the
  message for a collective that failed.
- `batch`: the per-device, per-step and global batch sizes, resolved from the
  config and the world size (`batch_sizes`).
"""
