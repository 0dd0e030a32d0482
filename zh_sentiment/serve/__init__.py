"""zh-sentiment serve: the trained classifier over HTTP (Text Embeddings Inference's API) and a web page.

    zh-sentiment serve                          # the best model in models/ by validation accuracy
    zh-sentiment serve --model baseline --port 8080
    zh-sentiment serve --model-dir /path/to/models/finetuned --host 0.0.0.0

Then POST /predict, GET /health, /info, /metrics, /docs (the OpenAPI page), and the page at /.
"""

import argparse
import sys
from pathlib import Path

from zh_sentiment.params import Embed, check_value


def at_least(minimum: int):
    """An argparse type: a whole number >= minimum."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be at least {minimum}")
        return value

    return check


def as_embed(key: str):
    """An argparse type: checked as params.yaml's embed.<key> is."""

    def check(text: str) -> str:
        try:
            return check_value(Embed, key, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None

    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from zh_sentiment.inference import MODEL_NAMES
    from zh_sentiment.serve.app import Settings

    default = Settings()
    parser = argparse.ArgumentParser(prog="zh-sentiment serve", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model", choices=MODEL_NAMES, help="which model of --models-dir (default: the best by validation accuracy)"
    )
    which.add_argument("--model-dir", type=Path, help="a trained model folder, anywhere")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where --model looks (default: models)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=port, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--device", type=as_embed("device"), default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        type=as_embed("precision"),
        help="encoder precision: auto, fp32, bf16, fp16 or int8 (default: the one the model was trained with)",
    )
    limits = parser.add_argument_group("batching and limits")
    limits.add_argument(
        "--max-batch-tokens",
        type=at_least(1),
        default=default.max_batch_tokens,
        help=f"tokens scored together at most, across requests (default: {default.max_batch_tokens})",
    )
    limits.add_argument(
        "--batch-size",
        type=at_least(1),
        default=default.batch_size,
        help=f"texts per forward pass at most (default: {default.batch_size})",
    )
    limits.add_argument(
        "--max-inputs",
        type=at_least(1),
        default=default.max_inputs,
        help=f"texts per request at most; more get 413 (default: {default.max_inputs})",
    )
    limits.add_argument(
        "--max-input-chars",
        type=at_least(1),
        default=default.max_input_chars,
        help="characters read per text; longer ones are cut (or refused with truncate: false) before "
        f"tokenizing (default: {default.max_input_chars})",
    )
    limits.add_argument(
        "--max-body-bytes",
        type=at_least(1),
        default=default.max_body_bytes,
        help=f"request body size at most; larger get 413 (default: {default.max_body_bytes})",
    )
    limits.add_argument(
        "--max-concurrent-requests",
        type=at_least(1),
        default=default.max_concurrent_requests,
        help=f"/predict requests served at once; more get 429 (default: {default.max_concurrent_requests})",
    )
    limits.add_argument(
        "--no-auto-truncate",
        dest="auto_truncate",
        action="store_false",
        help="a request that leaves out truncate gets 413 for a text longer than the model reads, "
        "instead of having it cut with a warning",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=at_least(1),
        default=30,
        help="on SIGTERM/Ctrl-C, seconds to finish the requests in flight (default: 30)",
    )
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log each request")
    return parser.parse_args(argv)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 1 to 65535")
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # imported here: `zh-sentiment predict` need not load the web stack
    import uvicorn
    from transformers.utils import logging as transformers_logging

    from zh_sentiment.inference import choose_model, load_model
    from zh_sentiment.serve.app import Settings, create_app

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar is noise in a server's log
    if args.model_dir is not None:
        folder, reason = args.model_dir, "chosen with --model-dir"
    else:
        folder, reason = choose_model(models_dir=args.models_dir, name=args.model)
    classifier = load_model(folder, device=args.device, precision=args.precision)  # PipelineError: one line
    print(f"serve: model {folder} ({classifier.kind}): {reason}", file=sys.stderr)
    settings = Settings(
        max_batch_tokens=args.max_batch_tokens,
        batch_size=args.batch_size,
        max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars,
        max_body_bytes=args.max_body_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        auto_truncate=args.auto_truncate,
    )
    app = create_app(classifier, settings, reason)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.shutdown_timeout,
        log_level="info",
    )
