"""Each trained model folder carries a model card (README.md) in the Hugging Face format, written by its stage."""

import json

import pytest
from huggingface_hub import ModelCard

from zh_sentiment.inference import open_model_folder
from zh_sentiment.model_card import metadata
from zh_sentiment.model_folder import MODEL_NAMES, read_info
from zh_sentiment.params import Params
from zh_sentiment.sandbox import pristine_params


@pytest.mark.parametrize("kind", MODEL_NAMES)
def test_every_model_folder_has_a_card_the_hub_library_parses(trained_project, kind):
    folder = trained_project.path / "models" / kind
    card = ModelCard.load(folder / "README.md")
    info = read_info(folder)
    data = card.data.to_dict()
    assert data["language"] == ["zh"] and data["pipeline_tag"] == "text-classification"
    assert data["labels"] == info["label_names"] == ["negative", "positive"]
    results = {(result.dataset_split, result.metric_type): result.metric_value for result in card.data.eval_results}
    assert results[("validation", "accuracy")] == info["validation"]["accuracy"]
    if kind != "frozen_head":  # its test metrics come later, from the evaluate stage
        measured = json.loads((trained_project.path / f"metrics/{kind}.json").read_text(encoding="utf-8"))
        assert results[("test", "accuracy")] == measured["accuracy"]
        assert results[("test", "f1_macro")] == measured["f1_macro"]
    assert "## Intended use and limits" in card.text
    assert "reviews of train also found in validation or test were removed" in card.text
    assert str(trained_project.path.parent.parent) not in card.content  # no path of the trainer's machine


def test_the_card_shapes_no_answer_so_editing_it_trips_no_fingerprint(trained_project, tmp_path):
    folder = trained_project.copy(tmp_path / "copy").path / "models/finetuned"
    (folder / "README.md").write_text("---\nlanguage: zh\n---\nOur own words.\n", encoding="utf-8")
    opened = open_model_folder(folder)  # every check of a model folder, the fingerprint's included: no refusal
    assert "README.md" not in opened.info["files"]


def test_a_hub_model_and_dataset_are_named_in_the_metadata(trained_project):
    """With the default params (hub ids), the card names the base model and the dataset, as the Hub links them."""
    record = read_info(trained_project.path / "models/finetuned")
    header = metadata(record, Params.model_validate(pristine_params()))  # bert-base-chinese, ChnSentiCorp
    assert header["base_model"] == "bert-base-chinese"
    assert header["datasets"] == ["lansinuote/ChnSentiCorp"]
    assert header["model-index"][0]["results"][0]["dataset"]["type"] == "lansinuote/ChnSentiCorp"
