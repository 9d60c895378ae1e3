"""``gradus`` command line: the only place argv is read.

Each subcommand lives in ``gradus.commands.<name>`` and is imported only when used. Errors meant for
people (:class:`gradus.errors.GradusError`) print as ``gradus: error: ...`` with a non-zero exit code
and no traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
import traceback

from gradus import __version__
from gradus.errors import GradusError

COMMANDS = {
    "train": ("train", "train a model through a staged curriculum"),
    "schedule": ("schedule", "print the stage table of a curriculum"),
    "data": ("data", "test the data stream: sources, mix, shapes, stage transitions"),
    "plan": ("plan", "compute-optimal worksheet and per-stage timeline"),
    "lr-find": ("lr_find", "LR range test per sequence length"),
    "tokenizer": ("tokenizer", "train a byte-level BPE tokenizer on configured sources"),
    "export": ("export", "write a run's model as a Hugging Face (Llama) directory"),
    "generate": ("generate", "sample text from a run, checkpoint or exported model"),
    "eval": ("eval", "loss, perplexity and accuracy of a model on any source"),
    "report": ("report", "PNG plots and one HTML page describing a run"),
    "sweep": ("sweep", "run arms that vary config values (or a named ablation) and compare their curves"),
    "compare": ("compare", "the curriculum against a no-curriculum baseline: speedup in tokens and wall-clock"),
}


SILENT_EXIT_DELAY_S = 3.0
"""How long a process whose error another process reports waits before exiting (see :func:`main`)."""


RESUMED_BY_RERUN = frozenset({"train", "compare", "sweep"})
"""Commands that continue where they stopped when run again (checkpoints, finished runs read back)."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every subcommand included."""
    parser = argparse.ArgumentParser(prog="gradus", description="Curriculum pretraining for GPT-style models.")
    parser.add_argument("--version", action="version", version=f"gradus {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        importlib.import_module(f"gradus.commands.{module}").add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradus`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    # The commands whose work a rerun continues say so when stopped (issue 31: an interrupted compare printed
    # only "interrupted"); the others have nothing to continue. The handler goes in before anything else: the
    # parser imports every command (about a second on a loaded machine), and a SIGTERM in that second used to
    # end the process silently (rc 143). The command is the first word that is not an option (the global
    # options, --debug and --version, take no value).
    command = next((a for a in argv if not a.startswith("-")), None)
    hint = "; to continue, run the same command again" if command in RESUMED_BY_RERUN else ""
    previous = _sigterm_interrupts(hint)
    args = None
    try:
        parser = build_parser()
        if not argv:  # `gradus` alone shows what it can do; `gradus train` is the demo
            parser.print_help()
            return 0
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        module = importlib.import_module(f"gradus.commands.{args._module}")
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a reader gone (`gradus schedule | head`) shows here, in the handler below
        return code
    except BrokenPipeError:
        # Like any Unix filter whose reader left: stop quietly (no traceback), exit 128 + SIGPIPE. Point
        # stdout at /dev/null so the interpreter's last flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except GradusError as err:
        if getattr(args, "debug", False):
            raise
        if not err.silent:
            for line in err.problems:
                print(f"gradus: error: {line}", file=sys.stderr)
        else:
            # Another process of this torchrun launch says it. torchrun stops every worker as soon as one
            # exits with an error, so the quiet ones leave last: otherwise the one that speaks could be
            # killed before it prints (seen in loaded test runs).
            time.sleep(SILENT_EXIT_DELAY_S)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"gradus: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_interrupts(hint: str = ""):
    """Make SIGTERM stop a command with one line and exit 130 (as Ctrl-C) instead of killing it silently (rc
    -15), in its set-up or any command without a handler of its own (the training loop and the experiment
    runner install theirs, which checkpoint and stop runs cleanly); returns the previous handler (None off the
    main thread). The process leaves at once rather than raising where the signal landed: an exception thrown
    into arbitrary set-up code (a tokenizer training in native threads, a data thread starting) could leave the
    process waiting on a thread instead of exiting (seen once in a loaded CI run). The lock on a run directory
    is a file lock, released by the kernel with the process. ``hint`` ends the line (how to continue)."""
    def handler(signum, frame):
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
        os.write(2, f"gradus: interrupted by SIGTERM{hint}\n".encode())
        os._exit(130)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def entry() -> None:
    """The ``gradus`` console script and ``python -m gradus.cli``: :func:`main`, then exit with its code.

    A process that joined a process group (a torchrun worker) leaves with ``os._exit`` once stdout and
    stderr are flushed, skipping the interpreter's finalisation. Why: gloo's worker threads run until their
    group is destroyed, and the one that drops the last reference to a finished collective frees its tensors,
    which takes the GIL. If that happens while the interpreter finalises, Python ends the thread with
    ``pthread_exit``, whose unwinding through a C++ destructor aborts the process ("terminate called without
    an active exception", exit -6) after the run has finished and written everything (core dump, 2026-12-01:
    ``ProcessGroupGloo::runLoop`` → ``~AsyncBarrierWork`` → ``~AsyncAllgatherWork`` → ``decref_pyobject`` →
    ``take_gil`` → ``pthread_exit``; in 6 of about 20 two-process test runs on a heavily loaded machine, none
    in 180 launches on an idle one). Under DDP the group is now destroyed and its threads joined when
    :func:`gradus.train.train` returns (:meth:`gradus.train.trainer.Trainer.close`, tested); under FSDP2 torch
    still holds the group, so its threads outlive it and this exit is what keeps them from aborting the
    process. Every file gradus writes is closed before :func:`main` returns (metrics, trackers, checkpoints,
    the data workers), so skipping finalisation loses nothing. An unexpected exception leaves the same way (its
    traceback printed, exit 1). A single process exits the ordinary way."""
    try:
        code = main()
    except BaseException as exc:  # an unexpected failure: in a joined process it must not finalise either
        if not _joined():
            raise
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            traceback.print_exc()
            code = 1
    if _joined():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader gone or a stream closed: nothing left to say
                pass
        os._exit(code)
    sys.exit(code)


def _joined() -> bool:
    """Whether this process joined a process group (:func:`gradus.train.runtime.joined_process_group`)."""
    runtime = sys.modules.get("gradus.train.runtime")  # not imported (no torch) unless a command trained
    return runtime is not None and runtime.joined_process_group()


if __name__ == "__main__":
    entry()
