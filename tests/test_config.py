"""Dataclass config <-> flags."""

import argparse
from dataclasses import dataclass, field

import pytest

from grponorm.config import add_dataclass_args, dataclass_from_args, field_docs


@dataclass
class Demo:
    """A demo config."""

    steps: int = 10  # how many steps
    lr: float = 0.5  # learning rate
    name: str = "x"  # a name
    eta: float | None = None  # optional step size
    flag: bool = False  # a switch
    norms: list = field(default_factory=lambda: ["group_std", "none"])  # normalizers
    inits: list = field(default_factory=lambda: [None, 1e-3])  # initial values
    pair: tuple = (0.1, 0.2)  # a range


def parse(argv):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Demo)
    return dataclass_from_args(Demo, p.parse_args(argv))


def test_field_docs_read_trailing_comments():
    docs = field_docs(Demo)
    assert docs["steps"] == "how many steps"
    assert docs["pair"] == "a range"


def test_defaults_round_trip():
    assert parse([]) == Demo()


def test_flags_parse_types_lists_and_none():
    cfg = parse(["--steps", "3", "--lr", "1e-3", "--eta", "none", "--flag",
                 "--norms", "none,rloo", "--inits", "none,0.5", "--pair", "1,2"])
    assert cfg.steps == 3 and cfg.lr == 1e-3 and cfg.eta is None and cfg.flag is True
    assert cfg.norms == ["none", "rloo"]  # "none" stays a string where strings are expected
    assert cfg.inits == [None, 0.5]
    assert cfg.pair == (1.0, 2.0)


def test_bad_value_is_an_argparse_error():
    with pytest.raises(SystemExit):
        parse(["--steps", "ten"])
