"""A run reloads in any process: config.json records its recipes' definitions, so a recipe
that only a sweep config registers (``configs/fp4_ablation.py``'s ``w4a8_dge5``) is rebuilt as
trained; older run directories load where the name is known and otherwise name the file."""

import json
import os

import pytest
from flax import nnx

from experiments import evaluate
from lowprec.nn import QuantDense
from lowprec.ops import recipe_json, recipes
from lowprec.train import finetune, loop, restore, run_recipes
from tests.train.test_train import smoke

NAME = "reload_w4a8_dge5"  # registered here only, as a sweep config registers its recipes
RECIPE = recipes.fp4(4, 8, dge_k=5)


def test_every_recipe_round_trips_through_json():
    import configs.fp4_ablation  # noqa: F401  (registers the ablation's recipes)

    assert "w4a8_dge5" in recipes.names()
    for name in [*recipes.names(), "fp4(act_bits=8, dge_k=3)", "fp8_delayed(fp8_transposes='pallas')"]:
        r = recipes.get(name)
        back = recipe_json.decode(json.loads(json.dumps(recipe_json.encode(r))))
        assert back == r and back.name == r.name and hash(back) == hash(r), name


def test_a_lambda_has_no_json_form():
    from lowprec.quant import Estimator

    r = RECIPE.replace(fwd_weight=RECIPE.fwd_weight.replace(estimator=Estimator("mine", lambda xs, fmt: xs)))
    with pytest.raises(recipe_json.NotSerializable, match="fwd_weight.estimator.fn"):
        recipe_json.encode(r)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    recipes.register(NAME, RECIPE, overwrite=True)
    path = str(tmp_path_factory.mktemp("reload") / "run")
    try:
        loop.train(smoke(**{"recipe": NAME, "train.steps": 2, "train.log_every": 1, "train.eval_every": 2,
                            "train.eval_batches": 1, "mesh.devices": 1}), path)
    finally:
        del recipes._REGISTRY[NAME]  # from here on, as in a fresh process
    return path


def test_a_run_with_a_sweep_registered_recipe_reloads_where_it_is_unknown(trained, capsys):
    assert NAME not in recipes.names()
    recorded = dict(json.load(open(os.path.join(trained, "config.json")))[run_recipes.FIELD])
    assert set(recorded) == {NAME, "bf16"}
    run = restore.load_run(trained)
    layers = {"/".join(map(str, p)): m.recipe for p, m in nnx.iter_graph(run.model) if isinstance(m, QuantDense)}
    assert layers and all(r == (recipes.bf16 if "lm_head" in p else RECIPE) for p, r in layers.items()), layers
    assert evaluate.main([trained, "--batches", "1", "--no-progress"]) == 0
    assert f"| {NAME} (as trained) |" in capsys.readouterr().out
    ft = smoke(**{"finetune.init_from": trained})
    finetune.check_init_from(ft)  # a fine-tune can start from it


def _legacy(tmp_path, trained, recipe: str, manifest: str | None = None) -> str:
    """A run directory as written before config.json recorded definitions, naming ``recipe``."""
    cfg = json.load(open(os.path.join(trained, "config.json")))
    del cfg[run_recipes.FIELD]
    cfg["recipe"] = recipe
    run = tmp_path / "sweep" / "old-run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg))
    if manifest:
        (tmp_path / "sweep" / "manifest.json").write_text(json.dumps({"config": manifest, "runs": []}))
    return str(run)


def test_an_older_run_loads_where_its_recipe_is_known(tmp_path, trained):
    old = _legacy(tmp_path, trained, "bf16")
    run_recipes.check_run(old, restore.read_config(old))
    assert loop.recipe_rules(restore.read_config(old))[-1] == (".*", recipes.bf16)


@pytest.mark.parametrize("manifest", [None, "configs/fp4_ablation.py:b"])
def test_an_older_run_with_an_unknown_recipe_names_the_config_that_registers_it(tmp_path, trained, monkeypatch,
                                                                                manifest):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    monkeypatch.delitem(recipes._REGISTRY, "w4a8_dge5", raising=False)
    old = _legacy(tmp_path, trained, "w4a8_dge5", manifest)
    with pytest.raises(run_recipes.UnknownRunRecipe) as e:
        run_recipes.check_run(old, restore.read_config(old))
    message = str(e.value)
    assert "\n" not in message and "names recipe 'w4a8_dge5'" in message
    assert "it is registered by configs/fp4_ablation.py:" in message
    with pytest.raises(SystemExit):  # evaluate: one line, from argparse
        evaluate.main([old, "--no-progress"])
