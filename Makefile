# Meridian build. `make` builds the library and programs into bin/;
# `make test` installs missing packages, builds and runs the suite;
# `make check` runs the same suite built with clang and ASan+UBSan.
# Sources are found by wildcard, so a new module or test needs no edit here:
#   common/*.c policy/*.c      -> libmeridian.a
#   <prog dir>/*.c             -> lib<prog>.a (all but main.c) + the program
#   tests/{unit,integration}/*_test.c -> one test program each
#   bench/*_bench.c            -> one benchmark program each

VARIANT ?= rel
PREFIX ?= /usr/local
DESTDIR ?=

ifeq ($(VARIANT),san)
CC := clang
OPT ?= -O1 -g -fno-omit-frame-pointer
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all
else
CC ?= cc
OPT ?= -O2 -g
SANFLAGS :=
endif

# B may be set to a private build folder (make B=build/mine ...).
B ?= build/$(VARIANT)
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(OPT) -Wall -Wextra -Werror \
	-I. $(SANFLAGS) -MMD -MP $(CFLAGS)
LIBS := -lnng -ljansson -lsodium -lcurl -lssl -lcrypto -lpthread -lm
LDFLAGS_ALL := $(SANFLAGS) $(LDFLAGS)

# Programs: directory -> binary name.
PROG_DIRS := broker site-agent cli
bin_broker := meridian-broker
bin_site-agent := meridian-agent
bin_cli := meridianctl

LIB_SRC := $(wildcard common/*.c policy/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(B)/obj/%.o)
LIBMER := $(B)/lib/libmeridian.a

# A program exists once its directory has a main.c.
PROGS_PRESENT := $(foreach d,$(PROG_DIRS),$(if $(wildcard $(d)/main.c),$(d)))
prog_lib = $(B)/lib/lib$(subst -,_,$(1)).a
prog_src = $(filter-out $(1)/main.c,$(wildcard $(1)/*.c))
PROG_LIBS := $(foreach d,$(PROG_DIRS),$(if $(call prog_src,$(d)),$(call prog_lib,$(d))))

ifeq ($(B),build/rel)
BINDIR := bin
else
BINDIR := $(B)/bin
endif
PROG_BINS := $(foreach d,$(PROGS_PRESENT),$(BINDIR)/$(bin_$(d)))

TESTLIB_SRC := $(wildcard tests/lib/*.c)
TESTLIB := $(B)/lib/libmertest.a
TEST_SRC := $(wildcard tests/unit/*_test.c tests/integration/*_test.c)
TEST_BINS := $(addprefix $(B)/tests/,$(notdir $(TEST_SRC:.c=)))
BENCH_SRC := $(wildcard bench/*_bench.c)
BENCH_BINS := $(addprefix $(B)/bench/,$(notdir $(BENCH_SRC:.c=)))
BENCH_TOOL_SRC := $(filter-out $(BENCH_SRC),$(wildcard bench/*.c))
BENCH_TOOLS := $(addprefix $(B)/bench/,$(notdir $(BENCH_TOOL_SRC:.c=)))

vpath %_test.c tests/unit tests/integration

.PHONY: all deps test check bench install clean build-tests build-bench fmt \
	demo demo-stop
.DEFAULT_GOAL := all
# Keep objects make thinks intermediate, so rebuilds stay incremental.
.SECONDARY:

all: $(PROG_BINS) $(LIBMER)

deps:
	@deploy/install-deps.sh --with-slurm

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(LIBMER): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

define prog_rules
$(call prog_lib,$(1)): $(patsubst %.c,$(B)/obj/%.o,$(call prog_src,$(1)))
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^

$(BINDIR)/$(bin_$(1)): $(B)/obj/$(1)/main.o $(if $(call prog_src,$(1)),$(call prog_lib,$(1))) $(LIBMER)
	@mkdir -p $$(dir $$@)
	$(CC) $(LDFLAGS_ALL) -o $$@ $$^ $(LIBS)
endef
$(foreach d,$(PROG_DIRS),$(eval $(call prog_rules,$(d))))

$(TESTLIB): $(TESTLIB_SRC:%.c=$(B)/obj/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(B)/tests/%_test: $(B)/obj/tests/unit/%_test.o $(TESTLIB) $(PROG_LIBS) $(LIBMER)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)
$(B)/tests/%_test: $(B)/obj/tests/integration/%_test.o $(TESTLIB) $(PROG_LIBS) $(LIBMER)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/bench/%: $(B)/obj/bench/%.o $(TESTLIB) $(PROG_LIBS) $(LIBMER)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

build-tests: $(PROG_BINS) $(TEST_BINS)
build-bench: $(PROG_BINS) $(BENCH_BINS) $(BENCH_TOOLS)

# Tests find the programs through MERIDIAN_BIN and fixtures from the top.
test: deps
	@$(MAKE) --no-print-directory build-tests
	@MERIDIAN_BIN=$(abspath $(BINDIR)) MERIDIAN_TOP=$(CURDIR) \
		tests/run.sh $(B)/tests $(T)

check: deps
	@$(MAKE) --no-print-directory VARIANT=san build-tests
	@MERIDIAN_BIN=$(abspath build/san/bin) MERIDIAN_TOP=$(CURDIR) \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		tests/run.sh build/san/tests $(T)

bench: deps
	@$(MAKE) --no-print-directory build-bench
	@MERIDIAN_BIN=$(abspath $(BINDIR)) MERIDIAN_TOP=$(CURDIR) \
		bench/run.sh $(B)/bench

# The local federation: etcd, a broker and sites on loopback (deploy/demo.sh).
demo: deps
	@$(MAKE) --no-print-directory all
	@deploy/demo.sh $(DEMO_ARGS)

demo-stop:
	@deploy/demo.sh --stop

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	$(if $(PROG_BINS),install -m 0755 $(PROG_BINS) $(DESTDIR)$(PREFIX)/bin/)
	install -d $(DESTDIR)$(PREFIX)/share/meridian/policy
	$(if $(wildcard policy/examples/*.json),install -m 0644 policy/examples/*.json $(DESTDIR)$(PREFIX)/share/meridian/policy/)

fmt:
	clang-format -i $(wildcard common/*.[ch] policy/*.[ch] broker/*.[ch] \
		site-agent/*.[ch] cli/*.[ch] tests/*.h tests/*/*.c bench/*.c)

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)
