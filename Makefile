# The two commands of the README:
#   make demo       sets up and runs the quickstart campaign on this machine's CPU
#   make test       sets up and runs the whole test suite (the import contract and linters first)
# and for contributors:
#   make test-fast  the unit tier, on every core (under a minute)
#   make lint       the import contract, ruff (lint + format) and mypy
#   make bench      the quick benchmarks: quickstart accuracy, kernel accuracy, prediction speed (about 40 min)
# Every target creates its virtual environment (.venv) and installs what it needs, Debian packages included
# (the tests need sshd, adb and a headless browser).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := openssh-server adb chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BENCH_DIR ?= bench-accuracy

.PHONY: demo test test-fast lint bench venv system-packages clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lab]'
	touch $@

venv: $(VENV)/.installed

system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: venv
	$(BIN)/nnmeter-build quickstart $(DIR)

lint: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check nnmeter tests bench lab
	$(BIN)/ruff format --check nnmeter tests bench lab
	$(BIN)/mypy

test: lint system-packages
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m unit -n auto

bench: venv
	$(BIN)/python bench/accuracy.py --quick --dir $(BENCH_DIR)
	$(BIN)/python bench/predict_speed.py --predictor $(BENCH_DIR)/quickstart/predictor
	$(BIN)/python bench/kernel_accuracy.py --kernels conv-bn-relu --stored $(BENCH_DIR)/quickstart

clean:
	rm -rf $(VENV) nnmeter-quickstart $(BENCH_DIR)
