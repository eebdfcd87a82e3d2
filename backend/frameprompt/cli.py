"""The `frameprompt` command line: one sub-command per module in `frameprompt.commands`.

Each command module defines `add_arguments(parser)` and `run(args) -> int`, plus a one-line docstring
used as its help. Modules are imported only when their command runs, so `frameprompt keys` never
loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> one-line help; the module frameprompt.commands.<name> does the work.
COMMANDS: dict[str, str] = {
    "demo": "animate the embedded demo scene headless: Blender scene -> backend -> video + .blend",
    "generate": "animate a reference image with a folder of skeleton frames",
    "serve": "run the ZeroMQ backend server that Blender talks to",
    "keys": "generate CurveZMQ key pairs for a server and its clients",
    "submit": "send a job to a running frameprompt server and write its frames and video",
    "dataset": "render and validate training data sets",
    "finetune": "fine-tune a model on a data set (LoRA or full)",
    "evaluate": "measure SSIM, PSNR, LPIPS and FVD on a held-out split",
    "calibrate": "measure a model's MagCache ratios (for --cache mag) and store them with it",
}


def _available() -> dict[str, str]:
    found = {}
    for name, help_text in COMMANDS.items():
        if importlib.util.find_spec(f"frameprompt.commands.{name}") is not None:
            found[name] = help_text
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frameprompt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in _available().items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = _available()
    if argv and argv[0] in available:
        module = importlib.import_module(f"frameprompt.commands.{argv[0]}")
        parser = argparse.ArgumentParser(prog=f"frameprompt {argv[0]}", description=available[argv[0]])
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        try:
            return int(module.run(args) or 0)
        except KeyboardInterrupt:
            print("frameprompt: interrupted", file=sys.stderr)
            return 130
    build_parser().parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
