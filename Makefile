# The two commands a new user needs: `make demo` and `make test`. Both run the set-up first.
.PHONY: setup demo test gpu-check export-env clean-results

VENV_STAMP := .venv/.setup-stamp
SETUP_INPUTS := pyproject.toml uv.lock envs/setup.sh envs/sdists.txt envs/install_detectron2.py

setup: $(VENV_STAMP)

$(VENV_STAMP): $(SETUP_INPUTS)
	bash envs/setup.sh
	touch $@

demo: setup
	.venv/bin/snakemake --profile profiles/local demo --config scale=smoke smoke_profile=demo

# Two pytest workers: most tests spend their time starting Python processes, which use one core each.
# loadfile keeps each test file on one worker: the SLURM tests share one cluster. The files go out longest first
# (tests/conftest.py LONGEST_FIRST), not by their number of tests.
TEST_WORKERS ?= 2

test: setup
	.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The GPU paths on one CUDA GPU, measured (pipeline/gpu_check.py): reports/bench/gpu.md and .json.
# GPU_CHECK_ARGS="--compile" adds torch.compile; "--device cpu --tiny" runs every path on CPU in a minute.
gpu-check: setup
	.venv/bin/python -m pipeline.gpu_check $(GPU_CHECK_ARGS)

# Re-export envs/requirements.lock.txt after changing uv.lock (a test checks they agree).
export-env: setup
	.cache/uv-*/bin/uv export --frozen --format requirements-txt --no-emit-project --quiet \
		-o envs/requirements.lock.txt

clean-results:
	rm -rf results logs && git clean -fqX reports && git checkout -- reports/README.md
