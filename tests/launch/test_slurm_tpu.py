"""Generated SLURM scripts and TPU commands, and what they do when their steps run here."""

import os
import shlex
import subprocess
import sys

import pytest

from launch import slurm, sweep, tpu
from lowprec.train.rundir import RunDir


def _recorder(bin_dir, name):
    """An executable ``name`` on ``bin_dir`` that writes its arguments, one a line, to $RECORD."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
        f.write('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\necho "recorded $0"\n')
    os.chmod(path, 0o755)


def test_array_task_runs_exactly_its_run(spec, tmp_path, in_repo, launch_env):
    root = str(tmp_path / "slurm")
    runs = sweep.expand(spec, root)
    script = slurm.array_script(spec, root, len(runs), partition="gpu", account="acct", python=sys.executable)
    assert script.startswith("#!/bin/bash\n")
    for line in ["#SBATCH --array=0-2", "#SBATCH --partition=gpu", "#SBATCH --account=acct",
                 "#SBATCH --gpus-per-task=1", f"cd {in_repo}",
                 f"{sys.executable} -m launch.sweep {spec} --root {root} --worker $SLURM_ARRAY_TASK_ID "
                 f"--num-workers 3 --parallel 1"]:
        assert line in script.splitlines(), line
    path = tmp_path / "sweep.sbatch"
    path.write_text(script)
    done = subprocess.run(["bash", str(path)], env=dict(launch_env, SLURM_ARRAY_TASK_ID="2"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # task 2 is the failing run
    status, reason = RunDir(runs[2].path).status()
    assert status == "failed" and "has 3 devices; there are 1" in reason
    assert not os.path.exists(runs[0].path) and not os.path.exists(runs[1].path)
    multi_gpu = slurm.array_script(spec, root, 3, gpus_per_task=4)
    assert "#SBATCH --gpus-per-task=4" in multi_gpu and "--parallel 1 --gpus-per-run 4" in multi_gpu


def test_multinode_task_sruns_its_training_command(spec, tmp_path, in_repo, launch_env):
    root = str(tmp_path / "multi")
    runs = sweep.expand(spec, root)
    script = slurm.multinode_script(runs, root, nodes=2, gpus_per_node=4, setup="true")
    for line in ["#SBATCH --array=0-2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --gpus-per-node=4"]:
        assert line in script.splitlines(), line
    path = tmp_path / "multi.sbatch"
    path.write_text(script)
    _recorder(tmp_path / "bin", "srun")
    record = tmp_path / "srun-args"
    env = dict(launch_env, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", RECORD=str(record))

    def task(i):
        return subprocess.run(["bash", str(path)], env=dict(env, SLURM_ARRAY_TASK_ID=str(i)), capture_output=True,
                              text=True, timeout=60)

    assert task(1).returncode == 0
    assert record.read_text().splitlines() == ["--nodes=2", "--ntasks-per-node=1", "python"] + runs[1].command[1:]
    assert "recorded" in open(os.path.join(runs[1].path, "stdout.txt")).read()
    record.unlink()
    RunDir(runs[0].path).set_status("done")
    out = task(0)
    assert out.returncode == 0 and "is done" in out.stdout and not record.exists()  # done runs are skipped
    assert task(3).returncode == 2
    with pytest.raises(ValueError, match="--nodes-per-run"):
        slurm.multinode_script(runs, root, nodes=1)


def test_slurm_cli(spec, tmp_path, in_repo, capsys):
    root = str(tmp_path / "cli")
    assert slurm.main([spec, "--root", root, "--nodes-per-run", "2", "--time", "01:00:00"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in script and "#SBATCH --time=01:00:00" in script
    assert script.count("srun --nodes=2") == 1 and script.count(") RUN_DIR=") == 3
    assert os.path.isdir(root)  # SLURM writes the tasks' logs there


def test_tpu_commands(spec, tmp_path, launch_env):
    runs = sweep.expand(spec, str(tmp_path / "runs"))
    lines = tpu.commands(runs, name="pod", zone="us-central2-b", repo_url="https://example.org/lowprec.git",
                         branch="dev", create=True, accelerator="v4-32")
    assert len(lines) == 2 + len(runs)
    assert shlex.split(lines[0])[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod"]
    assert "--accelerator-type=v4-32" in lines[0]
    remote = []
    for line in lines[1:]:
        argv = shlex.split(line)
        assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in argv
        assert "--zone=us-central2-b" in argv
        remote.append(next(a for a in argv if a.startswith("--command="))[len("--command="):])
    assert "git clone --branch dev https://example.org/lowprec.git lowprec" in remote[0]
    assert remote[0].endswith("pip install -q -e .")

    # Each run's remote command, run here with a recording `python`: the run's training command,
    # or nothing once the run is done.
    (tmp_path / "lowprec").mkdir()
    _recorder(tmp_path / "bin", "python")
    record = tmp_path / "python-args"
    env = dict(launch_env, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", RECORD=str(record))
    subprocess.run(["bash", "-c", remote[2]], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
    assert record.read_text().splitlines() == runs[1].command[1:]
    record.unlink()
    RunDir(runs[1].path).set_status("done")
    out = subprocess.run(["bash", "-c", remote[2]], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True, timeout=60)
    assert "is done" in out.stdout and not record.exists()


def test_tpu_cli_prints_only(spec, tmp_path, capsys):
    assert tpu.main([spec, "--root", str(tmp_path / "r"), "--name", "pod", "--zone", "z", "--repo-url", "u",
                     "--only", "none"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# 1 runs") and len(out) == 3 and "recipe-none-" in out[2]
    assert not os.path.exists(tmp_path / "r")
