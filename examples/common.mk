# What the example Makefiles share. An including Makefile sets its variables (COMP, RAW, DATA, RUNS, OUT, FOLDS,
# EPOCHS, SEED, KCOMP, DEVICE, NGPU, RECIPE, ...) and writes the rule for $(DATA)/index.parquet (how its competition
# is prepped). Part 1 is for every example; part 2 is the two-model chain
#   split -> train (one job per model and fold) -> oof + tta per model -> ensemble -> tune-threshold -> submit
# that cassava, demo, clouds and vesuvius use. A Makefile with a chain of its own (siim-covid19) sets CHAIN = own.

.DELETE_ON_ERROR:
.SUFFIXES:
.DEFAULT_GOAL := all

# --- part 1: every example -------------------------------------------------------------------------------------

TASK     ?= cls
STRATEGY ?= stratified
# Options of both `kcomp oof` and `kcomp tta` (e.g. --out-size 350x525 for Clouds' maps).
PREDICT  ?=
# Multi-scale TTA for cls/seg/det, e.g. TTA_SCALES=0.9,1,1.1: both `oof` and `tta` average these input scales
# (with the TTA flip views at each), so CV measures what the submission does. Empty: the training size only.
TTA_SCALES ?=
SCALES  = $(if $(TTA_SCALES),--tta-scales $(TTA_SCALES))
INDEX  := $(DATA)/index.parquet
SPLIT  := $(DATA)/folds$(FOLDS).parquet
KS     := $(shell seq 0 $$(( $(FOLDS) - 1 )))
# Fold k's job sees GPU k % NGPU only (as cuda:0), so `make -jN NGPU=N` trains N folds on N GPUs at once.
GPU     = $(if $(filter-out 0,$(NGPU)),CUDA_VISIBLE_DEVICES=$$(( $* % $(NGPU) )) )

# A fold is done when `kcomp train --json` has printed its summary: best.pt is rewritten during training, so it
# cannot mark completion, and make would delete a half-trained fold's best.pt on Ctrl-C, which resuming may
# never rewrite. The summary is written to a temporary name and renamed, like every kcomp output.
# $(call done,RUN): the fold markers RUN/foldK/train.json of a run directory.
done = $(foreach k,$(KS),$(1)/fold$(k)/train.json)

# A model's recipe: a YAML file of `kcomp train` options (examples/*/recipes/*.yaml), given as `--config FILE`;
# the flags on the command line (MODEL, IMG, EPOCHS, SEED, FLAGS, EXTRA, ...) win over it.
# $(call recipe,FILE): `--config FILE`, or nothing when FILE is empty.
recipe = $(if $(strip $(1)),--config $(strip $(1)))

# $(eval $(call train_folds,RUN,TASK,OPTIONS)): one target per fold of RUN, each training that fold of TASK
# with OPTIONS (model, size, recipe, the run's own flags), so `make -j` trains folds in parallel.
define train_folds
$(call done,$(1)): $(1)/fold%/train.json: $(SPLIT)
	mkdir -p $$(@D)
	$$(GPU)$(KCOMP) train $(2) --folds $(SPLIT) --fold $$* --epochs $(EPOCHS) --seed $(SEED) --device $(DEVICE) \
	  -o $(1) $(strip $(3)) --json > $$@.tmp
	mv $$@.tmp $$@
endef

$(SPLIT): $(INDEX)
	$(KCOMP) split $< -o $@ --folds $(FOLDS) --strategy $(STRATEGY) --seed $(SEED)

# --- part 2: the two-model chain -------------------------------------------------------------------------------
ifneq ($(CHAIN),own)

ifeq ($(NAME),$(NAME2))
$(error NAME and NAME2 are both '$(NAME)': the two models need their own run directories)
endif

RUN    := $(RUNS)/$(NAME)
RUN2   := $(RUNS)/$(NAME2)
DONE   := $(call done,$(RUN))
DONE2  := $(call done,$(RUN2))
REPORT := $(OUT)/report/index.html

.PHONY: all index folds train oof tta ensemble thresholds submission report clean clean-runs
all: submission
index: $(INDEX)
folds: $(SPLIT)
train: $(DONE) $(DONE2)
oof: $(OUT)/oof_$(NAME).parquet $(OUT)/oof_$(NAME2).parquet
tta: $(OUT)/test_$(NAME).parquet $(OUT)/test_$(NAME2).parquet
ensemble: $(OUT)/oof_ens.parquet $(OUT)/test_ens.parquet
thresholds: $(OUT)/thresholds.json
submission: $(OUT)/submission.csv
report: $(REPORT)

# $(INDEX) (how `kcomp prep` is called) is each competition's own rule.

