# hax: build the programs into bin/, the tests into build/tests/.
#
#   make               programs (CPU suite; the CUDA parts too where nvcc is found)
#   make test          every test that needs no GPU (tests/run.sh)
#   make test-gpu      CUDA ops against their CPU ops (skips without a GPU)
#   make bench-cpu     forward+backward tokens/s of the CPU engine
#   make bench-datagen dataset generation speed
#
# Library prefixes can be set for machines where they are not installed
# system-wide, e.g. make YAML_PREFIX=$PWD/.deps/usr BLAS_PREFIX=...

CC       ?= mpicc
ifeq ($(origin CC),default)
CC       := mpicc
endif
OPT      ?= -O2 -march=x86-64-v2
CFLAGS   += -std=c11 $(OPT) -g -Wall -Wextra -Werror -fopenmp -D_GNU_SOURCE -Isrc -Impi -Idata-gen -Ianalysis
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
# BLAS=none: no BLAS library; src/linear.c then uses its own plain C sgemm
# (for machines without OpenBLAS, such as the GPU nodes, where the CPU ops only
# serve as the oracle of small tests). Run make clean when switching.
ifeq ($(BLAS),none)
CFLAGS   += -DHAX_NO_BLAS
BLAS_LIB :=
endif

# CUDA, where the toolkit is present
NVCC     ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CU_SRC   := $(wildcard cuda/*.cu)
ifneq ($(and $(NVCC),$(CU_SRC)),)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS ?= -O3 -std=c++17 -arch=sm_90 -Xcompiler -Wall,-Wextra,-Werror -Isrc -Icuda
CFLAGS   += -DHAX_CUDA -I$(CUDA_HOME)/include
CU_OBJ   := $(patsubst cuda/%.cu,build/cuda/%.o,$(CU_SRC))
CUDA_LIB := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lnccl -lstdc++
endif

# Every recipe writes a temporary file and renames it: several builds may
# run at once in one tree.
# Every .c under these folders goes into build/libhax.a, except program
# mains, named *_main.c: cuda/x/hax_NAME_main.c becomes bin/hax-NAME.
LIB_DIRS := src mpi data-gen analysis
ALL_C    := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c))
MAIN_C   := $(filter %_main.c,$(ALL_C))
LIB_C    := $(filter-out %_main.c,$(ALL_C))
LIB_OBJ  := $(patsubst %.c,build/%.o,$(LIB_C))
PROGS    := $(foreach m,$(MAIN_C),bin/$(subst _,-,$(patsubst %_main,%,$(basename $(notdir $(m))))))
TEST_C   := $(wildcard tests/test_*.c)
TESTS    := $(patsubst tests/%.c,build/tests/%,$(TEST_C))
LIBS     := build/libhax.a $(YAML_LIB) $(BLAS_LIB) $(CUDA_LIB) $(LDLIBS)
# GPU test programs (tests/gpu_*.c -> build/gpu/gpu_*): built where CUDA is,
# run by make test-gpu only (tests/run.sh runs build/tests/test_* alone).
GPU_TESTS := $(if $(CU_OBJ),$(patsubst tests/%.c,build/gpu/%,$(wildcard tests/gpu_*.c)))

.PHONY: all deps test test-gpu bench-cpu bench-datagen clean
all: $(PROGS) $(TESTS) $(GPU_TESTS)

# Installs the Debian packages once (a no-op when they are there).
deps:
	@bash .ci/install-deps.sh

build/%.o: %.c $(wildcard src/*.h mpi/*.h data-gen/*.h analysis/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@.$$$$.tmp && mv $@.$$$$.tmp $@

build/cuda/%.o: cuda/%.cu $(wildcard cuda/*.h cuda/*.cuh src/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@.$$$$.tmp && mv $@.$$$$.tmp $@

build/libhax.a: $(LIB_OBJ) $(CU_OBJ)
	@# built aside and renamed, so concurrent builds never see half an archive
	ar rcs $@.$$$$.tmp $^ && mv $@.$$$$.tmp $@

# bin/hax-NAME from whichever folder holds hax_NAME_main.c
define prog_rule
bin/$(subst _,-,$(patsubst %_main,%,$(basename $(notdir $(1))))): build/$(1:.c=.o) build/libhax.a
	@mkdir -p bin
	$$(CC) $$(CFLAGS) $$< -o $$@.$$$$$$$$.tmp $$(LIBS) && mv $$@.$$$$$$$$.tmp $$@
endef
$(foreach m,$(MAIN_C),$(eval $(call prog_rule,$(m))))

build/tests/%: tests/%.c tests/test.h build/libhax.a
	@mkdir -p build/tests
	$(CC) $(CFLAGS) -Itests $< -o $@.$$$$.tmp $(LIBS) && mv $@.$$$$.tmp $@

build/gpu/%: tests/%.c tests/test.h $(wildcard cuda/*.h) build/libhax.a
	@mkdir -p build/gpu
	$(CC) $(CFLAGS) -Itests -Icuda $< -o $@.$$$$.tmp $(LIBS) && mv $@.$$$$.tmp $@

test: deps
	@$(MAKE) --no-print-directory all
	tests/run.sh

test-gpu: all
	tests/run_gpu.sh

bench-cpu: all
	tests/bench_cpu.sh

bench-datagen: all
	tests/bench_datagen.sh

# The README's first command: a tiny Mamba+HAX trained on the CPU (its
# dataset is generated into data/tiny the first time).
.PHONY: demo
demo: deps
	@$(MAKE) --no-print-directory all
	bin/hax-train configs/tiny.yaml

clean:
	rm -rf build bin
