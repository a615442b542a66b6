"""experiments/occ_table.py on a trained smoke run: the FP4 paper's Table 1 orderings."""

import numpy as np

from configs import lm
from experiments import occ_table
from lowprec.train import loop, restore


def test_table_one_orderings_on_a_trained_model(tmp_path):
    cfg = lm.get_config("smoke")
    cfg.train.steps, cfg.train.progress, cfg.train.eval_every, cfg.train.checkpoint_every = 12, False, 12, 12
    loop.train(cfg, str(tmp_path))
    run = restore.load_run(str(tmp_path))
    rows = {r["setting"]: r for r in occ_table.measure(run, occ_table.held_out_batches(run, 1))}
    assert list(rows) == [s[0] for s in occ_table.SETTINGS]
    none, clamp = rows["no clamp"], rows["clamp, alpha=0.999"]
    assert none["clamped_frac"] == 0.0
    # clamping alone touches 2(1 - alpha) of the values per tensor
    assert abs(clamp["clamped_frac"] - 0.002) < 0.001
    comp = [rows[f"clamp+comp, alpha={a}"] for a in ("0.999", "0.99", "0.97")]
    # compensation beats clamping alone at the same alpha, and smaller alpha is better still
    assert comp[0]["snr_db"] > clamp["snr_db"] and comp[0]["mse"] < clamp["mse"]
    snr = [c["snr_db"] for c in comp]
    assert snr == sorted(snr) and np.all(np.diff([c["mse"] for c in comp]) < 0)
    assert all(0.9 < r["cosine_pct"] / 100 <= 1.0 for r in rows.values())
