# The two commands of the README:
#   make demo   sets up and runs the quickstart campaign on this machine's CPU
#   make test   sets up and runs the whole test suite
# Both create their own virtual environment (.venv) and install what they need,
# Debian packages included (tests need sshd, adb and a headless browser).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := openssh-server adb chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test venv system-packages bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
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

test: venv system-packages
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) nnmeter-quickstart
