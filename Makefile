# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup bench clean default-model real-tokenizer parent-vae tokenizer-on-parent \
	tokenizer-no-text-loss model-on-parent default-tokenizer model-conv128 refiner-conv128 \
	refiner-flow128 refiner-flow128-unet refiner-flow128-unet-k2

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,deepspeed,bench,data]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pyratok info
	HF_HUB_OFFLINE=1 $(VENV)/bin/pyratok demo --prompt "a red circle moving left" --seed 0 --out outputs

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests

bench: $(STAMP)
	for f in bench/bench_*.py; do HF_HUB_OFFLINE=1 $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) outputs runs

# The shipped default model (checkpoints/pyratok-shapes-tiny: 17x128x128 clips), retrained from the parent VAE
# with the project's own scripts (CPU, about 5 hours on 2 cores; its README records each stage's command and wall
# time): the shipped tokenizer (`default-tokenizer`); 400 steps of it with the AR objective at 5.0 and its own
# alignment stage, then its decoder alone fine-tuned on two-object clips and on the unquantized latent (neither
# changes the tokens, so the cache is built from the tokenizer stage);
# a 17x128x128 token cache (2,000 Shapes clips and 1,000 two-object ones, with their unquantized latents); the
# generator reading one vector per phrase; the U-Net flow refiner in four stages (configs/refiner/flow128_unet*.yaml,
# the last drawing the unquantized latent); the pipeline in fp16.
# Every step resumes from its latest checkpoint under runs/default.
DM := runs/default
DM_ALIGN_STEPS ?= 1200
define dm_refiner
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m generator.train_refiner --config configs/refiner/$(1).yaml \
	  --resume_from_checkpoint latest --set data.token_cache_dir=$(DM)/token_cache train.output_dir=$(DM)/refiner_$(1) $(2)
endef
default-model: default-tokenizer
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m pyratok.train --config configs/tokenizer/on_parent.yaml \
	  --output_dir $(DM)/tokenizer --resume_from_checkpoint latest --set train.init_from=checkpoints/pyratok-tokenizer-tiny \
	  train.quantizer_fit_steps=0 train.max_steps=400 loss.ar=5.0
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m pyratok.train_alignment --tokenizer $(DM)/tokenizer/tokenizer \
	  --output_dir $(DM)/alignment --resume_from_checkpoint latest --set train.max_steps=$(DM_ALIGN_STEPS)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(ACCEL2) -m pyratok.train --config configs/tokenizer/decoder_pairs.yaml \
	  --output_dir $(DM)/decoder --resume_from_checkpoint latest
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(ACCEL2) -m generator.build_cache --tokenizer $(DM)/tokenizer/tokenizer \
	  --out $(DM)/token_cache --n 2000 --two-objects 1000 --seed 0 --size 128 --batch-size 8 --latents
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(ACCEL2) -m generator.train --config configs/generator/shapes_parent_conv128.yaml \
	  --resume_from_checkpoint latest --set data.token_cache_dir=$(DM)/token_cache train.output_dir=$(DM)/generator \
	  model.phrase_tokens=true model.word_tokens=false
	$(call dm_refiner,flow128_unet,)
	$(call dm_refiner,flow128_unet_more,train.init_from=$(DM)/refiner_flow128_unet/refiner)
	$(call dm_refiner,flow128_unet_k2,train.init_from=$(DM)/refiner_flow128_unet_more/refiner)
	$(call dm_refiner,flow128_unet_k2_latent,train.init_from=$(DM)/refiner_flow128_unet_k2/refiner)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.assemble --tokenizer $(DM)/decoder/tokenizer --generator $(DM)/generator/generator \
	  --refiner $(DM)/refiner_flow128_unet_k2_latent/refiner --out checkpoints/pyratok-shapes-tiny --sample-size 128 \
	  --raw-weights --half --compose-phrases

