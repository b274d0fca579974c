"""Peak memory of each dynashape command on models of the zoos.

    python benchmarks/memory.py [--models a,b] [--commands check,fix,verify,doctor] [--limit-gb 6]
                                [--timeout 900] [--json PATH]

For every model: ``dynashape export`` writes it (random weights, seeded) at its zoo export shape with
dynamic batch, height and width; then each command runs as its own child process, the way a user
runs it:

* ``check MODEL.onnx``
* ``fix MODEL.onnx -o FIXED.onnx``
* ``verify MODEL.onnx --reference torch:FACTORY.py:build`` (PyTorch eager at every sweep shape)
* ``doctor FACTORY.py:build --input input:S0 --no-tensorrt`` (export, differential export, check, fix,
  verify against PyTorch, heat map)

How it is measured: the peak is the larger of two numbers. ``ru_maxrss`` of the rusage that
``os.wait4`` returns for the command (the kernel's exact high-water mark of one process: of the
command, or of a child it waited for, whichever is larger, in KiB on Linux), and the largest sum of
``VmRSS`` over the command's process group, sampled every 0.2 s (a parent and the child it waits
for, at once: ``doctor`` exports in a child process). The watchdog that samples also
kills a command that goes over ``--limit-gb`` (a command that would take the machine down is reported
as "> LIMIT"); ``--timeout`` ends a child that runs too long. Numbers are from one run, on whatever
else the machine is doing; each child runs under ``nice -n 10``.

The default models are quick ones of both zoos; the big ones (``swin_t``, ``vit_b_16``) take minutes
each: name them with ``--models``. Models: ``benchmarks/zoo.py`` (torchvision and hand-written) and
``benchmarks/zoo_thirdparty_models.py`` (transformers, ultralytics, segmentation_models_pytorch).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COMMANDS = ("check", "fix", "verify", "doctor")
DEFAULT_MODELS = ["demo", "resnet18", "swin_pad", "yolo_detect", "hf_segformer", "yolov8n", "smp_unet_resnet18"]
THIRDPARTY_S0 = (1, 3, 256, 256)  # as benchmarks/zoo_thirdparty.py exports them

_FACTORY = '''\
import sys

sys.path.insert(0, {bench!r})


def build():
    from dynashape.testing import import_torchvision

    import_torchvision()  # before ultralytics / smp import it
    {body}
'''


@dataclass(frozen=True)
class Run:
    model: str
    command: str
    rc: int | None  # None: killed by the watchdog or the timeout
    peak_mib: float
    seconds: float
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "command": self.command, "rc": self.rc, "peak_mib": round(self.peak_mib, 1),
                "seconds": round(self.seconds, 1), "note": self.note}


def model_source(name: str) -> tuple[str, tuple[int, ...]]:
    """(the factory's body, the export shape) of a zoo model."""
    sys.path.insert(0, str(HERE))
    import zoo

    if name in zoo.BY_NAME:
        return f"import zoo\n    return zoo.BY_NAME[{name!r}].build()", tuple(zoo.BY_NAME[name].s0)
    import zoo_thirdparty_models

    if name in zoo_thirdparty_models.all_builders():
        return (f"import zoo_thirdparty_models\n    return zoo_thirdparty_models.all_builders()[{name!r}][1]()",
                THIRDPARTY_S0)
    known = sorted([*zoo.BY_NAME, *zoo_thirdparty_models.all_builders()])
    raise SystemExit(f"unknown model {name!r}; known: {', '.join(known)}")


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _group_rss_kib(pgid: int) -> int:
    """The summed VmRSS of every process in the process group (the command and its children)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += _rss_kib(int(entry))
    return total


def run_child(cmd: list[str], limit_kib: int, timeout: float, log_path: Path) -> tuple[int | None, int, float, str]:
    """(exit status or None when killed, peak RSS in KiB, seconds, why it was killed)."""
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    killed: list[str] = []
    done = threading.Event()
    tree_peak = [0]

    def watch() -> None:
        while not done.wait(0.2):
            rss = _group_rss_kib(proc.pid)
            tree_peak[0] = max(tree_peak[0], rss)
            if rss > limit_kib:
                killed.append(f"killed at {rss / 2**20:.1f} GiB RSS (over --limit-gb)")
            elif time.perf_counter() - start > timeout:
                killed.append(f"killed after {timeout:.0f} s (--timeout)")
            else:
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    done.set()
    watcher.join()
    seconds = time.perf_counter() - start
    # ru_maxrss is exact but per process (a child's peak counts, not added to its parent's); the
    # sampled sum over the process group sees a parent and its child at once
    peak = max(usage.ru_maxrss, tree_peak[0], limit_kib + 1 if killed else 0)
    return (None if killed else proc.returncode), peak, seconds, killed[0] if killed else ""


def measure(names: list[str], commands: list[str], limit_gb: float, timeout: float, work: Path) -> list[Run]:
    exe = str(Path(sys.executable).with_name("dynashape"))
    limit_kib = int(limit_gb * 2**20)
    runs: list[Run] = []
    for name in names:
        body, s0 = model_source(name)
        factory = work / f"{name}_factory.py"
        factory.write_text(_FACTORY.format(bench=str(HERE), body=body))
        spec = f"{factory}:build"
        onnx_path = work / f"{name}.onnx"
        shape = "input:" + "x".join(map(str, s0))
        rc, peak, secs, note = run_child([exe, "export", spec, "--input", shape, "-o", str(onnx_path)],
                                         limit_kib, timeout, work / f"{name}.export.log")
        runs.append(Run(name, "export", rc, peak / 1024, secs, note))
        if rc != 0:
            print(f"{name}: export failed (see {work / f'{name}.export.log'})", file=sys.stderr)
            continue
        argv = {
            "check": ["check", str(onnx_path)],
            "fix": ["fix", str(onnx_path), "-o", str(work / f"{name}.fixed.onnx")],
            "verify": ["verify", str(onnx_path), "--reference", f"torch:{spec}"],
            "doctor": ["doctor", spec, "--input", shape, "--no-tensorrt", "--out-dir", str(work / f"{name}.doctor")],
        }
        for command in commands:
            rc, peak, secs, note = run_child([exe, *argv[command]], limit_kib, timeout,
                                             work / f"{name}.{command}.log")
            runs.append(Run(name, command, rc, peak / 1024, secs, note))
            print(f"{name:24s} {command:7s} peak {peak / 1024:8.0f} MiB  {secs:6.1f} s  rc {rc}  {note}",
                  file=sys.stderr, flush=True)
    return runs


def table(runs: list[Run], commands: list[str], limit_gb: float) -> str:
    cols = ["export", *commands]
    lines = [f"{'model':24s}" + "".join(f"{c:>14s}" for c in cols)]
    by = {(r.model, r.command): r for r in runs}
    for model in dict.fromkeys(r.model for r in runs):
        cells = []
        for c in cols:
            r = by.get((model, c))
            if r is None:
                cells.append(f"{'-':>14s}")
            elif r.rc is None:
                cells.append(f"{f'> {limit_gb:g} GiB' if 'RSS' in r.note else 'timeout':>14s}")
            else:
                cells.append(f"{r.peak_mib:>10.0f} MiB")
        lines.append(f"{model:24s}" + "".join(cells))
    worst = max((r.peak_mib for r in runs), default=0.0)
    lines.append(f"largest peak: {worst:.0f} MiB")
    lines.append("peak RSS of each command: the larger of ru_maxrss from os.wait4 (the kernel's high-water mark "
                 "of one process) and the summed RSS of its process group sampled every 0.2 s; one run each, "
                 f"under nice -n 10; a command over {limit_gb:g} GiB (summed) was killed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo model names")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated, from " + ", ".join(COMMANDS))
    parser.add_argument("--limit-gb", type=float, default=6.0, help="kill a child over this RSS (GiB)")
    parser.add_argument("--timeout", type=float, default=900.0, help="kill a child after this many seconds")
    parser.add_argument("--keep", metavar="DIR", help="write the models and logs here (default: a temp dir)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    commands = [c for c in args.commands.split(",") if c]
    unknown = set(commands) - set(COMMANDS)
    if unknown:
        parser.error(f"unknown command(s) {', '.join(sorted(unknown))}; choose from {', '.join(COMMANDS)}")
    names = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="dynashape-memory-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = measure(names, commands, args.limit_gb, args.timeout, work)
    print(table(runs, commands, args.limit_gb))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_json() for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
