"""`zh-sentiment predict --input ... --output DIR --ray ADDRESS`: the corpus scored on a Ray cluster.

Ray Data runs it: a dataset of the parts still to do, map_batches over a pool of actors, each of which loads
the model folder once (every check of open_model_folder, the fingerprint among them) and then reads, scores
and writes one part per call with the same code as a local run (scorer.Scorer), into the same shards. So the
output is the local run's: same files, same columns, same resumption. Ray Data's own read_csv and
write_parquet are not used: its CSV reader does not follow tables.py's rules (encoding detection, "NA" is a
review), and its writer names files by the job, not by the rows they hold, so a re-run could not tell which
rows are done and a killed write leaves a file that looks whole.

An actor that dies (its process killed, its node lost) is restarted and its part run again (max_restarts,
max_task_retries); a part's shard only ever appears whole, so a part run twice is still written once.
The model folder, the inputs and --output must be at the same path on every node (a shared filesystem).
This package travels to the workers with the job (runtime_env py_modules); torch and transformers must be
installed there.
"""

import logging
import os
import socket
import sys
from pathlib import Path

from zh_sentiment.corpus.parts import Part, Settings
from zh_sentiment.corpus.scorer import Scorer
from zh_sentiment.errors import PipelineError, first_line

INSTALL = "pip install -r requirements-ray.txt"


def scorer_class(settings: Settings) -> type:
    """The actors' class, `settings` inside it: cloudpickle ships a class made here whole, so the actors need no
    constructor arguments (which Ray would keep in the object store, and which a restart could lose)."""

    class RayScorer:
        """One actor: the model, loaded once."""

        def __init__(self):
            self.scorer = Scorer(settings)

        def __call__(self, batch: dict) -> dict:
            rows, errors = [], []
            for path, name, number, size in zip(batch["path"], batch["name"], batch["number"], batch["rows"]):
                try:
                    rows.append(self.scorer.run(Part(str(path), str(name), int(number), int(size))))
                    errors.append("")
                except PipelineError as err:
                    rows.append(0)
                    errors.append(str(err))
            return {"rows": rows, "error": errors}

    return RayScorer


def require_ray():
    try:
        import ray
    except ImportError:
        raise PipelineError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def connect(address: str):
    """Ray, connected to the cluster at `address` (the caller shuts it down)."""
    ray = require_ray()
    import zh_sentiment

    host, _, port = address.rpartition(":")
    if host and port.isdigit():  # Ray would retry an address where nothing listens for minutes, saying little
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as err:
            raise PipelineError(
                f"--ray {address}: no Ray cluster answers there ({first_line(err)}). Start one with "
                "`ray start --head`, or give the head's address HOST:PORT (or auto)."
            ) from None

    env = {key: os.environ[key] for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if key in os.environ}
    try:
        ray.init(
            address=address,
            runtime_env={"py_modules": [str(Path(zh_sentiment.__file__).parent)], "env_vars": env},
            log_to_driver=False,  # an actor's failure comes back as a message per part; its logs stay on its node
            logging_level="ERROR",
        )
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise PipelineError(
            f"--ray {address}: cannot connect to a Ray cluster there ({first_line(err)}). Start one with "
            "`ray start --head`, or give the head's address HOST:PORT (auto: RAY_ADDRESS, or the one started here)."
        ) from None
    return ray


def score_on_ray(ray, todo: list[Part], settings: Settings, per_node: int, cpus: int, gpus: float, bar) -> list[str]:
    """The parts scored on the cluster `ray` is connected to; a message per input that could not be."""
    if not todo:
        return []
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and timings: our lines say what matters
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts rows
        context.enable_operator_progress_bars = False
        nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= cpus]
        if not nodes:
            raise PipelineError(f"--ray: no node of the cluster has {cpus} CPU(s) for an actor (--cpus-per-actor).")
        actors = min(per_node * len(nodes), len(todo))
        items = [{"path": p.path, "name": p.name, "number": p.number, "rows": p.rows} for p in todo]
        done = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            scorer_class(settings),
            batch_size=1,  # a part is the unit of work, of retry and of output
            concurrency=actors,
            num_cpus=cpus,
            num_gpus=gpus,
            max_restarts=-1,  # a killed actor comes back (as Ray Data's default; said here since we rely on it)
            max_task_retries=-1,  # and its part runs again
        )
        print(f"predict: {actors} actor(s) on {len(nodes)} node(s) of the Ray cluster.", file=sys.stderr)
        bad = []
        for row in done.iter_rows():
            bar.update(int(row["rows"]))
            if row["error"]:
                bad.append(str(row["error"]))
        return bad
    except ray.exceptions.RayError as err:
        raise PipelineError(
            f"the Ray job failed ({first_line(err)}). The shards written are kept: run the same command again."
        ) from err
