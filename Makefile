# hax: build the programs into bin/, the tests into build/tests/.
#
#   make               programs (CPU suite; the CUDA parts too where nvcc is found)
#   make test          every test that needs no GPU (tests/run.sh)
#   make test-gpu      CUDA ops against their CPU ops, then tests/gpu_multi.sh
#                      (NCCL on 2+ GPUs; skips without a GPU / with one)
#   make bench-cpu     forward+backward tokens/s of the CPU engine
#   make bench-datagen dataset generation speed
#   make bench-gpu     the CUDA engine on every Table 1 config and regime, hax-train
#                      and hax-eval on the GPU (skips without a GPU)
#
# Library prefixes can be set for machines where they are not installed
# system-wide, e.g. make YAML_PREFIX=$PWD/.deps/usr BLAS_PREFIX=...

# Output folders: make BUILD=build-asan BINDIR=build-asan/bin keeps a second
# build (the sanitizer one, make test-asan) beside the normal one.
BUILD    ?= build
BINDIR   ?= bin
CC       ?= mpicc
ifeq ($(origin CC),default)
CC       := mpicc
endif
OPT      ?= -O2 -march=x86-64-v2
CFLAGS   += -std=c11 $(OPT) -g -Wall -Wextra -Werror -fopenmp -D_GNU_SOURCE -I.
LDLIBS   += -lm -lpthread

# libyaml (static where a prefix is given, so a carried copy needs no install)
YAML_PREFIX ?=
ifneq ($(YAML_PREFIX),)
CFLAGS   += -I$(YAML_PREFIX)/include
YAML_LIB := $(firstword $(wildcard $(YAML_PREFIX)/lib/x86_64-linux-gnu/libyaml.a $(YAML_PREFIX)/lib/libyaml.a))
else
YAML_LIB := -lyaml
endif

# OpenBLAS (Debian's pthread build by default)
BLAS_PREFIX ?= /usr
BLAS_INC := $(firstword $(wildcard $(BLAS_PREFIX)/include/x86_64-linux-gnu/openblas-pthread $(BLAS_PREFIX)/include/openblas $(BLAS_PREFIX)/include))
BLAS_DIR := $(firstword $(wildcard $(BLAS_PREFIX)/lib/x86_64-linux-gnu/openblas-pthread $(BLAS_PREFIX)/lib))
CFLAGS   += -I$(BLAS_INC)
BLAS_LIB ?= -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas
# BLAS=none: no BLAS library; src/ops/linear.c then uses its own plain C sgemm
# (for machines without OpenBLAS, such as the GPU nodes, where the CPU ops only
# serve as the oracle of small tests). Run make clean when switching.
ifeq ($(BLAS),none)
CFLAGS   += -DHAX_NO_BLAS
BLAS_LIB :=
endif

