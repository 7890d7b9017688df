# The course's commands. Each target sets up what it needs (virtual environment,
# Python packages, MathJax) on a fresh machine, and reuses it afterwards.
#
#   make book        build the book into _build/html (every chapter executed)
#   make book EDITION=student   the edition for a graded class, into _build/student/html
#   make test        run the whole test suite
#   make exercises   regenerate exercises/ from solutions/ with nbgrader
#   make bench       run the benchmarks (ratios against baselines, see bench/)
#
# Instructors (see README.md):
#   make release                       every assignment: solutions/ -> exercises/ and the gradebook,
#                                      with the due dates of schedule.toml
#   make autograde SUBMISSIONS=dir     grade a folder of collected notebooks for the whole class:
#                                      feedback/ (offline math), report/grades.csv, scores.png, report.md;
#                                      student code runs in the sandbox (root; LLM_COURSE_SANDBOX=0: without)
#   make autograde SUBMISSIONS=dir WORKERS=4 DB=--postgres   graders in parallel (PostgreSQL)
#   make simulate-class                30 simulated students, every score checked (a benchmark)

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Quiet installs; the pip configuration of some machines prints one warning per package.
PIP := $(PY) -m pip install -q --disable-pip-version-check
QUIET := 2>&1 | { grep -v '^WARNING: Location' || true; }
MATHJAX_VERSION := 3.2.2
PYTEST_WORKERS ?= 2
# nbgrader runs tools of the environment (alembic) as commands: put the venv first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: book browser graphviz test exercises bench clean release autograde simulate-class

$(VENV)/.book-deps: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt $(QUIET)
	$(PIP) --no-deps -e . $(QUIET)
	touch $@

$(VENV)/.test-deps: requirements-test.txt $(VENV)/.book-deps
	$(PIP) -r requirements-test.txt $(QUIET)
	touch $@

# MathJax 3 served by the book itself, so formulas render without network. It lives
# under _build/static (html_static_path in _config.yml), not in _static/, whose
# scripts Jupyter Book would load on every page.
MATHJAX := _build/static/mathjax/tex-chtml.js
$(MATHJAX):
	mkdir -p _build/npm _build/static
	npm install --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
	    --prefix _build/npm mathjax@$(MATHJAX_VERSION)
	rm -rf _build/static/mathjax
	cp -r _build/npm/node_modules/mathjax/es5 _build/static/mathjax

# Debian's Chromium and ChromeDriver, for the browser check of the built pages.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        apt-get install -y -q chromium chromium-driver >/dev/null \
	        || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	    else \
	        echo "The book's browser check needs Chromium and ChromeDriver (Debian: apt-get install chromium chromium-driver)."; \
	        exit 1; \
	    fi; \
	fi

# Debian's Graphviz: Sphinx renders the book's diagrams (```{graphviz} sources) to SVG with `dot`.
graphviz:
	@if ! command -v dot >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        apt-get install -y -q graphviz >/dev/null \
	        || { apt-get update -q >/dev/null && apt-get install -y -q graphviz >/dev/null; }; \
	    else \
	        echo "The book's diagrams need Graphviz (Debian: apt-get install graphviz)."; \
	        exit 1; \
	    fi; \
	fi

# The edition (see README.md): self-study shows each reference after its exercise, behind a
# "show solution" toggle; student never contains a graded function's body (host it for a class).
EDITION ?= self-study
BOOK_HTML := $(if $(filter student,$(EDITION)),_build/student/html,_build/html)

book: $(VENV)/.book-deps $(MATHJAX) browser graphviz
	$(PY) scripts/book_cache.py
	$(PY) scripts/build_book.py $(EDITION)
	$(PY) scripts/check_book.py $(BOOK_HTML) $(if $(filter student,$(EDITION)),--student)
	@echo "The $(EDITION) edition of the book is in $(BOOK_HTML)/index.html"

test: $(VENV)/.test-deps $(MATHJAX) browser graphviz
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

# The chapters come from the course manifest, course.toml (instructor/manifest.py).
CHAPTERS = $$($(PY) -m instructor.manifest)

exercises: $(VENV)/.book-deps
	chapters="$(CHAPTERS)"; for chapter in $$chapters; do \
	    $(VENV)/bin/nbgrader generate_assignment "$$chapter" --force; \
	done

bench: $(VENV)/.test-deps
	for script in bench/bench_*.py; do $(PY) "$$script"; done

WORKERS ?= 1
DB ?=
STUDENTS ?= 30

release: $(VENV)/.book-deps
	chapters="$(CHAPTERS)"; $(PY) -m instructor release $$chapters

# Feedback inlines the local MathJax (instructor/feedback.py), hence the MathJax target.
autograde: $(VENV)/.book-deps $(MATHJAX)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make autograde SUBMISSIONS=folder [WORKERS=4 DB=--postgres]"; exit 2; }
	$(PY) -m instructor autograde "$(SUBMISSIONS)" --workers $(WORKERS) $(DB)

simulate-class: $(VENV)/.test-deps $(MATHJAX)
	$(PY) -m instructor.simulate_class --students $(STUDENTS) --workers $(WORKERS) $(DB)

clean:
	rm -rf _build gradebook.db report
