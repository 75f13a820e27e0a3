"""A control character in a config file is a file:line error, not a crash."""

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.yamlsrc import ConfigError


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\ufffe"], ids=["NUL", "BEL", "ESC", "U+FFFE"])
def test_a_control_character_in_a_config_file_is_a_config_error(tmp_path: Path, char: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"upstream: {{url: 'http://127.0.0.1:1'}}\nmode: enforce{char}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:")
