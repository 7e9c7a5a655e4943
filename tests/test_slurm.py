"""The Slurm script (ablation/slurm.py): a worker array, and a local storage refused."""

import subprocess

import runner
from tests.conftest import tiny_experiment


def test_slurm_writes_a_worker_array_and_refuses_a_local_storage(tmp_path, tiny_npz, write_experiment, capsys):
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first, parallel]", "[0, 1]"))
    url = "postgresql+psycopg2://user@db/sweeps"
    out = tmp_path / "array.sh"
    args = ["slurm", str(path), "--storage", url, "--tracking-uri", "http://mlflow:5000", "--out", str(out)]
    assert runner.main([*args, "--gpus-per-job", "2"]) == 0
    script = out.read_text()
    assert "#SBATCH --array=0-3" in script  # one worker per cell by default: 2 arms x 2 seeds
    assert "#SBATCH --gpus-per-task=2" in script and "--gpus-per-job 2" in script
    assert f"--storage {url}" in script and "runner.py worker" in script
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    capsys.readouterr()
    assert runner.main(["slurm", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: --storage")
