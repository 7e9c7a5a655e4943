#!/usr/bin/env bash
# The timing-sensitive tests (Slurm, fault injection, workers, heartbeats, stores, the browser) N times in a row
# while another process keeps one of the cores busy: a test that still depends on how fast the machine is fails
# here. Usage: tests/stress_timing.sh [N=10] [LOG_DIR=/tmp/stress-timing]; one summary line per run, exit 1 if
# any run failed. Run it on a clean clone after `pip install -e ".[dev]"` (.ci/run installs what it needs).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
logs=${2:-/tmp/stress-timing}
mkdir -p "$logs"
tests=(
    tests/slurm tests/test_fault_injection.py tests/test_tuned_faults.py tests/scheduler/test_worker.py
    tests/scheduler/test_worker_startup.py tests/scheduler/test_queue.py tests/tracking/test_stores.py tests/scheduler/test_state.py
    tests/support/test_processes.py tests/data/test_identity.py tests/test_mlflow_ui.py tests/test_multinode.py tests/test_multinode_slurm.py
    tests/scheduler/test_trial_rows.py
    "tests/scheduler/test_plan.py::test_the_last_worker_still_queues_what_the_plan_needs_next"
    "tests/test_bad_inputs.py::test_a_config_error_appears_before_the_heavy_imports"
)
# The load: a busy loop pinned to core 0, for as long as this script runs.
taskset -c 0 python -c "while True: pass" &
load=$!
trap 'kill $load 2>/dev/null' EXIT
failed=0
for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    ABLATION_REQUIRE_SLURM=1 ABLATION_REQUIRE_NETNS=1 python -m pytest -q -p no:cacheprovider "${tests[@]}" > "$logs/run-$i.log" 2>&1
    code=$?
    summary=$(grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed)" "$logs/run-$i.log" | tail -1)
    echo "run $i/$runs: exit $code, $(( $(date +%s) - start )) s: $summary"
    [ "$code" -eq 0 ] || failed=1
done
exit $failed
