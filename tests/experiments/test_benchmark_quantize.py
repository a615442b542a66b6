"""benchmark_quantize on a tiny tensor: the MXFP4 rows (the library's default, each kernel
forced) are timed and their bits compared with the XLA path's."""

import json

from experiments import benchmark_quantize as bq


def test_mxfp4_rows_are_timed_and_their_bits_checked(tmp_path, capsys):
    out = tmp_path / "q.json"
    bq.main(["--gib", "0.001", "--repeats", "1", "--only", "MXFP4", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"copy", "amax only (read)", bq.MXFP4, bq.XLA_MXFP4, bq.PALLAS_MXFP4}
    assert results[bq.MXFP4]["same_bits_as_xla"] is True and results[bq.PALLAS_MXFP4]["same_bits_as_xla"] is True
    assert all(r["seconds"] > 0 for r in results.values())
    assert capsys.readouterr().out.count("same bits as XLA") == 2
