#!/usr/bin/env bash
# The Debian packages the test targets need beyond Python, installed when missing:
#   tests/system_deps.sh prometheus   Prometheus and promtool, for tests/deploy/ (make test)
#   tests/system_deps.sh tcmalloc     libtcmalloc_minimal, ~3x faster vLLM CPU backend (make test-vllm)
# apt-get is used when it is there and usable (root, or passwordless sudo). Otherwise this says
# what to install and exits 0: the deploy tests then fail naming the missing binary, and the
# vLLM tests run without tcmalloc (slower).
set -euo pipefail

have() {
    case "$1" in
        prometheus) command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 ;;
        tcmalloc) ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4 ;;
        *) echo "tests/system_deps.sh: unknown dependency '$1'" >&2; exit 2 ;;
    esac
}

package() {
    case "$1" in
        prometheus) echo prometheus ;;
        tcmalloc) echo libtcmalloc-minimal4 ;;
    esac
}

for dep in "$@"; do
    have "$dep" && continue
    pkg=$(package "$dep")
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        echo "installing Debian's $pkg (apt-get) ..."
        export DEBIAN_FRONTEND=noninteractive
        if $sudo apt-get update -qq >/dev/null && \
           $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; then
            continue
        fi
    fi
    echo "tests/system_deps.sh: '$dep' is missing and could not be installed: run" \
         "'apt-get install $pkg' (Debian/Ubuntu) or put it on PATH" >&2
done
