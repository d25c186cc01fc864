# The chain shared by the example Makefiles: split -> train (one job per model and fold) -> oof + tta per model
# -> ensemble -> tune-threshold -> submit. An including Makefile sets COMP and the variables, and writes the rule
# for $(DATA)/index.parquet (how its competition is prepped).

.DELETE_ON_ERROR:
.SUFFIXES:
.DEFAULT_GOAL := all

ifeq ($(NAME),$(NAME2))
$(error NAME and NAME2 are both '$(NAME)': the two models need their own run directories)
endif

INDEX  := $(DATA)/index.parquet
SPLIT  := $(DATA)/folds$(FOLDS).parquet
RUN    := $(RUNS)/$(NAME)
RUN2   := $(RUNS)/$(NAME2)
KS     := $(shell seq 0 $$(( $(FOLDS) - 1 )))
# A fold is done when `kcomp train --json` has printed its summary: best.pt is rewritten during training, so it
# cannot mark completion, and make would delete a half-trained fold's best.pt on Ctrl-C, which resuming may
# never rewrite. The summary is written to a temporary name and renamed, like every kcomp output.
DONE   := $(foreach k,$(KS),$(RUN)/fold$(k)/train.json)
DONE2  := $(foreach k,$(KS),$(RUN2)/fold$(k)/train.json)
GPU     = $(if $(filter-out 0,$(NGPU)),CUDA_VISIBLE_DEVICES=$$(( $* % $(NGPU) )) )
TRAIN   = $(KCOMP) train cls --folds $(SPLIT) --fold $* --img-size $(IMG) --epochs $(EPOCHS) --seed $(SEED) \
          --device $(DEVICE)

.PHONY: all index folds train oof tta ensemble thresholds submission stack clean clean-runs
all: submission
index: $(INDEX)
folds: $(SPLIT)
train: $(DONE) $(DONE2)
oof: $(OUT)/oof_$(NAME).parquet $(OUT)/oof_$(NAME2).parquet
tta: $(OUT)/test_$(NAME).parquet $(OUT)/test_$(NAME2).parquet
ensemble: $(OUT)/oof_ens.parquet $(OUT)/test_ens.parquet
thresholds: $(OUT)/thresholds.json
submission: $(OUT)/submission.csv
stack: $(OUT)/submission_stack.csv

# $(INDEX) (how `kcomp prep` is called) is each competition's own rule.

$(SPLIT): $(INDEX)
	$(KCOMP) split $< -o $@ --folds $(FOLDS) --strategy stratified --seed $(SEED)

$(DONE): $(RUN)/fold%/train.json: $(SPLIT)
	mkdir -p $(@D)
	$(GPU)$(TRAIN) -o $(RUN) --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(FLAGS) $(EXTRA) \
	  --json > $@.tmp
	mv $@.tmp $@

$(DONE2): $(RUN2)/fold%/train.json: $(SPLIT)
	mkdir -p $(@D)
	$(GPU)$(TRAIN) -o $(RUN2) --model $(MODEL2) $(if $(WEIGHTS2),--weights $(WEIGHTS2)) $(FLAGS2) $(EXTRA) \
	  --json > $@.tmp
	mv $@.tmp $@

# Out-of-fold predictions use the same TTA as the test predictions, so CV and leaderboard stay comparable.
$(OUT)/oof_$(NAME).parquet: $(DONE)
	$(KCOMP) oof $(RUN) -o $@ --tta $(TTA) --device $(DEVICE)

$(OUT)/oof_$(NAME2).parquet: $(DONE2)
	$(KCOMP) oof $(RUN2) -o $@ --tta $(TTA) --device $(DEVICE)

$(OUT)/test_$(NAME).parquet: $(DONE)
	$(KCOMP) tta $(RUN) -o $@ --tta $(TTA) --device $(DEVICE)

$(OUT)/test_$(NAME2).parquet: $(DONE2)
	$(KCOMP) tta $(RUN2) -o $@ --tta $(TTA) --device $(DEVICE)

$(OUT)/oof_ens.parquet: $(OUT)/oof_$(NAME).parquet $(OUT)/oof_$(NAME2).parquet
	$(KCOMP) ensemble $^ -o $@ --method $(ENSEMBLE)

$(OUT)/test_ens.parquet: $(OUT)/test_$(NAME).parquet $(OUT)/test_$(NAME2).parquet
	$(KCOMP) ensemble $^ -o $@ --method $(ENSEMBLE)

$(OUT)/thresholds.json: $(OUT)/oof_ens.parquet
	$(KCOMP) tune-threshold $< -o $@

$(OUT)/submission.csv: $(OUT)/thresholds.json $(OUT)/test_ens.parquet
	$(KCOMP) submit $(COMP) $(OUT)/test_ens.parquet -o $@ --thresholds $< --sample $(RAW)/sample_submission.csv

# `make stack`: a logistic regression (STACKER) over both models' OOF probabilities instead of the plain average;
# its cross-validated level-2 OOF is scored and tuned like the ensemble's. One command writes both files; the
# level-2 OOF is the target because it is written last.
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

# Predictions only; `clean-runs` also removes this example's two run directories (checkpoints!).
clean:
	rm -f $(OUT)/oof_$(NAME).parquet $(OUT)/oof_$(NAME2).parquet $(OUT)/test_$(NAME).parquet \
	      $(OUT)/test_$(NAME2).parquet $(OUT)/oof_ens.parquet $(OUT)/test_ens.parquet $(OUT)/thresholds.json \
	      $(OUT)/submission.csv $(OUT)/oof_stack.parquet $(OUT)/test_stack.parquet $(OUT)/thresholds_stack.json \
	      $(OUT)/submission_stack.csv
clean-runs: clean
	rm -rf $(RUN) $(RUN2)
