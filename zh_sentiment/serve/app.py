"""The HTTP API: TEI's POST /predict, /health, /info, Prometheus /metrics, the OpenAPI docs and the page.

POST /predict takes Text Embeddings Inference's request, {"inputs": "text"} or
{"inputs": ["text", ...]} (or TEI's batch form [["text"], ...]) with optional "truncate",
"truncation_direction" and "raw_scores", and answers as TEI does: per input, every label with
its score, highest first ([{"label", "score"}] for one text, a list of those for a list).
A request with "parameters" ({"top_k", "function_to_apply"}) is the Hugging Face Inference API's
text-classification request, the one huggingface_hub's InferenceClient sends: it is answered in
that API's shape, a list per input even for one text, so the client's parsing works unchanged.
Warnings about an input (empty, truncated, unknown tokens) ride on each of its predictions as
"warnings": [{"code", "message"}]; an input without any has no such field (TEI's exact shape).
Errors are TEI's {"error": message, "error_type": kind}, those of parsing the request and Starlette's
own (404, 405) included.

POST /explain takes the same request (and "steps") and answers, per input, the predicted label and its
score with the characters' contributions toward it, [{"start", "end", "text", "score"}] (zh_sentiment/explain.py).
It has its own limits: inputs per request, steps, and explanations at once (one thread each, apart from
/predict's batcher), so that it cannot starve /predict; a client that goes away stops its explanation.
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.explain import Cancelled, explainer_for, incomplete_note
from zh_sentiment.inference import Classifier, Note
from zh_sentiment.serve.batching import Batcher
from zh_sentiment.serve.gate import Gate
from zh_sentiment.serve.metrics import Metrics
from zh_sentiment.text import normalize_text

PAGE_DIR = Path(__file__).parent / "page"
VERSION = "0.2.0"


@dataclass(frozen=True)
class Settings:
    max_batch_tokens: int = 16384  # TEI's default --max-batch-tokens
    batch_size: int = 32  # texts per forward pass at most
    max_inputs: int = 32  # texts per request (TEI's --max-client-batch-size)
    max_input_chars: int = 10_000  # longer texts are cut (truncate) or refused, before the tokenizer sees them
    max_body_bytes: int = 2_000_000  # TEI's --payload-limit
    max_concurrent_requests: int = 512  # more /predict requests at once get 429 (TEI's default)
    auto_truncate: bool = True  # what "truncate" means when a request leaves it out
    api_key: str | None = field(default=None, repr=False)  # when set, every endpoint but /health and the page's code
    cors_allow_origins: tuple[str, ...] = ()  # web origins whose pages may call the API (none: same origin only)
    loopback_hosts_only: bool = False  # listening on loopback: refuse other Host: names (DNS rebinding)
    # /explain: integrated gradients at 32 steps cost about 12 predictions of the text (docs/explain.md)
    max_explain_inputs: int = 8  # texts per /explain request
    explain_steps: int = 32  # integrated-gradient steps when a request leaves "steps" out
    max_explain_steps: int = 128  # the most a request may ask for
    max_concurrent_explains: int = 1  # /explain requests computed at once (a thread each); more get 429


class Parameters(BaseModel):
    """The Hugging Face Inference API's text-classification parameters."""

    model_config = ConfigDict(strict=True)

    top_k: Annotated[int, Field(ge=1)] | None = None
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None


