# The two commands a fresh machine needs (see README):
#   make run   builds the guard and runs it on this host, log-only (noop policy)
#   make test  installs what the tests need and runs every test, as root
GO ?= go
BIN := bin/oom-guard

.PHONY: build run test test-deps check unit fuzz bench test-oldkernel

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN) ./cmd/oom-guard

run: build
	./$(BIN) --policy=noop --port=9102 --webhook-url= --v=2 --logtostderr

test-deps:
	./scripts/test-deps

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...

# -p 1: the real-kernel tests share one machine's memory and CPUs; running
# packages in parallel would let one test's hog disturb another's timing.
test: test-deps check
	$(GO) test -p 1 -count=1 -timeout 60m ./...
	$(MAKE) test-oldkernel
	$(MAKE) fuzz

# The real-kernel v1 suites once more, with the system-call surface of an
# old kernel (cmd/oldkernel: a seccomp filter answering ENOSYS to every
# later call, and the old files' missing lines hidden): CentOS 7's 3.10
# (no pidfd, openat2, process_mrelease, oom_kill counter, NSpid) and 4.14
# (the same calls missing, the counter and NSpid there). Pre-emption,
# policies, container kill, child OOM reporting, kernel kills counted. The
# v2 and Kubernetes tests need what these kernels never had; they run above.
# So do the surveyor's fake-kernel tests (HandedOver): their fake tree lives
# on tmpfs, and the pre-5.6 file access opens cgroup files only.
OLDKERNELS ?= 3.10 4.14
test-oldkernel:
	CGO_ENABLED=0 $(GO) build -o bin/oldkernel ./cmd/oldkernel
	for k in $(OLDKERNELS); do \
		$(GO) test -p 1 -count=1 -timeout 20m -exec "$(CURDIR)/bin/oldkernel -kernel $$k" -skip 'V2|Kube|InVM|WithoutLocalEvents|HandedOver' \
			./internal/kernel/ ./internal/kill/ ./internal/cgroup/ ./internal/guard/ ./cmd/oom-guard/ || exit 1; \
	done

FUZZTIME ?= 5s
fuzz:
	./scripts/fuzz-all $(FUZZTIME)

bench:
	$(GO) run ./bench/preempt