# CUDA, where the toolkit is present
NVCC     ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA_ARCH ?= sm_90
CU_DIRS  := cuda/core cuda/ops cuda/sparse cuda/engine
CU_SRC   := $(foreach d,$(CU_DIRS),$(wildcard $(d)/*.cu))
ifneq ($(and $(NVCC),$(CU_SRC)),)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS ?= -O3 -std=c++17 -arch=$(CUDA_ARCH) -Xcompiler -Wall,-Wextra,-Werror -I.
CFLAGS   += -DHAX_CUDA -I$(CUDA_HOME)/include
CUDA_LIB := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lnccl -lstdc++
else
CU_DIRS  :=
endif

# The code is in layers, one static library per folder (build/lib/libhax_*.a;
# tests/test_layers.sh checks that no folder includes a layer above it).
# Every .c of a folder goes into its library, except program mains, named
# *_main.c: FOLDER/hax_NAME_main.c becomes bin/hax-NAME. Every recipe writes a
# temporary file and renames it: several builds may run at once in one tree.
C_DIRS   := src/core src/io src/model src/config src/ops src/sparse src/engine src/train src/prog \
            mpi data-gen analysis
lib_of    = $(BUILD)/lib/libhax_$(subst /,_,$(patsubst src/%,%,$(subst data-gen,datagen,$(1)))).a
ALL_C    := $(foreach d,$(C_DIRS),$(wildcard $(d)/*.c))
MAIN_C   := $(filter %_main.c,$(ALL_C))
PROGS    := $(foreach m,$(MAIN_C),$(BINDIR)/$(subst _,-,$(patsubst %_main,%,$(basename $(notdir $(m))))))
LIB_DIRS := $(foreach d,$(C_DIRS) $(CU_DIRS),$(if $(filter-out %_main.c,$(wildcard $(d)/*.c $(d)/*.cu)),$(d)))
HAX_LIBS := $(foreach d,$(LIB_DIRS),$(call lib_of,$(d)))
TEST_C   := $(wildcard tests/test_*.c)
TESTS    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_C))
# Static libraries in a group (they call each other both ways: the engine
# calls the CUDA backend's table, the backend the CPU helpers); shared
# libraries only where a program uses them (--as-needed).
LIBS     := -Wl,--start-group $(HAX_LIBS) -Wl,--end-group -Wl,--as-needed $(YAML_LIB) $(BLAS_LIB) $(CUDA_LIB) $(LDLIBS)
# GPU test programs (tests/gpu_*.c -> build/gpu/gpu_*): built where CUDA is,
# run by make test-gpu only (tests/run.sh runs build/tests/test_* alone).
GPU_TESTS := $(if $(CU_DIRS),$(patsubst tests/%.c,$(BUILD)/gpu/%,$(wildcard tests/gpu_*.c)))
# The GPU benchmarks (tests/bench_gpu.c -> build/gpu/bench_gpu, run by make
# bench-gpu; tests/bench_allreduce.c -> build/gpu/bench_allreduce, run by
# tests/gpu_multi.sh; both outside run_gpu.sh's build/gpu/gpu_* glob).
GPU_BENCH := $(if $(CU_DIRS),$(BUILD)/gpu/bench_gpu $(BUILD)/gpu/bench_allreduce)
DEPFLAGS  = -MMD -MP -MF $(basename $@).d -MT $@

# Parallel jobs of the builds that test, demo and asan start themselves
# (every recipe writes aside and renames, so parallel builds are safe).
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps test test-gpu bench-cpu bench-datagen bench-gpu bench-eval-gpu clean
all: $(PROGS) $(TESTS) $(GPU_TESTS) $(GPU_BENCH)

# Installs the Debian packages once (a no-op when they are there).
deps:
	@bash .ci/install-deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -c $< -o $@.$$$$.tmp && mv $@.$$$$.tmp $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(DEPFLAGS) -c $< -o $@.$$$$.tmp && mv $@.$$$$.tmp $@

# build/lib/libhax_FOLDER.a from the objects of one folder (built aside and
# renamed, so concurrent builds never see half an archive)
define lib_rule
$(call lib_of,$(1)): $(patsubst %,$(BUILD)/%.o,$(basename $(filter-out %_main.c,$(wildcard $(1)/*.c $(1)/*.cu))))
	@mkdir -p $(BUILD)/lib
	ar rcs $$@.$$$$$$$$.tmp $$^ && mv $$@.$$$$$$$$.tmp $$@
endef
$(foreach d,$(LIB_DIRS),$(eval $(call lib_rule,$(d))))

# bin/hax-NAME from whichever folder holds hax_NAME_main.c
define prog_rule
$(BINDIR)/$(subst _,-,$(patsubst %_main,%,$(basename $(notdir $(1))))): $(BUILD)/$(1:.c=.o) $(HAX_LIBS)
	@mkdir -p $(BINDIR)
	$$(CC) $$(CFLAGS) $$< -o $$@.$$$$$$$$.tmp $$(LIBS) && mv $$@.$$$$$$$$.tmp $$@
endef
$(foreach m,$(MAIN_C),$(eval $(call prog_rule,$(m))))

$(BUILD)/tests/%: tests/%.c $(HAX_LIBS)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS) $(DEPFLAGS) -Itests $< -o $@.$$$$.tmp $(LIBS) && mv $@.$$$$.tmp $@

$(BUILD)/gpu/%: tests/%.c $(HAX_LIBS)
	@mkdir -p $(BUILD)/gpu
	$(CC) $(CFLAGS) $(DEPFLAGS) -Itests $< -o $@.$$$$.tmp $(LIBS) && mv $@.$$$$.tmp $@

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	tests/run.sh

test-gpu: all
	tests/run_gpu.sh

bench-cpu: all
	tests/bench_cpu.sh

bench-datagen: all
	tests/bench_datagen.sh

# tests/bench_gpu.sh: the table of build/gpu/bench_gpu, hax-train 2,000 steps
# of mamba2_hax and mamba2, then tests/bench_eval_gpu.sh (hax-eval throughput
# against the sample length); SKIP without a CUDA device.
bench-gpu: all
	tests/bench_gpu.sh

bench-eval-gpu: all
	tests/bench_eval_gpu.sh

# The README's first command: a small Mamba+HAX trained on the CPU on
# associative recall (its dataset is generated into data/demo the first
# time), then scored per cell by hax-eval, with the figures in results/tiny_demo/figs.
.PHONY: demo
demo: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	bin/hax-train configs/tiny_demo.yaml
	bin/hax-eval results/tiny_demo/lr_0.003/seed_1/best.safetensors --data data/demo --plot results/tiny_demo/figs

# The CPU suite under AddressSanitizer and UBSan, built into build-asan/
# (CPU only: NVCC= ), run with tests/run.sh against those binaries.
ASAN_OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_ENV := HAX_BUILD=build-asan HAX_BIN=$(CURDIR)/build-asan/bin ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
.PHONY: asan test-asan fuzz
asan: deps
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-asan BINDIR=build-asan/bin NVCC= OPT="$(ASAN_OPT)" all
test-asan: asan
	$(ASAN_ENV) tests/run.sh

# Seeded mutation runs over every reader (tests/fuzz.sh): FUZZ_N inputs per
# reader, FUZZ_SEED; fails on a crash, a hang or a modified file.
FUZZ_N ?= 300
FUZZ_SEED ?= 1
fuzz: all
	tests/fuzz.sh $(FUZZ_N) $(FUZZ_SEED)

clean:
	rm -rf build bin build-asan
