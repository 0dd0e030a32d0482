"""The `zh-sentiment` command (also `python -m zh_sentiment`): the project's tools for people, not for DVC."""

import importlib
import sys

from zh_sentiment.errors import run

# imported when called: `predict` need not load the web stack, nor `serve` the S3 client
COMMANDS = {
    "predict": "zh_sentiment.predict",
    "serve": "zh_sentiment.serve",
    "export": "zh_sentiment.onnx_export",
    "remote-check": "zh_sentiment.remote",
    "torchrun": "zh_sentiment.torchrun",  # torchrun, a failed run said in one line (README, Across nodes)
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: zh-sentiment {{{','.join(COMMANDS)}}} ...  (zh-sentiment predict --help for its options)")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, args = importlib.import_module(COMMANDS[argv[0]]).main, argv[1:]
    run(lambda: command(args))
