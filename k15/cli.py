"""``python -m k15 {fit,validate,test,predict} -c conf/X.yaml [-c overlay.yaml] [--key=value]``

A LightningCLI in which every component (policy, reference, reward, loss, engine, data,
callbacks, logger, strategy) is a ``class_path``/``init_args`` entry. ``${...}`` interpolation is
resolved after all ``-c`` files and overrides merge, with absolute keys (``${model.init_args.x}``).
"""

from __future__ import annotations

import os
import sys

# Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise). On a CPU shared
# by several processes (multi-process strategies, a test runner, a second job), spinning threads
# slowed the tiny model's matmuls 7–100x here. Only takes effect if torch is not yet loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import signal  # noqa: E402

from jsonargparse import set_parsing_settings  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from k15.errors import K15Error  # noqa: E402

# Lines of jsonargparse's messages that repeat the whole offending config, list the Union
# alternatives or say "a subclass failed" once per nesting level: they bury the line that names
# the key, which the remaining "Parser key … / Problem with given class_path …" chain leads to.
NOISE = (
    "Given value:",
    "Given value type:",
    "Subtypes:",
    "Expected a <class 'NoneType'>",
    "Does not validate against any of the Union subtypes",
    "Errors:",
)


def without_noise(message: str) -> str:
    return "\n".join(line for line in str(message).splitlines() if not line.strip().lstrip("- ").startswith(NOISE))


class K15ArgumentParser(LightningArgumentParser):
    """Config errors print one short message naming the key, not the usage of every Trainer flag."""

    def print_usage(self, file=None) -> None:
        (file or sys.stderr).write(f"usage: {self.prog} -c CONFIG.yaml [-c OVERLAY.yaml] [--key=value ...]\n")

    def error(self, message: str, ex: Exception | None = None):
        super().error(without_noise(message), ex)


class K15CLI(LightningCLI):
    def instantiate_classes(self) -> None:
        """A component that fails to build is a config error: one line naming it, no traceback
        (set K15_TRACEBACK=1 to see it)."""
        try:
            super().instantiate_classes()
        except Exception as error:
            if os.environ.get("K15_TRACEBACK"):
                raise
            lines = [line.strip() for line in without_noise(error).splitlines() if line.strip()]
            print(f"k15: error: {type(error).__name__}: {' '.join(lines)}", file=sys.stderr)
            raise SystemExit(2) from None


def main(args: list[str] | None = None) -> None:
    """Run the CLI. A ``K15Error`` met while running (bad data, a run that stopped itself: non-finite
    updates, a signal) ends it with one ``k15: error:`` line and the error's exit code."""
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    try:
        run(args)
    except K15Error as error:
        if os.environ.get("K15_TRACEBACK"):
            raise
        print(f"k15: error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except SIGTERMException:  # Lightning's own stop, for a SIGTERM that arrived before training began
        print("k15: error: stopped by SIGTERM before the first training step; nothing to save", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None


def run(args: list[str] | None, cli: type[K15CLI] = K15CLI, **kwargs) -> K15CLI:
    settings = dict(
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        parser_class=K15ArgumentParser,
        parser_kwargs={"parser_mode": "omegaconf+", "prog": "k15"},
        # a retried job (lightning_app.py) logs into the same version folder, resuming from its
        # last checkpoint; a fresh run gets a new version_N and never meets an old config.yaml
        save_config_kwargs={"overwrite": True},
    )
    try:
        return cli(LightningModule, LightningDataModule, args=args, **settings | kwargs)
    except OmegaConfBaseException as error:  # a bad ${...}: omegaconf's error comes through the parser as is
        key = str(error.full_key or "the config")
        key = key.split(".", 1)[1] if key.split(".")[0] in ("fit", "validate", "test", "predict") else key
        print(f"k15: error: {key}: {str(error).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None


class ParseOnly(K15CLI):
    def instantiate_classes(self) -> None:
        pass


def parsed_config(args: list[str]):
    """The config ``fit`` would run for ``args`` (``-c`` files and overrides, no subcommand): merged,
    interpolated, checked and filled with every class's defaults, nothing instantiated."""
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    argv, sys.argv = sys.argv, sys.argv[:1]  # ``args`` are the whole command line (Lightning warns of both)
    try:
        return run(args, ParseOnly, run=False, seed_everything_default=False).config
    finally:
        sys.argv = argv
