#!/usr/bin/env bash
# Bring what `make test` needs beyond the project venv (`make setup`), when it is missing:
#   - the Label Studio server in its own venv (scripts/install-label-studio.sh; the labelling
#     tests start it), unless QCLOOP_LABEL_STUDIO_BIN names one
#   - helm in .qcloop/bin (scripts/install-helm.sh; the chart tests)
#   - system tools: mosquitto (the MQTT tests), unshare and ip (the pod harness), shellcheck
#     (actionlint checks the workflows' scripts with it), systemd-analyze (the edge unit),
#     promtool (the chart's alerting rules), chromium (the labelling browser tests),
#     prometheus-pushgateway (the labelling jobs' metrics)
# Missing system tools are installed with apt-get as root or with passwordless sudo;
# otherwise it stops with one line saying what to install, and exit code 1.
# Quiet and fast (well under a second) when everything is there.
#
# Usage: scripts/test-prerequisites.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# tool:Debian package
SYSTEM_TOOLS=(mosquitto:mosquitto unshare:util-linux ip:iproute2 shellcheck:shellcheck
  systemd-analyze:systemd promtool:prometheus chromium:chromium
  prometheus-pushgateway:prometheus-pushgateway)

have() {
  # Debian puts mosquitto in /usr/sbin, often off a user's PATH: the tests look there too
  command -v "$1" >/dev/null 2>&1 || [[ "$1" == mosquitto && -x /usr/sbin/mosquitto ]]
}

missing_tools() {
  local entry
  for entry in "${SYSTEM_TOOLS[@]}"; do
    have "${entry%%:*}" || echo "$entry"
  done
}

as_root() {
  if [[ "$(id -u)" == 0 ]]; then
    "$@"
  else
    sudo -n "$@"
  fi
}

can_install() {
  command -v apt-get >/dev/null 2>&1 &&
    { [[ "$(id -u)" == 0 ]] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; }
}

apt_install() {
  local log
  log="$(mktemp)"
  echo "test-prerequisites: apt-get install $*" >&2
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 ||
    ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    echo "test-prerequisites: apt-get install $* failed" >&2
    exit 1
  fi
  rm -f "$log"
}

ensure_system_tools() {
  local entry missing tools=() packages=() listed
  mapfile -t missing < <(missing_tools)
  ((${#missing[@]} == 0)) && return 0
  for entry in "${missing[@]}"; do
    tools+=("${entry%%:*}")
    packages+=("${entry#*:}")
  done
  if ! can_install; then
    listed="$(printf '%s, ' "${tools[@]}")"
    echo "make test needs ${listed%, }: sudo apt-get install -y ${packages[*]}" >&2
    exit 1
  fi
  apt_install "${packages[@]}"
  mapfile -t missing < <(missing_tools)
  if ((${#missing[@]} > 0)); then
    echo "test-prerequisites: still not on PATH after apt-get install: ${missing[*]%%:*}" >&2
    exit 1
  fi
}

ensure_label_studio() {
  if [[ -n "${QCLOOP_LABEL_STUDIO_BIN:-}" && -x "$QCLOOP_LABEL_STUDIO_BIN" ]]; then
    return 0
  fi
  bash "$ROOT/scripts/install-label-studio.sh" >/dev/null
}

ensure_helm() {
  bash "$ROOT/scripts/install-helm.sh" "$ROOT/.qcloop/bin" >/dev/null
}

ensure_system_tools
ensure_label_studio
ensure_helm
