"""``python -m k15`` and the ``k15`` command: ``plan`` is the memory plan (``k15/plan.py``, which
reads configs with the CLI's parser); every other subcommand is the LightningCLI (``k15/cli.py``)."""

import sys


def main() -> None:
    if sys.argv[1:2] == ["plan"]:
        from k15.plan import main as plan

        raise SystemExit(plan(sys.argv[2:]))
    from k15.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
