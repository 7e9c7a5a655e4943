"""Every name that reaches MLflow: metrics, tags, artifact files, declared once.

The trainer, the cell, the worker, the store, the report, the plots, the status and the tests all spell these
names through this module, so that a renamed metric cannot leave a table reading a name nobody logs any more.
The values are the MLflow layout (``ablation.tracking.mlflow_store``'s docstring) and what existing stores hold:
changing one orphans the runs logged under the old name. Torch-free; it imports only the words of a planned
cell's spec (``ablation.experiment.spec``), which are also the values of the PHASE and RECIPE tags.
"""

from __future__ import annotations

from ablation.experiment.spec import PHASE_FINAL, PHASE_TUNE, RECIPE_DEFAULT, RECIPE_TUNED  # noqa: F401 (tag values)

# ---- per-epoch metrics (step = the epoch, 1-based)

EPOCH = "epoch"  # the epoch number in a job's history (in MLflow it is the metrics' step, not a metric)
TRAIN_LOSS = "train/loss"
TRAIN_TOP1_ERR = "train/top1_err"
VAL_LOSS = "val/loss"
VAL_TOP1_ERR = "val/top1_err"
VAL_TOP5_ERR = "val/top5_err"
LR = "lr"  # the learning rate at the epoch's first step
THROUGHPUT = "throughput/img_per_s"  # training images per second of the epoch's training loop
EPOCH_TIME = "time/epoch_s"  # training and evaluation of the epoch, wall clock

EPOCH_METRICS = (TRAIN_LOSS, TRAIN_TOP1_ERR, VAL_LOSS, VAL_TOP1_ERR, VAL_TOP5_ERR, LR, THROUGHPUT, EPOCH_TIME)

# ---- final metrics (no step), logged once per finished cell

FINAL_TOP1_ERR_LAST = "final/top1_err_last"  # what tables report: the best epoch is picked on the validation set
FINAL_TOP5_ERR_LAST = "final/top5_err_last"
FINAL_TOP1_ERR_BEST = "final/top1_err_best"
FINAL_TOP5_ERR_BEST = "final/top5_err_best"
FINAL_VAL_LOSS_LAST = "final/val_loss_last"
FINAL_EPOCHS = "final/epochs"
FINAL_PARAMS = "final/params"
FINAL_GMACS = "final/gmacs"
FINAL_TRAIN_TIME = "final/train_time_s"

# ---- tags of experiments and runs

TITLE = "ablation.title"  # experiment
SOURCE = "ablation.source"  # experiment and sweep run: the experiment file
ROLE = "ablation.role"  # ROLE_SWEEP (the parent run) or ROLE_CELL (a child run)
ROLE_SWEEP, ROLE_CELL = "sweep", "cell"
SWEEP_KEY = "ablation.sweep_key"  # sweep run: the set of its cells
CELLS = "ablation.cells"  # sweep run: how many
CONFIG_HASH = "ablation.config_hash"  # cell run: the cell's key (config, seed and data identity)
LEGACY_HASH = "ablation.legacy_config_hash"  # a re-keyed run's key from before data identities were in keys
DATA_IDENTITY = "ablation.data_identity"
EXPERIMENT = "ablation.experiment"
ARM = "ablation.arm"
DESCRIPTION = "ablation.description"
SEED = "ablation.seed"
ATTENTION = "ablation.attention"  # the attention module's type
ATTENTION_SOURCE = "ablation.attention_source_sha256"  # the source file of a user's own attention module
BACKBONE_SOURCE = "ablation.backbone_source_sha256"  # the source file of a user's own network's builder
FAILURE = "ablation.failure"  # why a run failed or was stopped ("" once reopened)
GIT_DIRTY = "ablation.git_dirty"  # cell and sweep run: whether the harness's checkout differed from its commit
AXIS_PREFIX = "axis."  # + a grid axis' dotted key: that axis' value in this cell
DEVICE = "ablation.device"  # cell run: the device type it trained on (cpu, cuda)
# Cell runs of a tuned or seed-rule sweep (ablation.scheduler.plan); the dashboard filters tuning vs final runs by
# PHASE.
PHASE = "ablation.phase"  # PHASE_TUNE (a tuning trial) or PHASE_FINAL (a run the table reports)
RECIPE = "ablation.recipe"  # final run: RECIPE_DEFAULT (the experiment's recipe) or RECIPE_TUNED (its best values)
CELL_SPEC = "ablation.cell_spec"  # what the plan made the cell from: arm, seed, phase, recipe, values, trial (JSON)
TUNE_STUDY = "ablation.tune.study"  # tuning run: its arm's Optuna study
TUNE_TRIAL = "ablation.tune.trial"  # tuning run: the trial's number in that study
TUNE_STATE = "ablation.tune.state"  # tuning run: COMPLETE, PRUNED or FAIL, as the study records it
# Sweep run of a tuned sweep: its tuning trials that ended FAIL untrained, arm index -> trial numbers (JSON).
UNTRAINED_TRIALS = "ablation.tune.untrained_trials"
TUNE_PRUNED_AT = "tune/pruned_at_epoch"  # metric of a pruned tuning run: the epoch it was stopped after

# MLflow's own tags.
PARENT_RUN = "mlflow.parentRunId"
NOTE = "mlflow.note.content"
DATASET_CONTEXT = "mlflow.data.context"  # a dataset input's tag
# MLflow 3's dashboard has a GenAI and a model-training view; this tag marks our experiments as the latter.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# ---- artifacts

CONFIG_FILE = "config.yaml"  # cell run: the resolved config
ENVIRONMENT_FILE = "environment.json"  # cell run: versions, devices, kernels
CURVE_FILE = "learning_curve.png"  # cell run
CHECKPOINT_DIR = "checkpoint"  # cell run: the final checkpoint, on request
RESULTS_DIR = "results"  # sweep run: the table and its figures
GRADCAM_DIR = "gradcam"  # sweep run: the Grad-CAM figure


def axis_tag(key: str) -> str:
    """The tag of one grid axis (its dotted key)."""
    return AXIS_PREFIX + key


def role_filter(role: str) -> str:
    """MLflow's search filter for the runs of one role (``ROLE_SWEEP`` or ``ROLE_CELL``)."""
    return f"tags.`{ROLE}` = '{role}'"


# ---- MLflow's own tags (mlflow.utils.mlflow_tags), which its dashboard shows, filters and groups by

SOURCE_NAME = "mlflow.source.name"  # the experiment file the runs came from
SOURCE_TYPE = "mlflow.source.type"  # "LOCAL": a program run on a machine (MLflow's SourceType)
SOURCE_TYPE_LOCAL = "LOCAL"
USER = "mlflow.user"
GIT_COMMIT = "mlflow.source.git.commit"  # the harness checkout's commit, where it runs from one
SYSTEM_METRICS_PREFIX = "system/"  # MLflow's system metrics (SystemMetricsMonitor): CPU, memory, disk, network, GPU
