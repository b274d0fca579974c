"""`dynashape triton`: write a Triton model repository for an engine or an ONNX model.

``cli.py`` calls ``register(subparsers)``; the handler returns 0 once the repository is written
and raises DynashapeError for the user's mistakes (the one wrapper, ``dynashape.errors.run_guarded``,
prints it as one line, exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.markup import escape as esc

from dynashape.serving.repository import write_repository

_DESCRIPTION = (
    "Write a Triton Inference Server model repository: REPO/NAME/config.pbtxt and REPO/NAME/1/. "
    "--backend tensorrt (default for an engine): platform tensorrt_plan with the engine as model.plan; "
    "dims, batching and one instance group per profile layout from the engine's sidecar; the profile "
    "ranges and the valid-size lattice in the config's comments and parameters. --backend python "
    "(default for an ONNX model): dynashape's model.py runs the engine where TensorRT is, else the ONNX "
    "model with ONNX Runtime on CPU, and answers off-lattice shapes with the valid sizes. An ONNX model "
    "cannot be served by the TensorRT backend: build an engine first (`dynashape build`)."
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("triton", help="write a Triton model repository (config.pbtxt + model)",
                              description=_DESCRIPTION)
    p.add_argument("model", metavar="MODEL.engine|MODEL.onnx",
                   help="an engine from `dynashape build` (with its .json sidecar) or an ONNX model")
    p.add_argument("-o", "--output", required=True, metavar="REPO", help="the model repository directory")
    p.add_argument("--name", help="the model's name in the repository (default: the file name's stem)")
    p.add_argument("--backend", choices=("tensorrt", "python"),
                   help="tensorrt: Triton's TensorRT backend runs model.plan; python: dynashape's model.py "
                        "(default: tensorrt for an engine, python for an ONNX model)")
    p.add_argument("--max-batch", type=int, metavar="B",
                   help="Triton's max_batch_size (default: the largest batch every profile takes, 8 for an "
                        "ONNX model; 0 turns Triton batching off)")
    p.add_argument("--instances", type=int, default=1, metavar="K", help="instances per instance group (default 1)")
    p.add_argument("--triton-trt", metavar="VERSION",
                   help="the TensorRT version of the Triton that will serve it (e.g. 10.3.0, from its release "
                        "notes): an engine built with another is refused")
    p.add_argument("--triton-gpu", metavar="CC",
                   help="the compute capability of the Triton GPUs (e.g. 9.0): an engine built for another is refused")
    p.add_argument("--model", dest="source", metavar="MODEL.onnx",
                   help="the engine's source model, when the sidecar's path is stale: gives the lattice and the "
                        "Python backend's CPU fallback")
    p.add_argument("--no-lattice", action="store_true", help="do not scan the valid-size lattice")
    p.set_defaults(func=cmd_triton)


def cmd_triton(args: argparse.Namespace) -> int:
    repo = write_repository(
        args.model, args.output, name=args.name, backend=args.backend, max_batch=args.max_batch,
        instances=args.instances, triton_trt=args.triton_trt, triton_gpu=args.triton_gpu,
        onnx_path=args.source, lattice=not args.no_lattice,
    )
    console = Console(highlight=False, soft_wrap=True)
    cfg = repo.config
    kind = cfg.platform or f"{cfg.backend} backend"
    groups = ", ".join(
        f"{g.count}x {g.kind}" + (f" profiles {'/'.join(g.profiles)}" if g.profiles else "")
        for g in cfg.instance_groups
    )
    console.print(f"wrote {esc(str(repo.model_dir))} ({esc(kind)}, max_batch_size {cfg.max_batch_size}, "
                  f"instance groups: {esc(groups)})")
    for path in repo.files:
        console.print(f"  {esc(str(path))}")
    if repo.schema_checked:
        console.print("config.pbtxt parses as Triton's ModelConfig (tritonclient's model_config_pb2)")
    else:
        console.print("[yellow]config.pbtxt not checked against Triton's schema: pip install 'tritonclient[grpc]'[/]")
    for note in repo.notes:
        console.print(f"[yellow]note:[/] {esc(note)}")
    console.print(f"serve: tritonserver --model-repository {esc(str(repo.root.resolve()))} "
                  "(see the README, 'Serving with Triton')")
    return 0

