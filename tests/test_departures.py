"""The README's table of departures from the official code: every switch it names is a setting the kit accepts."""
import re
from pathlib import Path

from sre2l.core import RunConfig, config_dict
from sre2l.presets import make_config

README = Path(__file__).resolve().parent.parent / "README.md"


def departure_rows() -> list[list[str]]:
    "The rows of the table under '## Departures from the official code', as lists of cells."
    text = README.read_text().split("## Departures from the official code", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in text.splitlines() if l.startswith("|")][2:]  # past the header and its rule
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


def config_keys() -> set[str]:
    "Every dotted key of the configuration ('seed', 'relabel.pruning_rule', ...)."
    def walk(prefix, value):
        if isinstance(value, dict): return {k for name, v in value.items() for k in walk(f"{prefix}{name}.", v)}
        return {prefix[:-1]}
    return walk("", config_dict(RunConfig()))


def test_every_departure_row_is_complete_and_its_switch_exists():
    rows, keys = departure_rows(), config_keys()
    assert len(rows) >= 15 and all(len(r) == 4 and all(r) for r in rows), rows
    assert {r[0].split(":")[0] for r in rows} >= {"SRe2L", "LPLD", "PRISM"}
    switches = [s for r in rows for s in re.findall(r"`([^`]+)`", r[3])]
    assert "relabel.pruning_rule=lpld" in switches and "tracker=wandb" in switches
    for switch in switches:
        key, _, value = switch.partition("=")
        assert key in keys, f"{switch!r} names no setting"
        if value: make_config("digits", [switch])  # refused with a ConfigError if the value is not allowed
