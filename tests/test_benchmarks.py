"""The benchmarks run in smoke mode (tiny sizes) so they cannot rot; their timings are never asserted."""

import pytest

from benchmarks.run import bench_modules, main


@pytest.mark.slow
@pytest.mark.parametrize("module", bench_modules(), ids=lambda m: m.__name__)
def test_benchmark_runs_in_smoke_mode(module):
    text = module.run(device="cpu", smoke=True)
    assert text.startswith("### ") and "|---|" in text


@pytest.mark.slow
def test_runner_writes_nothing_in_smoke_mode(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    main(["--smoke", "--only", "normalize", "--out", str(out)])
    assert not out.exists()
