# The two entry points of the README. Each one first makes sure .venv exists (see
# scripts/setup_env.sh; a no-op once installed), then does its job.
PY := .venv/bin/python

.PHONY: env demo test bench check-triton env-latest test-latest
env:
	@bash scripts/setup_env.sh

# Main job: train an SN Mask R-CNN on the embedded synthetic data on the CPU, then evaluate it.
demo: env
	$(PY) tools/demo.py $(ARGS)

# The whole test suite.
test: env
	$(PY) -m pytest tests $(ARGS)

# Layer and model benchmarks (minutes); writes benchmarks/latest.md.
bench: env
	$(PY) tools/benchmark_sn.py $(ARGS)

# Compile every Triton kernel for GPU archs without a GPU: registers, spills, errors
# (tools/check_triton_compile.py; default sm_90, e.g. ARGS="--arch 75,80,90").
check-triton: env
	$(PY) tools/check_triton_compile.py $(ARGS)

# The suite on the newest torch/torchvision/numpy/triton the registry serves, with
# detectron2's Python code (scripts/setup_latest_env.sh). CI runs the pinned suite above.
env-latest:
	@bash scripts/setup_latest_env.sh

test-latest: env-latest
	.venv-latest/bin/python -m pytest tests $(ARGS)
