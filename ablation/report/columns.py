"""The columns of the two frames every table is made of, declared once: the runs frame (one row per finished cell,
``table.collect_runs``) and the summary (one row per arm, ``table.summarize``), plus the columns a planned sweep
adds (``planned``). Tables, figures, the CSV a user reads, the review notebook and the tests spell them through these
names: renaming one here renames it everywhere, and nowhere is it spelled again."""

# ---- the runs frame
ARM, DESCRIPTION, SEED, RUN_ID = "arm", "description", "seed", "run_id"
TOP1, TOP5, TOP1_BEST = "top1_err", "top5_err", "top1_err_best"  # TOP1 is the objective (tracking.results)
PARAMS, GMACS, IMG_PER_S, TRAIN_TIME = "params", "gmacs", "img_per_s", "train_time_s"
RUN_COLUMNS = (ARM, DESCRIPTION, SEED, RUN_ID, TOP1, TOP5, TOP1_BEST, PARAMS, GMACS, IMG_PER_S, TRAIN_TIME)

# ---- the long format, one row per cell (``ablation.report.runs``): the runs frame's names plus these
CELL, STATUS, FAILURE, CELL_KEY = "cell", "status", "failure", "cell_key"

# ---- the summary
N = "n"
TOP1_MEAN, TOP1_STD, TOP5_MEAN, TOP5_STD = "top1_err_mean", "top1_err_std", "top5_err_mean", "top5_err_std"
IMG_PER_S_MEAN = "img_per_s_mean"
# The comparison with the baseline (ablation.stats.compare): the compact cell, its raw p (as before), and all of it.
VS_BASELINE, VS_BASELINE_P = "vs_baseline", "vs_baseline_p"
DIFF, DIFF_LOW, DIFF_HIGH = "diff_top1", "diff_top1_ci_low", "diff_top1_ci_high"  # points, 95% interval
TEST, T, DF, P_ADJUSTED, EFFECT = "test", "t", "df", "p_adjusted", "hedges_g"
PAPER_TOP1, PAPER_TOP5, DELTA_TOP1_VS_PAPER = "paper_top1_err", "paper_top5_err", "delta_top1_vs_paper"
PAPER_PARAMS_M, PAPER_GFLOPS = "paper_params_m", "paper_gflops"
# The paper's numbers as a table prints them: the source's mark, and a disputed number's other reading.
PAPER_TOP1_SHOWN, PAPER_TOP5_SHOWN = "paper_top1_shown", "paper_top5_shown"
PAPER_PARAMS_SHOWN, PAPER_GFLOPS_SHOWN = "paper_params_shown", "paper_gflops_shown"
SUMMARY_COLUMNS = (
    DESCRIPTION, N, PARAMS, GMACS, TOP1_MEAN, TOP1_STD, TOP5_MEAN, TOP5_STD, IMG_PER_S_MEAN, VS_BASELINE,
    VS_BASELINE_P, DIFF, DIFF_LOW, DIFF_HIGH, TEST, T, DF, P_ADJUSTED, EFFECT,
    PAPER_TOP1, PAPER_TOP5, DELTA_TOP1_VS_PAPER, PAPER_PARAMS_M, PAPER_GFLOPS, PAPER_TOP1_SHOWN,
    PAPER_TOP5_SHOWN, PAPER_PARAMS_SHOWN, PAPER_GFLOPS_SHOWN,
)  # fmt: skip

# ---- what a tuned or seed-rule sweep's summary adds, and their titles (shown after the test column)
TUNED_VALUES, TUNING_TRIALS, TUNING_COST, SEEDS_RULE = "tuned_values", "tuning_trials", "tuning_cost", "seeds_rule"
EXTRA_COLUMNS = (
    (TUNED_VALUES, "Tuned values"),
    (TUNING_TRIALS, "Trials (pruned)"),
    (TUNING_COST, "Tuning cost"),
    (SEEDS_RULE, "Seeds (rule)"),
)

# ---- a tuned sweep's comparison of its recipes (recipes.csv), one row per arm
DEFAULT_TOP1, DEFAULT_N, DEFAULT_RANK = "default_top1_err", "default_n", "default_rank"
TUNED_TOP1, TUNED_N, TUNED_RANK = "tuned_top1_err", "tuned_n", "tuned_rank"
TUNED_MINUS_DEFAULT = "tuned_minus_default"
COMPARISON_COLUMNS = (
    DESCRIPTION, DEFAULT_TOP1, DEFAULT_N, TUNED_TOP1, TUNED_N, DEFAULT_RANK, TUNED_RANK, TUNED_MINUS_DEFAULT,
)  # fmt: skip
