# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv/ first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is a CPU build that pip takes from local disk on our machines and that runs
# the image encoder 1.45x faster than the CUDA build; pin it before the project's deps.
TORCH := torch==2.13.0
# torchvision (ResNet-50 backbone only) runs beside this torch pair, in its own venv.
RESNET_PINS := torch==2.14.1 torchvision==0.29.1
# No wheel cache: torch 2.14.1 with its CUDA wheels is ~5.5 GB, and a cached copy of each
# download doubled that and filled a CI machine's disk (Errno 28 in test-resnet).
PIP := pip install -q --no-cache-dir

.PHONY: install browser demo test test-slow test-resnet bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/$(PIP) $(TORCH)
	$(BIN)/$(PIP) -e '.[test,bench]'
	touch $@

# The main job on the bundled demo collection: index it (photos + captions), then search.
# --rebuild: a demo library left by an older model is encoded again, not refused (for the same
# model it only rebuilds the FAISS files from SQLite).
DEMO_DB := .demo-library
demo: install
	$(BIN)/fusion index data/demo --db $(DEMO_DB) --rebuild
	$(BIN)/fusion search "two zebras grazing" --db $(DEMO_DB) -k 5
	$(BIN)/fusion search "a plate of food on a table" --db $(DEMO_DB) -k 5
	$(BIN)/fusion describe data/demo/images/000000358427.jpg --db $(DEMO_DB) -k 3

# The web page test drives Debian's Chromium headless (chromedriver from the same package set).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && apt-get install -y -q chromium chromium-driver; }

# The Ray extra (ray[data], ~600 MB with pyarrow and pandas) only for the tests of fusion index --ray.
$(VENV)/.ray-installed: $(VENV)/.installed
	$(BIN)/$(PIP) -e '.[ray]'
	touch $@

# The default run (about 5 minutes on 2 cores); the slow ones (fuzzing at length, ten kills,
# 10,000 requests: about 9 minutes more) run in CI after it.
test: install browser $(VENV)/.ray-installed
	$(BIN)/pytest -q -m 'not resnet and not slow'

test-slow: install browser $(VENV)/.ray-installed
	$(BIN)/pytest -q -m 'slow and not resnet'

# The optional torchvision path, in a second environment (CI runs this too).
test-resnet:
	$(PY) -m venv $(VENV)-resnet
	$(VENV)-resnet/bin/$(PIP) $(RESNET_PINS)
	$(VENV)-resnet/bin/$(PIP) -e '.[test,resnet]'
	$(VENV)-resnet/bin/pytest -q -m resnet

bench: install
	$(BIN)/python benchmarks/encode_speed.py
	$(BIN)/python benchmarks/index_speed.py
	$(BIN)/python benchmarks/recall.py

clean:
	rm -rf $(VENV) $(VENV)-resnet $(DEMO_DB) *.egg-info .pytest_cache
