"""README.md of a model folder: a Hugging Face model card, written with model.json by the stage that trains the model.

The card's YAML header is what the Hub indexes (language, pipeline_tag, base_model, datasets, the labels and a
model-index of the measured metrics); its text says how the model was trained and what it is not for. The card
shapes no answer, so model.json's fingerprint leaves it out (model_folder.shaping_files): editing it is safe.
"""

import json
from pathlib import Path

import yaml

from zh_sentiment.params import Params, load_params
from zh_sentiment.paths import CLEAN_REPORT, must_be_local

CARD_FILE = "README.md"
TITLES = {
    "baseline": "TF-IDF + logistic regression baseline",
    "frozen_head": "Frozen BERT features + linear head",
    "finetuned": "Fine-tuned BERT",
}
LIBRARIES = {"baseline": "sklearn", "frozen_head": "pytorch", "finetuned": "transformers"}
METRIC_NAMES = {"accuracy": "Accuracy", "f1_macro": "Macro F1", "roc_auc": "ROC AUC", "loss": "Cross-entropy loss"}


def hub_id(name: str) -> str | None:
    """`name` if it is a Hugging Face Hub id, else None: a local folder means nothing to a reader of the card."""
    return None if must_be_local(name) or Path(name).expanduser().exists() else name


def shown(name: str) -> str:
    """A hub id as it is; a local folder by its name alone (its path on the trainer's machine is nobody's business)."""
    return hub_id(name) or Path(name).name


def encoder(record: dict, params: Params) -> str | None:
    """The encoder the model was trained from: the one model.json records, or, for a fine-tuned folder (which is
    its own encoder, "."), the starting weights model.name names; None for the baseline."""
    return params.model.name if record["model"] == "." else record["model"]


def metadata(record: dict, params: Params) -> dict:
    """The card's YAML header."""
    base_model = hub_id(encoder(record, params)) if record["model"] else None
    dataset = hub_id(params.data.dataset)
    header = {
        "language": ["zh"],
        "library_name": LIBRARIES[record["kind"]],
        "pipeline_tag": "text-classification",
        "tags": ["sentiment-analysis", "dvc", "zh-sentiment"],
        **({"base_model": base_model} if base_model else {}),
        **({"datasets": [dataset]} if dataset else {}),
        "labels": record["label_names"],
        "model-index": [{"name": record["kind"], "results": results(record, params.data.dataset)}],
    }
    return header


def results(record: dict, dataset: str) -> list[dict]:
    """One model-index entry per split the pipeline measured the model on (test: where the training stage did)."""
    measured = [("validation", record["validation"]), ("test", record["test"])]
    return [
        {
            "task": {"type": "text-classification", "name": "Sentiment classification"},
            "dataset": {"name": shown(dataset), "type": hub_id(dataset) or "local", "split": split},
            "metrics": [
                {"type": key, "name": METRIC_NAMES[key], "value": value}
                for key, value in metrics.items()
                if key in METRIC_NAMES
            ],
        }
        for split, metrics in measured
        if metrics
    ]


def training_params(record: dict, params: Params) -> dict:
    """The params section that trained this kind of model."""
    section = {"baseline": params.baseline, "frozen_head": params.train, "finetuned": params.finetune}[record["kind"]]
    return section.model_dump(mode="json")


def cleaning(params: Params) -> str:
    """What clean did to the training reviews, from its report (metrics/data/clean.json), when there is one."""
    leaks = "removed" if params.clean.remove_cross_split_duplicates else "kept (clean.remove_cross_split_duplicates)"
    text = (
        "Reviews were cleaned before training: blank reviews, exact duplicates and texts given both labels "
        f"were dropped, whitespace and invisible characters normalized; reviews of train also found in "
        f"validation or test were {leaks}."
    )
    if CLEAN_REPORT.is_file():
        train = json.loads(CLEAN_REPORT.read_text(encoding="utf-8"))["train"]
        dropped = ", ".join(f"{name} {count}" for name, count in train["dropped"].items() if count)
        text += f" Train: {train['rows_in']} reviews in, {train['rows_out']} kept (dropped: {dropped or 'none'})."
        fixes = train.get("label_fixes", {})  # reports written before the decisions file have none
        if any(fixes.values()):
            text += (
                f" Reviewed label decisions (data/label_fixes.csv) relabeled {fixes['relabeled']} and dropped "
                f"{fixes['dropped']} training reviews."
            )
    return text


def body(record: dict, params: Params) -> str:
    data, test = params.data, record["test"]
    measured = (
        f"On the held-out test split ({test.get('n', '?')} reviews): accuracy {test['accuracy']:.4f}."
        if test
        else "Test metrics are measured by the `evaluate` stage: see `metrics/frozen_head.json` in the project."
    )
    model = (
        f"- Encoder: `{shown(encoder(record, params))}`, reading at most {record['max_length']} tokens per review\n"
        f"- Pooling: `{record['pooling']}`\n- Precision at training time: `{record['precision']}`\n"
        if record["kind"] != "baseline"
        else "- Features: TF-IDF of character n-grams\n"
    )
    settings = yaml.safe_dump(training_params(record, params), sort_keys=False, allow_unicode=True)
    return f"""
# {TITLES[record["kind"]]}: Chinese review sentiment

A sentiment classifier for Chinese reviews (labels: {", ".join(record["label_names"])}), trained by the
`zh-sentiment` DVC pipeline on `{shown(data.dataset)}`.
Validation accuracy {record["validation"]["accuracy"]:.4f}.
{measured}

## Use

```bash
zh-sentiment predict --model-dir THIS_FOLDER "房间干净，服务很好"
zh-sentiment serve --model-dir THIS_FOLDER
```

`model.json` records a sha256 of every file that shapes the answers; a folder whose files changed since
training is refused.

## Training

{model}- Data: `{shown(data.dataset)}` (text column `{data.text_column}`, label column `{data.label_column}`)
- Cleaning: {cleaning(params)}

Params:

```yaml
{settings}```

## Intended use and limits

For sorting and monitoring the sentiment of short Chinese product and hotel reviews, like those it was trained
on. It gives one of {len(record["label_names"])} labels with a probability: it knows no neutral or mixed review,
sarcasm, or text of other domains (news, social media) or languages, and a review longer than the tokens it reads
is judged on its start. Do not use it for decisions about people. Check it on your own reviews before you rely on
it: the figures above hold for reviews drawn like its test split.
"""


def write_model_card(folder: Path, record: dict) -> None:
    """Write `folder`/README.md for the model model.json `record` describes, with this run's params."""
    params = load_params()
    header = yaml.safe_dump(metadata(record, params), sort_keys=False, allow_unicode=True)
    # `folder` is the stage's temporary folder (outputs.atomic_dir): the card appears with the model, or not at all
    (folder / CARD_FILE).write_text(f"---\n{header}---\n{body(record, params)}", encoding="utf-8")