$(eval $(call train_folds,$(RUN),$(TASK),$(if $(IMG),--img-size $(IMG)) --model $(MODEL) \
  $(call recipe,$(RECIPE)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(FLAGS) $(EXTRA)))
$(eval $(call train_folds,$(RUN2),$(TASK),$(if $(IMG),--img-size $(IMG)) --model $(MODEL2) \
  $(call recipe,$(RECIPE2)) $(if $(WEIGHTS2),--weights $(WEIGHTS2)) $(FLAGS2) $(EXTRA)))

# Out-of-fold predictions use the same TTA as the test predictions, so CV and leaderboard stay comparable.
$(OUT)/oof_$(NAME).parquet: $(DONE)
	$(KCOMP) oof $(RUN) -o $@ --tta $(TTA) --device $(DEVICE) $(PREDICT) $(SCALES)

$(OUT)/oof_$(NAME2).parquet: $(DONE2)
	$(KCOMP) oof $(RUN2) -o $@ --tta $(TTA) --device $(DEVICE) $(PREDICT) $(SCALES)

$(OUT)/test_$(NAME).parquet: $(DONE)
	$(KCOMP) tta $(RUN) -o $@ --tta $(TTA) --device $(DEVICE) $(PREDICT) $(SCALES)

$(OUT)/test_$(NAME2).parquet: $(DONE2)
	$(KCOMP) tta $(RUN2) -o $@ --tta $(TTA) --device $(DEVICE) $(PREDICT) $(SCALES)

$(OUT)/oof_ens.parquet: $(OUT)/oof_$(NAME).parquet $(OUT)/oof_$(NAME2).parquet
	$(KCOMP) ensemble $^ -o $@ --method $(ENSEMBLE)

$(OUT)/test_ens.parquet: $(OUT)/test_$(NAME).parquet $(OUT)/test_$(NAME2).parquet
	$(KCOMP) ensemble $^ -o $@ --method $(ENSEMBLE)

$(OUT)/thresholds.json: $(OUT)/oof_ens.parquet
	$(KCOMP) tune-threshold $< -o $@

$(OUT)/submission.csv: $(OUT)/thresholds.json $(OUT)/test_ens.parquet
	$(KCOMP) submit $(COMP) $(OUT)/test_ens.parquet -o $@ --thresholds $< --sample $(RAW)/sample_submission.csv

# `make report`: training curves of both runs, the ensemble's OOF and test predictions and its thresholds as
# PNGs + one static page, $(OUT)/report/index.html (opens from disk).
$(REPORT): $(DONE) $(DONE2) $(OUT)/oof_ens.parquet $(OUT)/test_ens.parquet $(OUT)/thresholds.json
	$(KCOMP) report $(RUN) $(RUN2) $(OUT)/oof_ens.parquet $(OUT)/test_ens.parquet $(OUT)/thresholds.json \
	  -o $(@D)

# `make stack` (classification only): a logistic regression (STACKER) over both models' OOF probabilities instead
# of the plain average; its cross-validated level-2 OOF is scored and tuned like the ensemble's. One command
# writes both files; the level-2 OOF is the target because it is written last.
ifeq ($(TASK),cls)
.PHONY: stack
stack: $(OUT)/submission_stack.csv

$(OUT)/oof_stack.parquet: $(OUT)/oof_$(NAME).parquet $(OUT)/oof_$(NAME2).parquet \
                          $(OUT)/test_$(NAME).parquet $(OUT)/test_$(NAME2).parquet
	$(KCOMP) stack $(OUT)/oof_$(NAME).parquet $(OUT)/oof_$(NAME2).parquet \
	  --test $(OUT)/test_$(NAME).parquet --test $(OUT)/test_$(NAME2).parquet --model $(STACKER) --seed $(SEED) \
	  -o $(OUT)/test_stack.parquet --oof-output $@
$(OUT)/test_stack.parquet: $(OUT)/oof_stack.parquet

$(OUT)/thresholds_stack.json: $(OUT)/oof_stack.parquet
	$(KCOMP) tune-threshold $< -o $@

$(OUT)/submission_stack.csv: $(OUT)/thresholds_stack.json $(OUT)/test_stack.parquet
	$(KCOMP) submit $(COMP) $(OUT)/test_stack.parquet -o $@ --thresholds $< --sample $(RAW)/sample_submission.csv
endif

# Predictions and the report only; `clean-runs` also removes this example's two run directories (checkpoints!).
# Dense maps (seg, ink) live in an .npz beside each predictions table.
clean:
	rm -f $(foreach f,oof_$(NAME) oof_$(NAME2) test_$(NAME) test_$(NAME2) oof_ens test_ens oof_stack test_stack,\
	      $(OUT)/$(f).parquet $(OUT)/$(f).npz) \
	      $(OUT)/thresholds.json $(OUT)/submission.csv $(OUT)/thresholds_stack.json $(OUT)/submission_stack.csv
	rm -rf $(OUT)/report
clean-runs: clean
	rm -rf $(RUN) $(RUN2)

endif
