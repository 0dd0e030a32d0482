"""The `zh-sentiment` command (also `python -m zh_sentiment`): the project's tools for people, not for DVC."""

import sys

from zh_sentiment import predict, remote, serve
from zh_sentiment.errors import run

COMMANDS = {"predict": predict.main, "serve": serve.main, "remote-check": remote.main}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: zh-sentiment {{{','.join(COMMANDS)}}} ...  (zh-sentiment predict --help for its options)")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, args = COMMANDS[argv[0]], argv[1:]
    run(lambda: command(args))