class PredictRequest(BaseModel):
    # Unknown fields are ignored, as TEI does; the known ones must have the right types.
    model_config = ConfigDict(
        strict=True,
        json_schema_extra={"examples": [{"inputs": "这家酒店很干净"}, {"inputs": ["书的质量太差了", "物流很快"]}]},
    )

    inputs: str | list[str]
    truncate: bool | None = Field(None, description="cut texts longer than the model reads (default: the server's)")
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    raw_scores: bool = Field(False, description="the raw scores (logits) instead of probabilities")
    parameters: Parameters | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def texts(cls, value):
        """A string, a list of strings, or TEI's batch form [["text"], ...]; never a pair of texts."""
        if isinstance(value, list):
            value = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in value]
            for i, item in enumerate(value):
                if isinstance(item, list):
                    raise ValueError(
                        f"item {i} is a list of {len(item)}: this model classifies single texts, not pairs"
                    )
                if not isinstance(item, str):
                    raise ValueError(f"item {i} is {type(item).__name__}, not a string")
        elif not isinstance(value, str):
            raise ValueError(f"give a string or a list of strings, not {type(value).__name__}")
        return value


class ExplainRequest(PredictRequest):
    model_config = ConfigDict(
        strict=True,
        json_schema_extra={"examples": [{"inputs": "这家酒店很干净"}, {"inputs": ["书的质量太差了"], "steps": 16}]},
    )

    steps: Annotated[int, Field(ge=1)] | None = Field(
        None, description="integrated-gradient steps for the BERT models (default: the server's --explain-steps)"
    )


class Span(BaseModel):
    start: int
    end: int
    text: str
    score: float = Field(description="contribution toward the predicted label: positive supports it")


class Explained(BaseModel):
    label: str
    score: float
    attributions: list[Span]
    explanation: dict = Field(description="method, steps, and how well the scores add up to the logit difference")
    warnings: list[dict] | None = Field(None, description="present only when the input has warnings")


class Prediction(BaseModel):
    label: str
    score: float
    warnings: list[dict] | None = Field(None, description="present only when the input has warnings")


class ErrorResponse(BaseModel):
    error: str
    error_type: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str = "validation"):
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


def error_json(status: int, message: str, error_type: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


def unreadable_body(cause: BaseException | None) -> str | None:
    """Why a JSON body could not be read, for the errors FastAPI reports only as "error parsing the body"."""
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start]
        return (
            f"body: not {cause.encoding.upper()} text: byte 0x{byte:02x} at offset {cause.start:,} ({cause.reason}); "
            "send the JSON encoded as UTF-8"
        )
    if isinstance(cause, RecursionError):
        return 'body: the JSON is nested too deeply to read; send a flat object such as {"inputs": ["..."]}'
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):  # Python's guard, 4,300 digits
        return "body: the JSON holds a number of more than 4,300 digits; no field takes one"
    return None


def http_error_message(request: Request, err: HTTPException) -> str:
    if err.status_code == 404:
        path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "..."
        return f"{path}: no such endpoint; the API is POST /predict, /explain, GET /health, /info, /metrics, /docs"
    if err.status_code == 405:
        allowed = (err.headers or {}).get("Allow", "")
        return f"{request.method} {request.url.path}: not allowed; use {allowed}"
    return str(err.detail)


def text_error(text: str) -> str | None:
    """Why a text cannot be read as Unicode (a lone surrogate such as "\\ud800"), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (
            f"character {err.start} is {text[err.start]!a}, a lone surrogate: not a Unicode character; "
            "send text that encodes as UTF-8"
        )
    return None


def readable(err: RequestValidationError) -> str:
    """Pydantic's errors as one line naming each field, e.g. "truncate: Input should be a valid boolean"."""
    problems = []
    for e in err.errors():
        where = ".".join(str(part) for part in e["loc"] if part != "body") or "body"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "json_invalid":
            where, message = "body", f"not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})"
        elif e["type"] == "model_attributes_type":
            where = "body"
            message = 'expected a JSON object such as {"inputs": "..."}, sent with Content-Type: application/json'
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def transformed(row: np.ndarray, function: str) -> np.ndarray:
    if function == "softmax":
        shifted = np.exp(row - row.max())
        return shifted / shifted.sum()
    if function == "sigmoid":
        return 1 / (1 + np.exp(-row))
    return row


