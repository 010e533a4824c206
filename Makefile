# The two commands of the README's quickstart: `make demo` and `make test`.
PY ?= python3
# CPU wheel of PyTorch (an unpinned torch can pull a multi-GB CUDA build).
TORCH ?= torch==2.13.0

.PHONY: demo test install-demo install-test lint docs notebooks

install-demo:
	$(PY) -m pip install -q "$(TORCH)" -e ".[jax]" array-api-strict matplotlib

demo: install-demo
	$(PY) examples/demo.py
	$(PY) examples/hessians.py
	$(PY) benchmarks/sinkhorn_divergence_hessians.py --figure sinkhorn_divergence_hessians.png

install-test:
	$(PY) -m pip install -q "$(TORCH)" -e ".[jax,compare,test,docs]"

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

docs:
	$(PY) -m mkdocs build --strict --quiet

notebooks:
	$(PY) -m pytest --nbmake notebooks -p no:cacheprovider

test: install-test lint
	$(PY) -m pytest
	$(MAKE) notebooks
	$(MAKE) docs