# The shipped tokenizer fine-tuned on real clips with bit whitening (~50 min on 2 CPU cores), then its
# reconstruction and codebook utilization on 96 real 17x128x128 clips, encoded with and without their caption.
REAL := runs/tokenizer-real
real-tokenizer: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pyratok.train --config configs/tokenizer/tiny_real.yaml --resume_from_checkpoint latest \
	  --set train.output_dir=$(REAL)
	# two 150-step stages at 128x128, as measured: the cosine schedule's tail follows train.max_steps of each
	for steps in 550 700; do HF_HUB_OFFLINE=1 $(PY) -m pyratok.train --config $(REAL)/config.yaml \
	  --resume_from_checkpoint latest --set train.max_steps=$$steps data.height=128 data.width=128 || exit 1; done
	HF_HUB_OFFLINE=1 $(PY) -m pyratok.evaluate --checkpoint $(REAL)/tokenizer --data real --size 128 --num-clips 96 \
	  --batch-size 4 --captioned --out $(REAL)/eval_captioned
	HF_HUB_OFFLINE=1 $(PY) -m pyratok.evaluate --checkpoint $(REAL)/tokenizer --data real --size 128 --num-clips 96 \
	  --batch-size 4 --out $(REAL)/eval_uncaptioned

# The parent VAE (a continuous AutoencoderKLWan, the stand-in for Wan 2.1) on packaged natural photos and
# bikes, then evaluated beside the blur at the same compression on what it never saw: the carphone clip
# and the held-out photos (pyratok/data/natural.py names them), and on its training clip.
PARENT := runs/parent-vae
parent-vae: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pyratok.train_parent --config configs/parent/tiny.yaml \
	  --output_dir $(PARENT) --resume_from_checkpoint latest
	for data in heldout-real heldout-images train-real; do HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pyratok.evaluate \
	  --checkpoint $(PARENT)/vae --data $$data --size 128 --num-clips 16 --seed 1234 --out $(PARENT)/eval_$$data \
	  || exit 1; done

# LaPQ on the frozen parent (encoder and decoder frozen, carphone still held out), then the same evaluation:
# the tokenizer's PSNR beside the parent's own (z decoded unquantized) and the blur, latent SNR, utilization.
# PARENT_VAE=runs/parent-vae/vae takes the parent that `make parent-vae` retrained instead of the shipped one.
ON_PARENT := runs/tokenizer-on-parent
PARENT_VAE ?= checkpoints/pyratok-vae-tiny
tokenizer-on-parent: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pyratok.train --config configs/tokenizer/on_parent.yaml \
	  --pretrained_vae $(PARENT_VAE) --output_dir $(ON_PARENT) --resume_from_checkpoint latest
	for data in heldout-real heldout-images train-real; do HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pyratok.evaluate \
	  --checkpoint $(ON_PARENT)/tokenizer --data $$data --size 128 --num-clips 16 --seed 1234 \
	  --out $(ON_PARENT)/eval_$$data || exit 1; done

# The understanding ablation: the same recipe without text losses (no contrastive alignment), scored by
# bench/eval_understanding.py --ablation beside the tokenizer trained with them.
NO_TEXT := runs/tokenizer-on-parent-no-text
tokenizer-no-text-loss: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pyratok.train --config configs/tokenizer/on_parent.yaml \
	  --pretrained_vae $(PARENT_VAE) --output_dir $(NO_TEXT) --resume_from_checkpoint latest --set loss.align=0.0

# The shipped tokenizer (checkpoints/pyratok-tokenizer-tiny): `tokenizer-on-parent` (with its evaluation),
# its alignment stage, written in fp16. Zero-shot understanding uses it by default.
MOP := runs/model-on-parent
MOP_ALIGN_STEPS ?= 1200
default-tokenizer: tokenizer-on-parent
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pyratok.train_alignment --tokenizer $(ON_PARENT)/tokenizer \
	  --output_dir $(MOP)/alignment --resume_from_checkpoint latest --set train.max_steps=$(MOP_ALIGN_STEPS)
	HF_HUB_OFFLINE=1 $(PY) -m pyratok.export --tokenizer $(MOP)/alignment/alignment \
	  --out checkpoints/pyratok-tokenizer-tiny

