"""Entry points (`python -m experiments.<name>`): train, report (sweep reports), occ_table
(the FP4 paper's Table 1 on a trained run), formats_table, and the benchmark_* / profile_gemm
benchmarks."""
