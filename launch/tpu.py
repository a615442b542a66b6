"""The gcloud commands that run a sweep on a TPU VM pod (printed, never executed).

    python -m launch.tpu configs/precision.py --root /mnt/runs/precision --name my-pod \\
        --zone us-central2-b --repo-url https://github.com/<you>/lowprec --accelerator v4-32 [--create]

Every worker of the pod runs the same run at the same time (``--worker=all``): JAX initializes
``jax.distributed`` from the pod's metadata (``lowprec.train.distributed``) and the run's mesh
spans all chips. So the workers start the training command itself, one run after another, not
the claiming runner (whose claims would hand a run to one worker only). The root must be storage
every worker sees (e.g. a mounted bucket or filestore); runs whose STATUS is done are skipped,
so printing and running the commands again resumes the sweep.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from launch import sweep

REPO_DIR = "lowprec"  # where the repository is cloned in each worker's home


def install_command(repo_url: str, branch: str) -> str:
    """Clones (or updates) the repository on a worker and installs it with JAX for TPU."""
    return (f"(test -d {REPO_DIR} || git clone --branch {shlex.quote(branch)} {shlex.quote(repo_url)} {REPO_DIR})"
            f" && cd {REPO_DIR} && git fetch origin {shlex.quote(branch)} && git checkout -q FETCH_HEAD"
            f" && pip install -q 'jax[tpu]' && pip install -q -e .")


def run_command(run) -> str:
    """One run on a worker: its training command unless its STATUS says done."""
    status = shlex.quote(f"{run.path}/STATUS")
    train = shlex.join(["python"] + run.command[1:])
    return (f"cd {REPO_DIR} && if head -n1 {status} 2>/dev/null | grep -qx done; "
            f"then echo {shlex.quote(run.id + ' is done')}; else {train}; fi")


def commands(runs, *, name: str, zone: str, repo_url: str, branch: str = "main", accelerator: str = "v4-8",
             version: str = "tpu-ubuntu2204-base", create: bool = False, project: str | None = None) -> list[str]:
    """The shell lines: create the TPU VM (optional), install on every worker, then each run."""
    where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
    out = []
    if create:
        out.append(shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "create", name, *where,
                               f"--accelerator-type={accelerator}", f"--version={version}"]))

    def ssh(command: str) -> str:
        return shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all",
                           f"--command={command}"])

    out.append(ssh(install_command(repo_url, branch)))
    out += [ssh(run_command(run)) for run in runs]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="configs/<file>.py[:<arg>]")
    p.add_argument("--root", required=True, help="the sweep's directory, on storage every worker sees")
    p.add_argument("--name", required=True, help="the TPU VM's name")
    p.add_argument("--zone", required=True)
    p.add_argument("--repo-url", required=True, help="where the workers clone the repository from")
    p.add_argument("--branch", default="main")
    p.add_argument("--accelerator", default="v4-8", help="with --create: the TPU type, e.g. v4-32")
    p.add_argument("--version", default="tpu-ubuntu2204-base", help="with --create: the TPU VM image")
    p.add_argument("--project")
    p.add_argument("--create", action="store_true", help="also print the command that creates the TPU VM")
    p.add_argument("--only", default=None, help="regex: only runs whose id matches")
    args = p.parse_args(argv)
    runs = sweep.select(sweep.expand(args.spec, args.root), args.only, None, 0, 1)
    print(f"# {len(runs)} runs of {args.spec}; each line runs on every worker of {args.name}")
    for line in commands(runs, name=args.name, zone=args.zone, repo_url=args.repo_url, branch=args.branch,
                         accelerator=args.accelerator, version=args.version, create=args.create,
                         project=args.project):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
