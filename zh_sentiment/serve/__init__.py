"""zh-sentiment serve: the trained classifier over HTTP (Text Embeddings Inference's API) and a web page.

    zh-sentiment serve                          # the best model in models/ by validation accuracy
    zh-sentiment serve --model baseline --port 8080
    ZH_SENTIMENT_API_KEY=... zh-sentiment serve --model-dir /path/to/models/finetuned --host 0.0.0.0

Then POST /predict, POST /explain, GET /health, /info, /metrics, /docs (the OpenAPI page), and the page at /.
"""

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from zh_sentiment.params import Embed, check_value

API_KEY_VARIABLE = "ZH_SENTIMENT_API_KEY"
READ_TIMEOUT = 30  # seconds for a request's head and body to arrive


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


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def api_key(text: str) -> str:
    """An argparse type: a key that can travel in an Authorization header."""
    if not text:  # e.g. `export ZH_SENTIMENT_API_KEY=$(cat a-missing-file)`: never a server open by mistake
        raise argparse.ArgumentTypeError("the key is empty: give the key, or unset the variable to serve without one")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError("the key must be printable ASCII with no spaces (it travels in a header)")
    return text


def origins(text: str) -> list[str]:
    """An argparse type: comma-separated web origins (scheme://host[:port]), or *."""
    found = [origin.strip() for origin in text.split(",") if origin.strip()]
    if not found:
        raise argparse.ArgumentTypeError("give an origin, e.g. https://app.example.com")
    for origin in found:
        parts = urlsplit(origin)
        if origin != "*" and "*" in origin:  # CORS matches whole origins: a wildcard inside one never matches
            raise argparse.ArgumentTypeError(f"{origin!r}: no wildcards inside an origin; list each origin, or give *")
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
            raise argparse.ArgumentTypeError(
                f"{origin!r}: an origin is scheme://host[:port] with nothing after it, e.g. https://app.example.com"
            )
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from zh_sentiment.inference import MODEL_NAMES
    from zh_sentiment.runtime import RUNTIMES
    from zh_sentiment.serve.app import Settings
    from zh_sentiment.serve.connections import FILES_RESERVED, MAX_CONNECTIONS

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
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="torch, onnx, onnx-int8 (zh-sentiment export), or auto: the fastest the folder has on this machine",
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
    explain = parser.add_argument_group("explanations (POST /explain, docs/explain.md)")
    explain.add_argument(
        "--max-explain-inputs",
        type=at_least(1),
        default=default.max_explain_inputs,
        help=f"texts per /explain request at most; more get 413 (default: {default.max_explain_inputs})",
    )
    explain.add_argument(
        "--explain-steps",
        type=at_least(1),
        default=default.explain_steps,
        help="integrated-gradient steps when a request does not say (BERT models; 32 steps cost about 12 "
        f"predictions) (default: {default.explain_steps})",
    )
    explain.add_argument(
        "--max-explain-steps",
        type=at_least(1),
        default=default.max_explain_steps,
        help=f"the most steps a request may ask for; more get 422 (default: {default.max_explain_steps})",
    )
    explain.add_argument(
        "--max-concurrent-explains",
        type=at_least(1),
        default=default.max_concurrent_explains,
        help="/explain requests computed at once, each in a thread beside /predict's; more get 429 "
        f"(default: {default.max_concurrent_explains})",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=at_least(1),
        default=30,
        help="on SIGTERM/Ctrl-C, seconds to finish the requests in flight (default: 30)",
    )
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log each request")
    access = parser.add_argument_group("access (README: Serve it, Deploy it)")
    access.add_argument(
        "--api-key",
        type=api_key,
        help="require the header Authorization: Bearer KEY on every endpoint but /health and the page's files "
        f"(default: the environment variable {API_KEY_VARIABLE}, which keeps the key out of `ps`)",
    )
    access.add_argument(
        "--cors-allow-origin",
        type=origins,
        action="extend",
        default=[],
        metavar="ORIGIN",
        help="a web page's origin (https://host[:port]) allowed to call the API from a browser; repeat or "
        "separate with commas; * for any (default: none, only the server's own page)",
    )
    connections = parser.add_argument_group("connections")
    connections.add_argument(
        "--read-timeout",
        type=positive_seconds,
        default=READ_TIMEOUT,
        help="seconds for a request's head and body to arrive from its first byte; a slower one gets 408 and "
        f"its connection closed (default: {READ_TIMEOUT})",
    )
    connections.add_argument(
        "--max-connections",
        type=at_least(1),
        help="open connections at most; a new one past it closes the one that has waited longest for its "
        f"request (default: the open-file limit, raised to its hard limit, less {FILES_RESERVED} or half of it, "
        f"at most {MAX_CONNECTIONS})",
    )
    args = parser.parse_args(argv)
    if args.explain_steps > args.max_explain_steps:
        parser.error(f"--explain-steps {args.explain_steps} is more than --max-explain-steps {args.max_explain_steps}")
    if args.api_key is None and API_KEY_VARIABLE in os.environ:
        try:
            args.api_key = api_key(os.environ[API_KEY_VARIABLE])
        except argparse.ArgumentTypeError as err:
            parser.error(f"{API_KEY_VARIABLE}: {err}")
    return args


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 1 to 65535")
    return value


