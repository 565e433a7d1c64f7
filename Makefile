# One variable sets the plugin's version for both the binary (-ldflags) and its Vault
# registration: Vault refuses a plugin whose reported version differs from its catalog's.
VERSION ?= v0.1.0-dev
# VERSION reaches shell lines and the linker's -X: one word without quotes, then a
# semantic version, or a value such as 'v1 -X main.x=1' would add a linker flag.
ifneq ($(words $(VERSION))$(findstring ',$(VERSION))$(findstring ",$(VERSION)),1)
$(error VERSION must be a semantic version with a leading v, such as v1.2.3 or v1.2.3-rc.1)
endif
ifeq ($(shell printf '%s\n' '$(VERSION)' | grep -Ex 'v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?'),)
$(error VERSION must be a semantic version with a leading v, such as v1.2.3 or v1.2.3-rc.1; got $(VERSION))
endif
MODULE  := github.com/idsec-labs/vault-plugin-secrets-cyberark
LDFLAGS := -X $(MODULE).Version=$(VERSION)
BIN     := bin

.PHONY: all build vault test unit model e2e fmt fmt-check lint vet demo bench cluster cluster-stop release clean

all: build

build:
	go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/vault-plugin-secrets-cyberark ./cmd/vault-plugin-secrets-cyberark
	go build -trimpath -o $(BIN)/cyberark-emulator ./cmd/cyberark-emulator

# Builds the pinned Vault once into a cache outside the tree and prints its path.
vault:
	@scripts/vault-build.sh

# The whole suite: unit tests, and end-to-end tests against the pinned Vault (built first
# if it is not cached), all with -race.
test:
	scripts/test.sh

unit:
	go test -race -count=1 ./...

# The rotation model test with many more histories than make test runs (MODEL_HISTORIES,
# default 100000; about 40 minutes on 2 cores). A failing seed prints its history and
# the command that replays it.
MODEL_HISTORIES ?= 100000
model:
	go test -count=1 -timeout 0 -run 'TestRotationModel$$' -model.histories=$(MODEL_HISTORIES) -v . | grep -E 'histories|^(---|ok|FAIL)|seed|history|  '

# End-to-end tests only, on scripts/vault-build.sh's default Vault (VAULT_VERSION=1.21.2 make e2e
# for the other): real Vault servers and Vault Agents.
e2e:
	bin="$$(scripts/vault-build.sh)" && VAULT_BIN="$$bin" E2E_REQUIRED=1 go test -race -count=1 ./e2e/...

# The micro-benchmarks print their own figures (ns/op, allocations); scripts/bench.sh
# then runs internal/bench, the engine inside a real Vault against Vault's own floors.
bench:
	go test -run '^$$' -bench . -benchtime 1s ./...
	scripts/bench.sh

fmt:
	gofmt -w .

fmt-check:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	go vet ./...

# gofmt, go vet, golangci-lint (.golangci.yml, the pinned version installed once into a
# cache outside the tree) and shellcheck: scripts/lint.sh.
lint:
	scripts/lint.sh

demo:
	scripts/demo.sh

# A 3-node Vault Raft cluster on loopback with the plugin registered and enabled
# (docs/high-availability.md); cluster-stop stops it and removes its files.
cluster:
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

# Reproducible release binaries for linux and darwin, amd64 and arm64, and SHA256SUMS,
# in dist/$(VERSION)/ (docs/development.md, "Release builds").
release:
	VERSION=$(VERSION) scripts/release.sh

clean:
	rm -rf $(BIN) dist
