"""Every data/mixture configuration mistake is reported, all at once, with field, value and what is allowed."""

from __future__ import annotations

import copy
import json

import pytest

from codemix.config import validate_study
from codemix.errors import CodemixError, ConfigError, DataError
from codemix.study.commands import build_data

from .conftest import small_study_raw


def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_study(raw)
    return err.value.problems


def test_m_out_of_range_per_setting():
    raw = small_study_raw(m=[0.0, 0.7, 0.95, -0.1])
    found = problems(raw)
    assert "mixtures.m: m=0.7 is above 0.5, the maximum for the additive setting" in found
    assert "mixtures.m: m=0.95 is above 0.9, the maximum for the competitive setting" in found
    assert any("m=-0.1 is below 0" in p for p in found)
    ok = small_study_raw(settings=["competitive"], m=[0.9], baselines=False)
    validate_study(ok)


def test_weights_and_sources_are_checked_together():
    raw = small_study_raw(code_weights={"python": 1.0, "java": 0.5, "c4": 0.2}, lang_weights={"wiki": -1.0})
    raw["data"]["sources"].append(copy.deepcopy(raw["data"]["sources"][0]))
    raw["data"]["heldout_docs"] = 1.5
    found = problems(raw)
    assert any("unknown source 'java'" in p for p in found)
    assert any("source 'c4' is not a code source" in p for p in found)
    assert any("mixtures.lang_weights.wiki=-1.0: weights must be >= 0" in p for p in found)
    assert any("duplicate source names ['c4']" in p for p in found)
    assert any("data.heldout_docs=1.5" in p for p in found)
    assert len(found) >= 5  # one error, every problem


def test_source_and_setting_mistakes():
    raw = small_study_raw(settings=["competitive"], baselines=True)
    raw["data"]["sources"][0] = {"name": "c4", "kind": "hf"}
    raw["data"]["sources"][1]["paths"] = []
    found = problems(raw)
    assert any("baselines=true needs the additive setting" in p for p in found)
    assert any("kind hf needs hf_name" in p for p in found)
    assert any("(wiki): kind text needs at least one path" in p for p in found)
    bad_kind = small_study_raw()
    bad_kind["data"]["sources"][2]["kind"] = "csv"
    assert any("data.sources[2].kind='csv'" in p for p in problems(bad_kind))
    only_code = small_study_raw()
    only_code["data"]["sources"] = only_code["data"]["sources"][2:]
    only_code["mixtures"]["lang_weights"] = {}
    assert any("no language source" in p for p in problems(only_code))


def test_data_errors_at_build_time(built, tmp_path):
    from codemix.data.streams import build_stream

    raw = small_study_raw()
    raw["data"]["heldout_docs"] = 40
    raw["data"]["sources"][3]["max_docs"] = 30  # rust: all 30 held out, but it has training weight
    cfg = validate_study(raw)
    with pytest.raises(DataError, match=r"source 'rust' has only 30 documents and data.heldout_docs=40"):
        build_stream(cfg.source("rust"), cfg.data, built.tokenizer_path, tmp_path / "rust", budget_tokens=1000,
                     progress=False)
    assert not (tmp_path / "rust").exists()
    raw = small_study_raw()
    raw["data"]["tokenizer"] = {"path": str(built.tokenizer_path)}  # an existing tokenizer: no training
    raw["data"]["sources"][2]["max_docs"] = 6  # python: 1 training document, far too few tokens for N_code
    raw["out"] = str(tmp_path / "b")
    with pytest.raises(CodemixError, match=r"insufficient tokens for source python: need \d+, have \d+"):
        build_data(validate_study(raw))
    # mixtures are written whole or not at all: only complete ones (those without python) are there
    built_mixtures = list((tmp_path / "b" / "jobs" / "mixture").iterdir())
    assert built_mixtures and all((d / "DONE").is_file() and (d / "index.npy").is_file() for d in built_mixtures)
    assert not any("python" in json.loads((d / "mixture.json").read_text())["tokens"] and
                   json.loads((d / "mixture.json").read_text())["tokens"]["python"] for d in built_mixtures)
    # failed attempts leave no work directory, only their logs (the error tail is in failures/)
    assert all(p.suffix == ".log" for p in (tmp_path / "b" / "work" / "mixture").iterdir())