# The text-to-video chain on the shipped tokenizer: token cache (single-object Shapes clips, then half as many
# two-object ones) and generator on 17x64x64 clips, then the generator carried on to 17x128x128 clips (a new
# stage started from the 64x64 weights), each stage assembled into a pipeline under $(MOP). Not the shipped
# model: at 64x64 it draws shapes worse than the shipped one (README, "Text to video"). The tokens do not
# depend on the alignment head, so the caches are built from the tokenizer stage.
MOP_GEN128_STEPS ?= 1500
model-on-parent: default-tokenizer
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m generator.build_cache --tokenizer $(ON_PARENT)/tokenizer \
	  --out $(MOP)/token_cache --n 2000 --two-objects 1000 --seed 0
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m generator.train --config configs/generator/shapes_parent.yaml \
	  --resume_from_checkpoint latest
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.assemble --tokenizer $(MOP)/alignment/alignment \
	  --generator $(MOP)/generator/generator --out $(MOP)/pipeline-64
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m generator.build_cache --tokenizer $(ON_PARENT)/tokenizer \
	  --out $(MOP)/token_cache_128 --n 1200 --two-objects 600 --seed 0 --size 128 --batch-size 8
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m generator.train --config configs/generator/shapes_parent.yaml \
	  --resume_from_checkpoint latest --set train.init_from=$(MOP)/generator/generator \
	  train.max_steps=$(MOP_GEN128_STEPS) train.batch_size=8 train.lr=0.0005 train.warmup_steps=20 train.save_every=50 \
	  "train.lr_scheduler_kwargs={num_decay_steps: 300, decay_type: linear}" \
	  data.token_cache_dir=$(MOP)/token_cache_128 train.output_dir=$(MOP)/generator_128
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.assemble --tokenizer $(MOP)/alignment/alignment \
	  --generator $(MOP)/generator_128/generator --out $(MOP)/pipeline-128 --sample-size 128

# The 17x128x128 generator with its finest level drawn by a 3D CNN (configs/generator/shapes_parent_conv128.yaml),
# from scratch on the shipped tokenizer, on two CPU processes: cache 9 min, generator 71 min. Not the shipped
# model (README, "The finest level drawn by a convolution").
ACCEL2 := $(VENV)/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no
model-conv128: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(ACCEL2) -m generator.build_cache --tokenizer checkpoints/pyratok-tokenizer-tiny \
	  --out $(MOP)/token_cache_conv128 --n 2000 --two-objects 1000 --seed 0 --size 128 --batch-size 8
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(ACCEL2) -m generator.train --config configs/generator/shapes_parent_conv128.yaml \
	  --resume_from_checkpoint latest
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.assemble --tokenizer checkpoints/pyratok-tokenizer-tiny \
	  --generator $(MOP)/generator_conv128/generator --out $(MOP)/pipeline-conv128 --sample-size 128 --raw-weights

# $(call refiner_train,NAME): train the refiner of configs/refiner/NAME.yaml (resumable).
define refiner_train
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m generator.train_refiner --config configs/refiner/$(1).yaml \
	  --resume_from_checkpoint latest
endef

# $(call refiner_chain,NAME,SUFFIX): train the refiner of configs/refiner/NAME.yaml for the `model-conv128`
# generator and assemble the pipeline $(MOP)/pipeline-conv128-SUFFIX with it.
define refiner_chain
	$(call refiner_train,$(1))
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.assemble --tokenizer checkpoints/pyratok-tokenizer-tiny \
	  --generator $(MOP)/generator_conv128/generator --refiner $(MOP)/refiner_$(1)/refiner \
	  --out $(MOP)/pipeline-conv128-$(2) --sample-size 128 --raw-weights
endef

# A latent refiner (generator.refiner, configs/refiner/conv128.yaml) for that generator, and its pipeline:
# ~13 min on two threads (README, "A latent refiner").
refiner-conv128: $(STAMP)
	$(call refiner_chain,conv128,refined)

# A flow refiner (generator.refiner mode "flow", configs/refiner/flow128.yaml): it draws the finest level from the
# generator's levels 0-2 and the caption; it learns from the cache alone (no generator in the loop), ~23 min.
refiner-flow128: $(STAMP)
	$(call refiner_chain,flow128,flow)

# The U-Net flow refiner (model.scales 3): stage 1 (configs/refiner/flow128_unet.yaml, ~35 min), then stage 2
# carries it on at a lower rate (flow128_unet_more.yaml, ~26 min), and its pipeline (README, "A U-Net flow refiner").
refiner-flow128-unet: $(STAMP)
	$(call refiner_train,flow128_unet)
	$(call refiner_chain,flow128_unet_more,flow-unet)

# That U-Net carried on as a refiner that draws level 2 too (configs/refiner/flow128_unet_k2.yaml, keep_levels 2,
# sigma_location 2, ~27 min), and its pipeline (README, "The refiner draws level 2 too", "Where the refiner lays a
# shape down").
refiner-flow128-unet-k2: refiner-flow128-unet
	$(call refiner_chain,flow128_unet_k2,flow-unet-k2)
