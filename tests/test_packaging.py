"""What `pip install .` puts in the wheel: pyproject.toml lists the packages by name, so a new subpackage that is
not listed works in the editable install of requirements.txt and is missing from any other."""

import tomllib

from zh_sentiment.sandbox import ROOT


def test_every_package_of_zh_sentiment_is_listed_for_the_wheel():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "zh_sentiment").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert sorted(listed) == sorted(found)