def predictions(row: np.ndarray, notes: list[Note], labels: list[str], function: str, top_k: int | None) -> list:
    values = transformed(row.astype(np.float64), function)
    order = np.argsort(-values, kind="stable")[:top_k]
    answer = [{"label": labels[i], "score": float(values[i])} for i in order]
    if notes:
        warnings = [{"code": note.code, "message": note.message} for note in notes]
        for item in answer:
            item["warnings"] = warnings
    return answer


async def until_disconnect(work, request: Request):
    """`work`'s result, or None if the client goes away first (its texts are then dropped from the queue)."""
    task = asyncio.ensure_future(work)

    async def gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


def create_app(classifier: Classifier, settings: Settings, reason: str = "") -> FastAPIOffline:
    metrics = Metrics()
    batcher = Batcher(classifier, settings.max_batch_tokens, settings.batch_size, metrics.record_batch)
    metrics.queue_depth.set_function(batcher.depth)
    labels = list(classifier.label_names)
    in_flight = 0
    try:  # its own tokenizer: the batcher's must not be used from two threads at once
        explainer, explainer_problem = explainer_for(classifier, own_thread=True), None
    except PipelineError as err:
        explainer, explainer_problem = None, str(err)
    explain_threads = ThreadPoolExecutor(settings.max_concurrent_explains, thread_name_prefix="explain")
    explaining = 0

    def checked_texts(body: PredictRequest, max_inputs: int, option: str) -> tuple[list[str], bool, dict]:
        """The request's texts (cut at --max-input-chars when truncating), whether to truncate, and the notes of
        those cut; refusals as ApiError."""
        single = isinstance(body.inputs, str)
        texts = [body.inputs] if single else list(body.inputs)
        if not texts:
            raise ApiError(422, "inputs: give at least one text")
        if len(texts) > max_inputs:
            raise ApiError(413, f"batch size {len(texts)} > maximum allowed batch size {max_inputs} ({option})")
        if body.truncation_direction.lower() == "left":
            raise ApiError(422, "truncation_direction: Left is not supported; the model reads the start of each text")
        truncate = settings.auto_truncate if body.truncate is None else body.truncate
        for i, text in enumerate(texts):  # before the batcher: a text the tokenizer cannot take is this request's
            if (problem := text_error(text)) is not None:
                raise ApiError(422, f"{'inputs' if single else f'inputs[{i}]'}: {problem}")
        cut = {}
        for i, text in enumerate(texts):
            if len(text) > settings.max_input_chars:
                if not truncate:
                    raise ApiError(
                        413,
                        f"inputs[{i}] has {len(text):,} characters, more than the server reads "
                        f"({settings.max_input_chars:,}, its --max-input-chars); shorten it or send truncate: true",
                    )
                texts[i] = text[: settings.max_input_chars]
                cut[i] = Note(
                    "truncated", f"only its first {settings.max_input_chars:,} characters were read (of {len(text):,})"
                )
        return texts, truncate, cut

    def read_notes(i: int, notes: list[Note], cut: dict, truncate: bool) -> list[Note]:
        """Input i's notes, with the server's own cut; a text the model cut is refused if truncate is false."""
        if i in cut and not any(note.code == "truncated" for note in notes):
            notes = [cut[i], *notes]  # else the model's own note says how much it read
        if not truncate and any(note.code == "truncated" for note in notes):
            raise ApiError(
                413,
                f"inputs[{i}] is longer than the model reads ({classifier.max_length} tokens); "
                "shorten it or send truncate: true",
            )
        return notes

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()  # after uvicorn has answered every request in flight
        explain_threads.shutdown(cancel_futures=True)

    app = FastAPIOffline(
        title="zh-sentiment",
        version=VERSION,
        description=f"Chinese review sentiment: the `{classifier.kind}` model of {classifier.folder}. "
        "POST /predict is Text Embeddings Inference's API; the page is at /.",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return error_json(err.status, err.message, err.error_type)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        return error_json(422, readable(err), "validation")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        """Starlette's and FastAPI's own errors (404, 405, a body that cannot be parsed) in TEI's shape."""
        reason = unreadable_body(err.__cause__)  # FastAPI raises "error parsing the body" from the real error
        if reason is not None:
            return error_json(422, reason, "validation")
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "validation")
        return error_json(err.status_code, http_error_message(request, err), error_type, err.headers)

    @app.post(
        "/predict",
        summary="Classify one text or a list of texts",
        response_model=list[Prediction] | list[list[Prediction]],
        responses={
            413: {"model": ErrorResponse, "description": "too many inputs, a text or body too long"},
            422: {"model": ErrorResponse, "description": "malformed JSON or wrong types"},
            429: {"model": ErrorResponse, "description": "too many requests at once"},
            424: {"model": ErrorResponse, "description": "the model failed"},
        },
    )
    async def predict(body: PredictRequest, request: Request):
        nonlocal in_flight
        single = isinstance(body.inputs, str)
        texts, truncate, cut = checked_texts(body, settings.max_inputs, "--max-inputs")
        function = body.parameters.function_to_apply if body.parameters else None
        if body.raw_scores and function not in (None, "none"):
            raise ApiError(422, f"raw_scores: true contradicts parameters.function_to_apply: {function}")
        function = function or ("none" if body.raw_scores else "softmax")
        if in_flight >= settings.max_concurrent_requests:
            raise ApiError(429, "Model is overloaded", "overloaded")
        in_flight += 1
        metrics.in_flight.inc()
        try:
            results = await until_disconnect(batcher.score(texts), request)
        except RuntimeError as err:
            raise ApiError(424, str(err), "backend") from None
        finally:
            in_flight -= 1
            metrics.in_flight.dec()
        if results is None:
            metrics.disconnects.inc()
            return Response(status_code=499)  # nobody is there to read it
        answers = []
        for i, (row, notes) in enumerate(results):
            notes = read_notes(i, notes, cut, truncate)
            answers.append(predictions(row, notes, labels, function, body.parameters and body.parameters.top_k))
        return JSONResponse(answers[0] if single and body.parameters is None else answers)

    @app.post(
        "/explain",
        summary="Classify texts and say which characters drove each label",
        response_model=Explained | list[Explained],
        responses={
            413: {"model": ErrorResponse, "description": "too many inputs, a text or body too long"},
            422: {"model": ErrorResponse, "description": "malformed JSON, wrong types, an empty text, too many steps"},
            429: {"model": ErrorResponse, "description": "as many explanations running as the server allows"},
            424: {"model": ErrorResponse, "description": "the model failed"},
            501: {"model": ErrorResponse, "description": "this model cannot be explained as loaded (int8)"},
        },
    )
    async def explain(body: ExplainRequest, request: Request):
        nonlocal explaining
        if explainer is None:
            raise ApiError(501, explainer_problem, "unsupported")
        if body.parameters is not None:
            raise ApiError(422, "parameters: /explain answers for the predicted label only; send no parameters")
        single = isinstance(body.inputs, str)
        texts, truncate, cut = checked_texts(body, settings.max_explain_inputs, "--max-explain-inputs")
        steps = settings.explain_steps if body.steps is None else body.steps
        if steps > settings.max_explain_steps:
            raise ApiError(
                422,
                f"steps: {steps} is more than this server allows ({settings.max_explain_steps}, its "
                "--max-explain-steps)",
            )
        for i, text in enumerate(texts):
            if not normalize_text(text)[0]:
                raise ApiError(
                    422, f"{'inputs' if single else f'inputs[{i}]'}: empty review: there is nothing to explain"
                )
        if explaining >= settings.max_concurrent_explains:
            raise ApiError(
                429,
                "as many explanations are running as the server allows (--max-concurrent-explains): try again shortly",
                "overloaded",
            )
        explaining += 1  # taken now, before any await; given back when the thread is done, not when the client goes
        handed_over = False
        try:
            results = await until_disconnect(batcher.score(texts), request)
            if results is None:
                metrics.disconnects.inc()
                return Response(status_code=499)
            found = [read_notes(i, notes, cut, truncate) for i, (_, notes) in enumerate(results)]
            chosen = [int(np.argmax(row)) for row, _ in results]
            stop = threading.Event()

            def work():
                try:
                    return [explainer.explain(text, steps, label, stop.is_set) for text, label in zip(texts, chosen)]
                except Cancelled:  # the client went away: what is left is nobody's
                    return None

            loop = asyncio.get_running_loop()
            job = explain_threads.submit(work)
            handed_over = True
            job.add_done_callback(lambda _: loop.call_soon_threadsafe(release))
            explanations = await until_disconnect(asyncio.wrap_future(job), request)
        except ApiError:
            raise
        except Exception as err:  # the model failed on this request's texts: this request's error alone
            raise ApiError(424, first_line(err), "backend") from None
        finally:
            if not handed_over:
                explaining -= 1
        if explanations is None:
            stop.set()
            metrics.disconnects.inc()
            return Response(status_code=499)
        answers = []
        for (row, _), notes, result in zip(results, found, explanations):
            values = row if body.raw_scores else transformed(row.astype(np.float64), "softmax")
            if not result.complete():
                notes = [*notes, Note("incomplete_explanation", incomplete_note(result))]
            answer = {
                "label": labels[result.label],
                "score": float(values[result.label]),
                "attributions": [span.record() for span in result.spans],
                "explanation": result.summary(),
            }
            if notes:
                answer["warnings"] = [{"code": note.code, "message": note.message} for note in notes]
            answers.append(answer)
        return JSONResponse(answers[0] if single else answers)

    def release():
        nonlocal explaining
        explaining -= 1

    @app.get("/health", summary="200 while the server can classify")
    async def health():
        if not batcher.alive():
            return error_json(503, "unhealthy", "unhealthy")
        return {"status": "ok"}

    @app.get("/info", summary="The model served and the server's limits")
    async def info():
        record = classifier.info
        return {
            # TEI's fields
            "model_id": str(classifier.folder),
            "model_sha": record.get("fingerprint"),
            "model_type": {
                "classifier": {
                    "id2label": {str(i): name for i, name in enumerate(labels)},
                    "label2id": {name: i for i, name in enumerate(labels)},
                }
            },
            "max_concurrent_requests": settings.max_concurrent_requests,
            "max_input_length": classifier.max_length,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_requests": settings.batch_size,
            "max_client_batch_size": settings.max_inputs,
            "auto_truncate": settings.auto_truncate,
            "version": VERSION,
            # this project's
            "kind": classifier.kind,
            "label_names": labels,
            "max_length": classifier.max_length,
            "validation": record.get("validation"),
            "test": record.get("test"),
            "fingerprint": record.get("fingerprint"),
            "chosen_because": reason,
            "runtime": classifier.runtime,  # torch, onnx, onnx-int8 (scikit-learn: the baseline)
            "runtime_chosen_because": classifier.runtime_reason,
            "max_input_chars": settings.max_input_chars,
            "max_body_bytes": settings.max_body_bytes,
            "max_explain_inputs": settings.max_explain_inputs,
            "explain_steps": settings.explain_steps,
            "max_explain_steps": settings.max_explain_steps,
            "explainable": explainer is not None,
            # the files of the model folder that differ on disk from those loaded (empty: it still matches)
            "changed_on_disk": await asyncio.to_thread(classifier.changed_on_disk),  # may hash: off the loop
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE_DIR / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
    app.add_middleware(
        Gate,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        api_key=settings.api_key,
        loopback_hosts_only=settings.loopback_hosts_only,
    )
    if settings.cors_allow_origins:  # outermost: a preflight (OPTIONS) is answered before the key is asked for
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
