"""`ganlab <verb> [hydra overrides...]`: verb dispatch in front of one `@hydra.main` shim.

The verb becomes `--config-name=<verb>`, so everything after it is plain Hydra: `-m` sweeps, `--help`,
`--cfg job`, `--info`, `+experiment=...`. An argv that already names a config (`-cn`/`--config-name`, as
Lightning's DDP launcher re-invokes the script for each rank) passes through untouched.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from ganlab import __version__
from ganlab.errors import GanlabError, os_error

VERBS = {
    "train": "train a model: ganlab train +experiment=gan_gaussian trainer.max_steps=2000",
    "sample": "sample a trained run: ganlab sample run=latest n=64 (or interpolate=true)",
    "explain": "attribution maps of a trained run: ganlab explain run=latest method=all targets=[3,5]",
    "runs": "list runs to compare a sweep: ganlab runs [PATH] sort=val/w1 (name='gan_*', format=csv|md)",
}

USAGE = f"""usage: ganlab <verb> [hydra overrides...]

ganlab {__version__}: GAN and interpretability experiments on Hydra + PyTorch Lightning.

verbs:
{chr(10).join(f"  {verb:<8} {text}" for verb, text in VERBS.items())}

Each verb is a Hydra app: `ganlab train --help` lists its config groups, `ganlab train --cfg job`
prints the composed config, `ganlab train -m key=a,b` sweeps.
"""

_CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path")


def _names_a_config(argv: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in _CONFIG_FLAGS for arg in argv)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if _names_a_config(args):
        _run_hydra_app(_config_name(args))
        return
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"ganlab {__version__}")
        return
    verb = args[0]
    if verb not in VERBS:
        sys.exit(f"ganlab: unknown verb {verb!r}; expected one of: {', '.join(VERBS)}\n\n{USAGE}")
    rest = _path_argument(args[1:]) if verb == "runs" else args[1:]
    sys.argv = [sys.argv[0], f"--config-name={verb}", *rest]
    _run_hydra_app(verb)


# Hydra's flags that take the next argument as their value (`--cfg job`, `--info defaults`).
_VALUE_FLAGS = ("-c", "--cfg", "-p", "--package", "--info", "-cd", "--config-dir", "--experimental-rerun")


def _path_argument(args: list[str]) -> list[str]:
    """`ganlab runs PATH ...`: a bare PATH (no '=', not a flag or a flag's value) becomes the override
    `path='PATH'`, quoted so that Hydra takes any path literally (commas, spaces, quotes, `${`)."""
    out, paths = [], []
    for i, arg in enumerate(args):
        if "=" in arg or arg.startswith("-") or (i and args[i - 1] in _VALUE_FLAGS):
            out.append(arg)
            continue
        text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, arg)  # backslashes before a quote or the end
        paths.append(arg)
        out.append("path='" + text.replace("'", "\\'").replace("${", "\\${") + "'")
    if len(paths) > 1:
        sys.exit(f"ganlab runs: error: {len(paths)} paths given ({', '.join(paths)}); expected one folder of runs")
    return out


def _config_name(argv: list[str]) -> str:
    """The verb of an argv that names its config (`--config-name=train`, `-cn train`), for error lines."""
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in ("-cn", "--config-name"):
            return value or (argv[i + 1] if i + 1 < len(argv) else "")
    return ""


def _user_error(err: BaseException) -> GanlabError | None:
    """The GanlabError behind `err`, if any (Hydra wraps errors raised in constructors it instantiates), or a
    file-system refusal (read-only, disk full, permission denied: errors.os_error) made into one."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, GanlabError):
            return err
        refused = os_error(err)
        if refused is not None:
            return refused
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _run_hydra_app(verb: str) -> None:
    """`_hydra_app()`, where Hydra's own steps around the task (writing the run dir's .hydra/ and train.log,
    which a full or read-only disk refuses) end with the task's one-line error instead of Hydra's traceback.

    Hydra reports those through `hydra._internal.utils.run_and_report`, which prints a traceback and exits;
    while the app runs, each function it reports on is wrapped so that a user error (`_user_error`) exits
    first with one line. Without that private function (another Hydra version) nothing is wrapped."""
    import hydra._internal.utils as hydra_utils

    report = getattr(hydra_utils, "run_and_report", None)
    if report is None:
        _hydra_app()
        return

    def run_and_report(func: Any) -> Any:
        def one_line_errors() -> Any:
            try:
                return func()
            except Exception as err:
                user_error = _user_error(err)
                if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                sys.exit(f"ganlab{' ' + verb if verb else ''}: error: {user_error}")

        return report(one_line_errors)

    hydra_utils.run_and_report = run_and_report
    try:
        _hydra_app()
    finally:
        hydra_utils.run_and_report = report


@hydra.main(config_path="configs", config_name=None, version_base="1.3")
def _hydra_app(cfg: DictConfig) -> object:
    verb = cfg.task_name
    task = getattr(importlib.import_module(f"ganlab.tasks.{verb}"), verb)
    try:
        return task(cfg)
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"ganlab {verb}: error: {user_error}")
