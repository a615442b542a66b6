"""The gcloud commands that run a sweep on a TPU VM pod (printed, never executed).

    python -m launch.tpu configs/precision.py --root runs/precision --name my-pod --zone us-central2-b \\
        --repo-url https://github.com/<you>/lowprec --accelerator v4-32 [--create]

Every worker of the pod runs the same run at the same time (``--worker=all``): JAX on TPU
initializes ``jax.distributed`` from the pod's metadata, and the run's mesh spans all chips.
The root should be on storage that all workers and later re-runs see (e.g. a mounted bucket);
runs whose STATUS is done are skipped by ``launch.sweep``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from launch import sweep


def commands(spec: str, root: str, run_ids: list[str], *, name: str, zone: str, repo_url: str,
             branch: str = "main", accelerator: str = "v4-8", version: str = "tpu-ubuntu2204-base",
             create: bool = False, project: str | None = None) -> list[str]:
    where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
    out = []
    if create:
        out.append(shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "create", name, *where,
                               f"--accelerator-type={accelerator}", f"--version={version}"]))

    def ssh(command: str) -> str:
        return shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all",
                           f"--command={command}"])

    install = (f"(test -d lowprec || git clone --branch {shlex.quote(branch)} {shlex.quote(repo_url)} lowprec) && "
               f"cd lowprec && git pull --ff-only && pip install -U 'jax[tpu]' && pip install -e .")
    out.append(ssh(install))
    for run_id in run_ids:
        out.append(ssh(f"cd lowprec && python -m launch.sweep {shlex.quote(spec)} --root {shlex.quote(root)} "
                       f"--parallel 1 --only {shlex.quote('^' + run_id + '$')}"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__.splitlines()[0])
    p.add_argument("spec")
    p.add_argument("--root", required=True)
    p.add_argument("--name", required=True, help="the TPU VM's name")
    p.add_argument("--zone", required=True)
    p.add_argument("--repo-url", required=True)
    p.add_argument("--branch", default="main")
    p.add_argument("--accelerator", default="v4-8")
    p.add_argument("--version", default="tpu-ubuntu2204-base")
    p.add_argument("--project")
    p.add_argument("--create", action="store_true", help="also print the command that creates the TPU VM")
    args = p.parse_args(argv)
    runs = sweep.expand(args.spec, args.root)
    for line in commands(args.spec, args.root, [r.id for r in runs], name=args.name, zone=args.zone,
                         repo_url=args.repo_url, branch=args.branch, accelerator=args.accelerator,
                         version=args.version, create=args.create, project=args.project):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