def exposure_warning(host: str, key: str | None) -> str | None:
    """The warning to print when the server can be reached from other machines with no key, else None."""
    from zh_sentiment.serve.gate import is_loopback_address

    if key or is_loopback_address(host):
        return None
    return (
        f"serve: warning: listening on {host}, beyond this machine, with no API key: anyone who can reach "
        f"it can use it. Set {API_KEY_VARIABLE} (or --api-key), and serve it behind a reverse proxy with TLS "
        "(README: Deploy it)"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # imported here: `zh-sentiment predict` need not load the web stack
    import uvicorn
    from transformers.utils import logging as transformers_logging

    from zh_sentiment.inference import choose_model, load_model
    from zh_sentiment.serve.app import Settings, create_app
    from zh_sentiment.serve.connections import (
        BACKLOG,
        ConnectionLimits,
        default_max_connections,
        protocol_class,
        raise_file_limit,
    )
    from zh_sentiment.serve.gate import is_loopback_address
    from zh_sentiment.serve.logs import log_config

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar is noise in a server's log
    if args.model_dir is not None:
        folder, reason = args.model_dir, "chosen with --model-dir"
    else:
        folder, reason = choose_model(models_dir=args.models_dir, name=args.model)
    classifier = load_model(folder, device=args.device, precision=args.precision, runtime=args.runtime)
    print(f"serve: model {folder} ({classifier.kind}): {reason}", file=sys.stderr)
    print(f"serve: runtime {classifier.runtime}: {classifier.runtime_reason}", file=sys.stderr)
    settings = Settings(
        max_batch_tokens=args.max_batch_tokens,
        batch_size=args.batch_size,
        max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars,
        max_body_bytes=args.max_body_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        auto_truncate=args.auto_truncate,
        api_key=args.api_key,
        cors_allow_origins=tuple(args.cors_allow_origin),
        loopback_hosts_only=is_loopback_address(args.host),
        max_explain_inputs=args.max_explain_inputs,
        explain_steps=args.explain_steps,
        max_explain_steps=args.max_explain_steps,
        max_concurrent_explains=args.max_concurrent_explains,
    )
    if (warning := exposure_warning(args.host, args.api_key)) is not None:
        print(warning, file=sys.stderr)
    file_limit = raise_file_limit()
    limits = ConnectionLimits(args.read_timeout, args.max_connections or default_max_connections(file_limit))
    app = create_app(classifier, settings, reason)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=protocol_class(limits),
        backlog=BACKLOG,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.shutdown_timeout,
        log_config=log_config(),
        log_level="info",
    )
    uvicorn.Server(config).run()
