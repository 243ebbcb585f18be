"""registry.build: bad arguments are found against the signature before the call; inside the call only a
ConfigError (or a TypeError from a value of the wrong annotated type) is bad input, anything else a bug."""
from __future__ import annotations

import re

import pytest

from ganexp.config import registry
from ganexp.errors import ConfigError


@registry.register("generator")
class Buggy:
    def __init__(self, width: int, depth: int = 2):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")  # a bug inside


@registry.register("generator")
class Fine:
    def __init__(self, width: int, depth: int = 2):
        self.width, self.depth = width, depth


@registry.register("generator")
class Picky:
    def __init__(self, width: int):
        raise ConfigError(f"model.generator.width={width} is odd; give an even width")


@registry.register("generator")
class Broken:
    def __init__(self, width: int):
        raise KeyError("missing_table_entry")


def _node(cls: type, **kwargs) -> dict:
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **kwargs}


def test_a_type_error_inside_the_constructor_propagates_as_a_bug():
    with pytest.raises(TypeError) as err:
        registry.build(_node(Buggy, width=3), "generator", key="model.generator")
    assert not isinstance(err.value, ConfigError) and "NoneType" in str(err.value)


def test_any_other_exception_inside_the_constructor_propagates_unchanged():
    with pytest.raises(KeyError, match="missing_table_entry"):
        registry.build(_node(Broken, width=3), "generator", key="model.generator")


def test_an_unknown_argument_is_a_config_error_naming_the_dotted_key_and_what_the_class_takes():
    with pytest.raises(ConfigError) as err:
        registry.build(_node(Fine, width=3, deph=4), "generator", key="model.generator", source="f.ckpt")
    message = str(err.value)
    assert message.startswith("f.ckpt: cannot build model.generator")
    assert "model.generator.deph is not an argument of Fine" in message
    assert "did you mean model.generator.depth?" in message and "it takes width, depth" in message


def test_an_unknown_argument_is_refused_before_the_constructor_runs():
    with pytest.raises(ConfigError, match=re.escape("model.generator.hiden is not an argument")):
        registry.build(_node(Buggy, width=3, hiden=[8]), "generator", key="model.generator")


def test_a_missing_required_argument_is_a_config_error():
    with pytest.raises(ConfigError, match=re.escape("model.generator.width is required")):
        registry.build(_node(Fine, depth=4), "generator", key="model.generator")


def test_a_config_error_from_the_constructor_stays_a_config_error():
    with pytest.raises(ConfigError, match=re.escape("model.generator.width=3 is odd")):
        registry.build(_node(Picky, width=3), "generator", key="model.generator")


def test_a_value_of_the_wrong_annotated_type_is_bad_input():
    with pytest.raises(ConfigError, match=re.escape("model.generator.latent_dim='x' is a str, not int")):
        registry.build({"_target_": "ganexp.models.mlp.MLPGenerator", "latent_dim": "x", "out_shape": [2]},
                       "generator", key="model.generator")


def test_good_arguments_build_and_a_partial_may_leave_required_ones_to_the_call():
    assert registry.build(_node(Fine, width=3), "generator", key="model.generator").width == 3
    factory = registry.build({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}, "optimizer",
                             key="optimizer.g")
    assert factory.keywords == {"lr": 1e-3}
    with pytest.raises(ConfigError, match=re.escape("optimizer.g.lrate is not an argument of Adam")):
        registry.build({"_target_": "torch.optim.Adam", "_partial_": True, "lrate": 1e-3}, "optimizer",
                       key="optimizer.g")
