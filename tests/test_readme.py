"""The README's config examples are valid configs."""

import re
from pathlib import Path

import pytest

from ticketflow.config import load_settings

README = Path(__file__).resolve().parents[1] / "README.md"
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_config_examples():
    assert len(TOML_BLOCKS) >= 2


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=lambda block: block.splitlines()[0])
def test_readme_config_example_loads(block, tmp_path):
    path = tmp_path / "example.toml"
    path.write_text(block, encoding="utf-8")
    load_settings(path)
