"""What a corpus run is cut into: its settings, and the parts of the input files, each one output shard."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Everything a worker (a local process or a Ray actor) needs to score and write a part: paths absolute."""

    model_dir: str
    device: str
    precision: str | None
    runtime: str  # torch, onnx, onnx-int8 or auto (docs/onnx.md)
    batch_size: int
    text_column: str
    id_column: str | None
    columns: list[str] | None
    encoding: str
    rows_per_shard: int
    output_format: str
    output: str


@dataclass(frozen=True)
class Part:
    """Rows [number * rows, (number + 1) * rows) of one input file, and the output shard they go to."""

    path: str  # the input file
    name: str  # the input file relative to --input: the `file` column, and the start of the shard's name
    number: int
    rows: int  # how many rows the part has

    def shard(self, settings: Settings) -> Path:
        return Path(settings.output) / f"{self.name.replace('/', '__')}.part-{self.number:05d}.{settings.output_format}"
