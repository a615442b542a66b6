"""The study sweeps under configs/: every sub-sweep expands, names its recipes, and a setting
shared between sub-sweeps is one run (same id), not two."""

import pytest

from launch import sweep

ABLATION = "configs/fp4_ablation.py"


def ids(arg: str, root: str) -> dict:
    return {r.overrides["recipe"] + f"@{r.overrides.get('optim.lr', '')}/{r.overrides['seed']}": r.id
            for r in sweep.expand(f"{ABLATION}:{arg}", root)}


def test_fp4_ablation_sub_sweeps_share_the_full_method_runs(tmp_path):
    root = str(tmp_path / "ab")
    a, d, e = ids("a", root), ids("d", root), ids("e", root)
    assert len(d) == 8 and len(e) == 8  # 4 granularities and 3 element formats, 2 seeds each
    assert {k for k in e if k.endswith("/2")} == {"fp4_paper@/2", "fp4_e3m0@/2"}  # a third seed where they disagreed
    assert "fp4_paper@/2" not in a and "fp4_paper@/2" not in d  # not asked of (a) and (d)
    for seed in (0, 1):  # the full method's own cells are the (a) run itself
        assert d[f"fp4_paper@/{seed}"] == a[f"fp4_paper@/{seed}"] == e[f"fp4_paper@/{seed}"]
    everything = ids("all", root)
    assert len(set(everything.values())) == len(everything)  # "all" runs each distinct recipe once
    assert set(a.values()) | set(d.values()) | set(e.values()) <= set(everything.values())
    assert len(everything) == 48 and sum(k.endswith("/2") for k in everything) == 4
    lr = ids("lr", root)
    lr_recipes = ("bf16", "w4a4", "fp4_paper", "fp4_wtensor_atensor")
    assert sorted(lr) == sorted(f"{r}@0.003/{s}" for r in lr_recipes for s in (0, 1))
    assert not set(lr.values()) & set(everything.values())
    dge_lr = ids("dge_lr", root)
    assert sorted(dge_lr) == sorted(f"{r}@0.0003/{s}" for r in ("w4a8", "w4a8_dge5") for s in (0, 1))


def test_fp4_ablation_unknown_sub_sweep_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown ablation\(s\) \['z'\]; known: a, b, c, d, e, parts, lr, dge_lr"):
        sweep.expand(f"{ABLATION}:a+z", str(tmp_path))


def test_lm_config_variants_are_checked():
    from configs import lm
    assert lm.get_config("6m,fp8").recipe == "fp8" and lm.get_config("cpu").model.size == "tiny"
    with pytest.raises(ValueError, match=r"variant '20m,fp8,junk': expected '<size>\[,<recipe>\]'.*got 3"):
        lm.get_config("20m,fp8,junk")
    with pytest.raises(ValueError, match=r"variant '2m': unknown size '2m'; known: tiny, 6m, 20m, .*, cpu, smoke"):
        lm.get_config("2m")
    with pytest.raises(ValueError, match=r"variant '20m,fp7': unknown recipe 'fp7'; known: bf16, "):
        lm.get_config("20m,fp7")
