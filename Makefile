# The two commands of the README: `make demo` and `make test`.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: demo test test-slow setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/dcp demo

test: $(STAMP)
	$(PY) -m pytest -q -x -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf .venv
